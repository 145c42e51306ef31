// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* Example: another tool's eBPF program that uses ctwatch's pinned map to
 * tell container processes apart. It counts exec()s per container.
 *
 * The map is declared with the same name, layout and pinning as ctwatch's,
 * so a loader pointed at ctwatch's pin directory (libbpf's pin_root_path,
 * aya's map_pin_path) opens the pinned map instead of making a new one. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "cgroup_events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);                            /* cgroup ID */
	__type(value, struct ctwatch_container_value); /* handle, state, flags */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ctwatch_containers SEC(".maps");

/* exec()s seen, by container handle. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} execs_by_container SEC(".maps");

SEC("tp_btf/sched_process_exec")
int BPF_PROG(count_container_execs, void *task, int old_pid, void *bprm)
{
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	struct ctwatch_container_value *container = bpf_map_lookup_elem(&ctwatch_containers, &cgroup_id);
	if (!container)
		return 0; /* not a container process */
	__u64 handle = container->handle, one = 1;
	__u64 *count = bpf_map_lookup_elem(&execs_by_container, &handle);
	if (count)
		__sync_fetch_and_add(count, 1);
	else
		bpf_map_update_elem(&execs_by_container, &handle, &one, BPF_NOEXIST);
	return 0;
}
