// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* The argv of every execve/execveat of a watched runtime binary, captured at
 * the syscall's entry (the syscalls/sys_enter_execve{,at} tracepoints), before
 * the kernel opens the file, and so before the fanotify permission event that
 * holds the exec for ctwatch's hook. (fentry on the syscall functions would
 * need ftrace direct calls, which some kernels refuse.)
 *
 * The reads never fault: bpf_probe_read_user{,_str} fail on a page that is
 * not present instead of paging it in, so an argv on a FUSE file that never
 * answers is reported unreadable at once, never waited on.
 *
 * Watched binaries are known by the path passed to the syscall (the hook's
 * runtime paths, filled by userspace). An exec by another path of the same
 * file is not captured: the hook then reads the argv from /proc as before. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "exec_argv.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The record of the syscalls/sys_enter_* tracepoints: the common fields,
 * the syscall number, then its arguments (see the events' format files). */
struct sys_enter_ctx {
	__u64 common;
	__s64 syscall_nr;
	__u64 args[6];
};

/* Watched executable paths, NUL-padded (filled by userspace). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, char[CTWATCH_EXEC_PATH_MAX]);
	__type(value, __u8);
} watched_paths SEC(".maps");

/* The last watched exec of each task, by TID. An exec of any other path
 * removes the task's entry, so an entry always describes the task's latest
 * execve. Bounded: the least recently used entries go first. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct ctwatch_exec_argv);
} argv_by_tid SEC(".maps");

/* Scratch space (too big for the stack): the path key, then the value. */
struct scratch {
	char path[CTWATCH_EXEC_PATH_MAX];
	struct ctwatch_exec_argv argv;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* Watched execs captured, per CPU (for tests and metrics). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} captured SEC(".maps");

struct argv_ctx {
	struct ctwatch_exec_argv *v;
	const char *const *argv;
};

static long read_arg(__u64 i, void *ctx)
{
	struct argv_ctx *c = ctx;
	struct ctwatch_exec_argv *v = c->v;
	const char *p = 0;
	if (bpf_probe_read_user(&p, sizeof(p), &c->argv[i]) != 0) {
		v->flags |= CTWATCH_ARGV_UNREADABLE;
		return 1;
	}
	if (!p)
		return 1;
	if (i >= CTWATCH_ARGV_MAX_ARGS) {
		v->flags |= CTWATCH_ARGV_TOO_MANY;
		return 1;
	}
	__u32 at = i & (CTWATCH_ARGV_MAX_ARGS - 1);
	v->argc = at + 1;
	long n = bpf_probe_read_user_str(v->args[at], CTWATCH_ARGV_ARG_MAX, p);
	if (n <= 0) {
		v->len[at] = 0;
		v->flags |= CTWATCH_ARGV_UNREADABLE;
		return 1;
	}
	v->len[at] = n;
	if (n >= CTWATCH_ARGV_ARG_MAX)
		v->flags |= CTWATCH_ARGV_ARG_CUT;
	return 0;
}

static __always_inline int capture(const char *filename, const char *const *argv)
{
	__u32 zero = 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;
	__builtin_memset(s->path, 0, sizeof(s->path));
	if (bpf_probe_read_user_str(s->path, sizeof(s->path), filename) <= 0 ||
	    !bpf_map_lookup_elem(&watched_paths, s->path)) {
		/* Not a watched binary (or its path is unreadable): forget what
		 * this task's earlier execs left. */
		bpf_map_delete_elem(&argv_by_tid, &tid);
		return 0;
	}
	struct ctwatch_exec_argv *v = &s->argv;
	v->argv_ptr = (__u64)argv;
	v->ktime_ns = bpf_ktime_get_ns();
	v->tgid = id >> 32;
	v->argc = 0;
	v->flags = 0;
	v->_pad = 0;
	__builtin_memset(v->len, 0, sizeof(v->len));
	struct argv_ctx c = { .v = v, .argv = argv };
	if (argv)
		bpf_loop(CTWATCH_ARGV_MAX_ARGS + 1, read_arg, &c, 0);
	bpf_map_update_elem(&argv_by_tid, &tid, v, BPF_ANY);
	__u64 *count = bpf_map_lookup_elem(&captured, &zero);
	if (count)
		*count += 1;
	return 0;
}

/* execve(filename, argv, envp) */
SEC("tracepoint/syscalls/sys_enter_execve")
int ctwatch_execve(struct sys_enter_ctx *ctx)
{
	return capture((const char *)ctx->args[0], (const char *const *)ctx->args[1]);
}

/* execveat(dirfd, filename, argv, envp, flags) */
SEC("tracepoint/syscalls/sys_enter_execveat")
int ctwatch_execveat(struct sys_enter_ctx *ctx)
{
	return capture((const char *)ctx->args[1], (const char *const *)ctx->args[2]);
}
