// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* The pinned map of container cgroups (kept by ctwatch's userspace) and the
 * one program that updates it in the kernel: a task entering a container
 * cgroup marks a created container started.
 *
 * Loaded only when the map is pinned, so the event source never depends on
 * bpffs. The map is pinned by name: a restarted ctwatch reuses it, and the
 * programs of other tools that opened it keep working. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "cgroup_events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* resized by the loader */
	__type(key, __u64);
	__type(value, struct ctwatch_container_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ctwatch_containers SEC(".maps");

SEC("tp_btf/cgroup_attach_task")
int BPF_PROG(ctwatch_cgroup_attach_task, struct cgroup *dst_cgrp, const char *path, void *task, _Bool threadgroup)
{
	__u64 id = BPF_CORE_READ(dst_cgrp, kn, id);
	struct ctwatch_container_value *v = bpf_map_lookup_elem(&ctwatch_containers, &id);
	if (v && v->state == CTWATCH_STATE_CREATED)
		v->state = CTWATCH_STATE_STARTED;
	return 0;
}
