// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* ctwatch's kernel source: every cgroup mkdir/rmdir of the watched hierarchy,
 * with its full 64-bit ID and its full path, through a ring buffer.
 *
 * The cgroup_mkdir/cgroup_rmdir tracepoints carry a path that the kernel cuts
 * at 1024 bytes, so the programs walk the cgroup's kernfs nodes themselves,
 * up to PATH_MAX. Built with clang -target bpf; CO-RE relocations make it run
 * on any kernel with BTF. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "cgroup_events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Only the kernel fields the programs read; CO-RE finds them at run time. */
struct kernfs_node {
	__u64 id;
	const char *name;
	struct kernfs_node *__parent;
} __attribute__((preserve_access_index));

/* Before Linux 6.15 the parent pointer was called `parent`. */
struct kernfs_node___old {
	struct kernfs_node *parent;
} __attribute__((preserve_access_index));

struct cgroup_root {
	int hierarchy_id;
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
	struct cgroup_root *root;
	int level;
} __attribute__((preserve_access_index));

/* Set by the loader before the programs load. */
/* The hierarchy the tracker follows; -1 accepts every hierarchy. */
const volatile __s32 tracked_hierarchy = -1;
/* A second hierarchy whose IDs feed the pinned map (the unified one on
 * hybrid hosts, so bpf_get_current_cgroup_id() finds containers); -1: none. */
const volatile __s32 mirror_hierarchy = -1;

/* Wake the reader at most once per this many ns; records in between are
 * picked up by its short poll while events flow (set by the loader). */
const volatile __u64 wakeup_interval_ns = 250000;

/* When the reader was last woken. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} last_wakeup SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024); /* resized by the loader */
} events SEC(".maps");

/* Records that did not fit in the ring buffer, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

/* Scratch space to build a record in (too big for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ctwatch_cgroup_record);
} scratch SEC(".maps");

static __always_inline struct kernfs_node *parent_of(struct kernfs_node *kn)
{
	if (bpf_core_field_exists(kn->__parent))
		return BPF_CORE_READ(kn, __parent);
	return BPF_CORE_READ((struct kernfs_node___old *)kn, parent);
}

struct walk_ctx {
	struct ctwatch_cgroup_record *rec;
	struct kernfs_node *kn;
	__u32 len;
	int done;
};

static long walk_one(__u64 index, void *ctx)
{
	struct walk_ctx *w = ctx;
	struct kernfs_node *kn = w->kn;
	struct kernfs_node *parent = parent_of(kn);
	if (!parent) { /* w->kn is the hierarchy's root: its name is not part of the path */
		w->done = 1;
		return 1;
	}
	if (w->len >= CTWATCH_PATH_MAX) {
		w->rec->flags |= CTWATCH_PATH_TRUNCATED;
		return 1;
	}
	const char *name = BPF_CORE_READ(kn, name);
	long n = bpf_probe_read_kernel_str(&w->rec->path[w->len & (CTWATCH_PATH_MAX - 1)], CTWATCH_NAME_MAX, name);
	if (n <= 0)
		return 1;
	w->len += n;
	w->kn = parent;
	return 0;
}

static __always_inline int report(struct cgroup *cgrp, __u32 change)
{
	int hierarchy = BPF_CORE_READ(cgrp, root, hierarchy_id);
	if (tracked_hierarchy >= 0 && hierarchy != tracked_hierarchy && hierarchy != mirror_hierarchy)
		return 0;

	__u32 zero = 0;
	struct ctwatch_cgroup_record *rec = bpf_map_lookup_elem(&scratch, &zero);
	if (!rec)
		return 0;
	struct kernfs_node *kn = BPF_CORE_READ(cgrp, kn);
	rec->cgroup_id = BPF_CORE_READ(kn, id);
	rec->ktime_ns = bpf_ktime_get_ns();
	rec->hierarchy_id = hierarchy;
	rec->level = BPF_CORE_READ(cgrp, level);
	rec->change = change;
	rec->flags = 0;
	rec->_pad = 0;

	struct walk_ctx w = { .rec = rec, .kn = kn, .len = 0, .done = 0 };
	bpf_loop(CTWATCH_MAX_DEPTH, walk_one, &w, 0);
	if (!w.done)
		rec->flags |= CTWATCH_PATH_TRUNCATED;
	__u32 len = w.len;
	if (len > CTWATCH_PATH_BUF)
		len = CTWATCH_PATH_BUF;
	rec->path_len = len;

	/* Waking the reader costs the cgroup's creator a few µs: under churn,
	 * wake it at most once per interval. The first record after a quiet
	 * spell always wakes it, so an idle ctwatch sees it at once. */
	__u64 flags = BPF_RB_NO_WAKEUP;
	__u64 *last = bpf_map_lookup_elem(&last_wakeup, &zero);
	if (last && rec->ktime_ns - *last >= wakeup_interval_ns) {
		*last = rec->ktime_ns;
		flags = BPF_RB_FORCE_WAKEUP;
	}
	if (bpf_ringbuf_output(&events, rec, CTWATCH_RECORD_HEADER + len, flags) != 0) {
		__u64 *count = bpf_map_lookup_elem(&dropped, &zero);
		if (count)
			__sync_fetch_and_add(count, 1);
	}
	return 0;
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(ctwatch_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	return report(cgrp, CTWATCH_MKDIR);
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(ctwatch_cgroup_rmdir, struct cgroup *cgrp, const char *path)
{
	return report(cgrp, CTWATCH_RMDIR);
}
