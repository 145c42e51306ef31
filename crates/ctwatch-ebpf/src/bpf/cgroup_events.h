/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* The records ctwatch's eBPF programs share with userspace, and the layout
 * of the pinned map of container cgroups that other eBPF programs may read.
 * Keep in sync with crates/ctwatch-ebpf/src/abi.rs. */
#ifndef CTWATCH_CGROUP_EVENTS_H
#define CTWATCH_CGROUP_EVENTS_H

/* Room for a path: PATH_MAX, plus one component that may start just below it. */
#define CTWATCH_PATH_MAX 4096
#define CTWATCH_NAME_MAX 256
#define CTWATCH_PATH_BUF (CTWATCH_PATH_MAX + CTWATCH_NAME_MAX)
/* How many directory levels the path walk follows. */
#define CTWATCH_MAX_DEPTH 96

enum ctwatch_change {
	CTWATCH_MKDIR = 1,
	CTWATCH_RMDIR = 2,
};

enum ctwatch_record_flags {
	/* The path is longer than CTWATCH_PATH_MAX or deeper than
	 * CTWATCH_MAX_DEPTH: only its innermost components are present. */
	CTWATCH_PATH_TRUNCATED = 1,
};

/* One cgroup mkdir or rmdir, as sent through the ring buffer. The path
 * follows the header: its components innermost first, each ended by a NUL
 * (the walk goes from the new cgroup up to the hierarchy's root). */
struct ctwatch_cgroup_record {
	__u64 cgroup_id;    /* full 64-bit kernfs ID */
	__u64 ktime_ns;     /* bpf_ktime_get_ns() at the event */
	__u32 hierarchy_id; /* cgroup_root->hierarchy_id (0: unified) */
	__u32 level;        /* depth below the hierarchy root */
	__u32 change;       /* enum ctwatch_change */
	__u32 flags;        /* enum ctwatch_record_flags */
	__u32 path_len;     /* bytes of path that follow */
	__u32 _pad;
	char path[CTWATCH_PATH_BUF];
};

#define CTWATCH_RECORD_HEADER 40

/* States of a container in the pinned map. */
enum ctwatch_container_state {
	CTWATCH_STATE_EXISTING = 1, /* already running when ctwatch started */
	CTWATCH_STATE_CREATED = 2,  /* its cgroup was made while ctwatch watched */
	CTWATCH_STATE_STARTED = 3,  /* a task has since entered one of its cgroups */
};

enum ctwatch_container_flags {
	CTWATCH_CGROUP_IS_ROOT = 1, /* this key is the container's root cgroup */
};

/* Value of the pinned map /sys/fs/bpf/ctwatch/ctwatch_containers, keyed by
 * the full u64 cgroup ID of every cgroup that belongs to a container. */
struct ctwatch_container_value {
	__u64 handle; /* stable: FNV-1a 64 of the container ID */
	__u32 state;  /* enum ctwatch_container_state */
	__u32 flags;  /* enum ctwatch_container_flags */
};

#endif
