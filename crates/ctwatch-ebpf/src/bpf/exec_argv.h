/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/* The argv of a runtime's execve, captured at the syscall's entry, and the
 * records of process events in container cgroups. Keep in sync with
 * crates/ctwatch-ebpf/src/abi.rs. */
#ifndef CTWATCH_EXEC_ARGV_H
#define CTWATCH_EXEC_ARGV_H

/* Arguments captured at most (a power of two). */
#define CTWATCH_ARGV_MAX_ARGS 64
/* Bytes of one argument kept, its NUL included (a power of two). */
#define CTWATCH_ARGV_ARG_MAX 256
/* The longest watched executable path, its NUL included. */
#define CTWATCH_EXEC_PATH_MAX 256

enum ctwatch_argv_flags {
	/* An argument pointer or string could not be read without faulting
	 * (its page is not present: e.g. a FUSE page nobody has read). */
	CTWATCH_ARGV_UNREADABLE = 1,
	/* More than CTWATCH_ARGV_MAX_ARGS arguments: only the first are here. */
	CTWATCH_ARGV_TOO_MANY = 2,
	/* An argument filled its CTWATCH_ARGV_ARG_MAX bytes: it may be cut. */
	CTWATCH_ARGV_ARG_CUT = 4,
	/* The first unreadable address is in a page a user serves: a file on a
	 * FUSE file system, or memory registered with userfaultfd (or its
	 * mapping could not be looked at). Reading it may block for good. */
	CTWATCH_ARGV_USER_BACKED = 8,
};

/* Value of the map argv_by_tid, keyed by the exec'ing task's TID. */
struct ctwatch_exec_argv {
	__u64 argv_ptr; /* the argv address passed to the syscall */
	__u64 ktime_ns; /* bpf_ktime_get_ns() at the syscall's entry */
	__u32 tgid;
	__u32 argc;  /* arguments present (read or not) */
	__u32 flags; /* enum ctwatch_argv_flags */
	__u32 _pad;
	__u64 fault_addr; /* the first address that could not be read, or 0 */
	__u16 len[CTWATCH_ARGV_MAX_ARGS]; /* bytes of each argument, NUL included; 0: unread */
	char args[CTWATCH_ARGV_MAX_ARGS][CTWATCH_ARGV_ARG_MAX];
};

enum ctwatch_process_kind {
	CTWATCH_PROCESS_EXEC = 1,
	CTWATCH_PROCESS_EXIT = 2,
	CTWATCH_PROCESS_OOM_KILL = 3,
};

#define CTWATCH_COMM_MAX 256

/* One process event in a container cgroup, as sent through the ring buffer. */
struct ctwatch_process_record {
	__u32 kind;      /* enum ctwatch_process_kind */
	__u32 pid;       /* the task's TID (its PID for a group leader) */
	__u32 tgid;      /* its thread group (process) */
	__u32 exit_code; /* task->exit_code: (status << 8) | signal, for exits */
	__u64 cgroup_id; /* the task's cgroup ID in the default (unified) hierarchy */
	__u64 ktime_ns;  /* bpf_ktime_get_ns() at the event */
	char filename[CTWATCH_COMM_MAX]; /* exec: the file executed */
	char argv0[CTWATCH_COMM_MAX];    /* exec: the new argv[0] */
};

#endif
