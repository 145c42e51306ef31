// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* Process events of containers: an exec in a container cgroup (the first of
 * each container, unless every exec is asked for), the exit of a thread
 * group leader in one (with its exit code), and an OOM kill of a task in one.
 *
 * "Container cgroup" means a key of ctwatch's pinned map (see
 * containers_map.bpf.c): the tasks' cgroup IDs in the default (unified)
 * hierarchy, which ctwatch keeps there on hybrid hosts too. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "cgroup_events.h"
#include "exec_argv.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct css_set {
	struct cgroup *dfl_cgrp;
} __attribute__((preserve_access_index));

struct mm_struct {
	unsigned long arg_start;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	int exit_code;
	struct mm_struct *mm;
	struct css_set *cgroups;
} __attribute__((preserve_access_index));

struct linux_binprm {
	const char *filename;
} __attribute__((preserve_access_index));

/* Report every exec in a container cgroup, not only each container's first (set by the loader). */
const volatile __u8 every_exec = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct ctwatch_container_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ctwatch_containers SEC(".maps");

/* Containers (by handle) whose first exec was reported; bounded, the least
 * recently used go first (a container that old has long been started). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} exec_reported SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1024 * 1024); /* resized by the loader */
} process_events SEC(".maps");

/* Records that did not fit in the ring buffer, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} process_dropped SEC(".maps");

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *count = bpf_map_lookup_elem(&process_dropped, &zero);
	if (count)
		__sync_fetch_and_add(count, 1);
}

static __always_inline struct ctwatch_process_record *reserve(__u32 kind, struct task_struct *task, __u64 cgroup_id)
{
	struct ctwatch_process_record *rec = bpf_ringbuf_reserve(&process_events, sizeof(*rec), 0);
	if (!rec) {
		count_drop();
		return 0;
	}
	rec->kind = kind;
	rec->pid = BPF_CORE_READ(task, pid);
	rec->tgid = BPF_CORE_READ(task, tgid);
	rec->exit_code = 0;
	rec->cgroup_id = cgroup_id;
	rec->ktime_ns = bpf_ktime_get_ns();
	rec->filename[0] = 0;
	rec->argv0[0] = 0;
	return rec;
}

/*
 * An exec through a file descriptor or /proc/self is the runtime re-executing
 * itself (runc's cloned binary, `/dev/fd/N` or `/proc/self/exe`), which can
 * happen after its init joined the container's cgroup: it is not the
 * container's own process, so it neither counts as the start nor is reported.
 */
static __always_inline int runtime_reexec(const char *path)
{
	char head[12] = {};
	if (bpf_probe_read_kernel_str(head, sizeof(head), path) <= 0)
		return 0;
	if (head[0] == '/' && head[1] == 'd' && head[2] == 'e' && head[3] == 'v' && head[4] == '/' &&
	    head[5] == 'f' && head[6] == 'd' && head[7] == '/')
		return 1;
	return head[0] == '/' && head[1] == 'p' && head[2] == 'r' && head[3] == 'o' && head[4] == 'c' &&
	       head[5] == '/' && head[6] == 's' && head[7] == 'e' && head[8] == 'l' && head[9] == 'f' &&
	       head[10] == '/';
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(ctwatch_process_exec, struct task_struct *task, int old_pid, struct linux_binprm *bprm)
{
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	struct ctwatch_container_value *c = bpf_map_lookup_elem(&ctwatch_containers, &cgroup_id);
	if (!c)
		return 0;
	if (runtime_reexec(BPF_CORE_READ(bprm, filename)))
		return 0;
	if (!every_exec) {
		__u64 handle = c->handle;
		__u8 one = 1;
		/* Only the CPU that adds the handle reports (two racing execs make one record). */
		if (bpf_map_update_elem(&exec_reported, &handle, &one, BPF_NOEXIST) != 0)
			return 0;
	}
	struct ctwatch_process_record *rec = reserve(CTWATCH_PROCESS_EXEC, task, cgroup_id);
	if (!rec)
		return 0;
	bpf_probe_read_kernel_str(rec->filename, sizeof(rec->filename), BPF_CORE_READ(bprm, filename));
	/* The new argv was just copied onto the new stack by the kernel: present. */
	unsigned long arg_start = BPF_CORE_READ(task, mm, arg_start);
	if (bpf_probe_read_user_str(rec->argv0, sizeof(rec->argv0), (const void *)arg_start) <= 0)
		rec->argv0[0] = 0;
	bpf_ringbuf_submit(rec, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(ctwatch_process_exit, struct task_struct *task)
{
	if (BPF_CORE_READ(task, pid) != BPF_CORE_READ(task, tgid))
		return 0; /* a thread, not the group leader */
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	if (!bpf_map_lookup_elem(&ctwatch_containers, &cgroup_id))
		return 0;
	struct ctwatch_process_record *rec = reserve(CTWATCH_PROCESS_EXIT, task, cgroup_id);
	if (!rec)
		return 0;
	rec->exit_code = BPF_CORE_READ(task, exit_code);
	bpf_ringbuf_submit(rec, 0);
	return 0;
}

SEC("tp_btf/mark_victim")
int BPF_PROG(ctwatch_oom_kill, struct task_struct *task)
{
	/* The victim is not the current task: its own default-hierarchy cgroup. */
	__u64 cgroup_id = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	if (!bpf_map_lookup_elem(&ctwatch_containers, &cgroup_id))
		return 0;
	struct ctwatch_process_record *rec = reserve(CTWATCH_PROCESS_OOM_KILL, task, cgroup_id);
	if (rec)
		bpf_ringbuf_submit(rec, 0);
	return 0;
}
