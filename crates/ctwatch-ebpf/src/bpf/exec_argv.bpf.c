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
 * runtime paths, filled by userspace), and every execveat of a file
 * descriptor (fexecve) is captured too. An exec by another path of the same
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

/* What is needed to tell who serves an unreadable page (CO-RE). */
struct super_block {
	unsigned long s_magic;
} __attribute__((preserve_access_index));

struct inode {
	struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
} __attribute__((preserve_access_index));

struct vm_userfaultfd_ctx {
	void *ctx;
} __attribute__((preserve_access_index));

struct vm_area_struct {
	struct file *vm_file;
	struct vm_userfaultfd_ctx vm_userfaultfd_ctx;
} __attribute__((preserve_access_index));

struct task_struct;

#define FUSE_SUPER_MAGIC 0x65735546

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
		v->fault_addr = (__u64)&c->argv[i];
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
		v->fault_addr = (__u64)p;
		return 1;
	}
	v->len[at] = n;
	if (n >= CTWATCH_ARGV_ARG_MAX)
		v->flags |= CTWATCH_ARGV_ARG_CUT;
	return 0;
}

/* bpf_find_vma's callback: is the mapping served by a user? */
static long classify_vma(struct task_struct *task, struct vm_area_struct *vma, void *data)
{
	__u32 *flags = data;
	struct file *file = BPF_CORE_READ(vma, vm_file);
	if (file) {
		if (BPF_CORE_READ(file, f_inode, i_sb, s_magic) == FUSE_SUPER_MAGIC)
			*flags |= CTWATCH_ARGV_USER_BACKED;
	} else if (bpf_core_field_exists(vma->vm_userfaultfd_ctx) && BPF_CORE_READ(vma, vm_userfaultfd_ctx.ctx)) {
		*flags |= CTWATCH_ARGV_USER_BACKED;
	}
	return 0;
}

#define AT_EMPTY_PATH 0x1000

/* Captures the exec when its path is watched, or always when `by_fd` (an
 * execveat of a file descriptor: fexecve, as runc's re-exec of its own
 * cloned binary does; such execs are rare). */
static __always_inline int capture(const char *filename, const char *const *argv, int by_fd)
{
	__u32 zero = 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;
	__builtin_memset(s->path, 0, sizeof(s->path));
	long n = bpf_probe_read_user_str(s->path, sizeof(s->path), filename);
	int watched = n > 0 && (bpf_map_lookup_elem(&watched_paths, s->path) || (by_fd && n == 1));
	if (!watched) {
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
	v->fault_addr = 0;
	__builtin_memset(v->len, 0, sizeof(v->len));
	struct argv_ctx c = { .v = v, .argv = argv };
	if (argv)
		bpf_loop(CTWATCH_ARGV_MAX_ARGS + 1, read_arg, &c, 0);
	if (v->flags & CTWATCH_ARGV_UNREADABLE) {
		/* Who serves the page? The mapping is looked at with a trylock of
		 * the caller's mm: when that fails (or there is no mapping), the
		 * flag stays as it is (no mapping: the kernel's own read fails too). */
		__u32 flags = 0;
		long found = bpf_find_vma(bpf_get_current_task_btf(), v->fault_addr, classify_vma, &flags, 0);
		if (found == -16 /* EBUSY */)
			flags = CTWATCH_ARGV_USER_BACKED;
		v->flags |= flags;
	}
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
	return capture((const char *)ctx->args[0], (const char *const *)ctx->args[1], 0);
}

/* execveat(dirfd, filename, argv, envp, flags) */
SEC("tracepoint/syscalls/sys_enter_execveat")
int ctwatch_execveat(struct sys_enter_ctx *ctx)
{
	return capture((const char *)ctx->args[1], (const char *const *)ctx->args[2],
		       (ctx->args[4] & AT_EMPTY_PATH) != 0);
}
