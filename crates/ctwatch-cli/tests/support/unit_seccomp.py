#!/usr/bin/python3
"""Loads the seccomp filters a systemd unit asks for, then execs a command.

Usage: unit_seccomp.py UNIT_FILE -- COMMAND [ARGS...]

PID 1 is not systemd on the test machine, so the test of deploy/ctwatch.service
applies the unit's sandbox by hand: namespaces and mounts with unshare/mount,
capabilities and no_new_privs with setpriv, and this script for what systemd
implements with seccomp, read from the unit itself:

  SystemCallFilter= (allow-list and ~deny-list, groups expanded by
  `systemd-analyze syscall-filter`), SystemCallErrorNumber=,
  SystemCallArchitectures=native, RestrictAddressFamilies=,
  MemoryDenyWriteExecute=, RestrictNamespaces=yes, RestrictRealtime=,
  RestrictSUIDSGID= (chmod family).

Each is its own filter, as systemd loads them; the kernel applies the strictest
answer. Not emulated: LockPersonality= (one allowed value needs two
comparisons on one argument, which libseccomp cannot express in one rule).
Needs Debian's python3-seccomp (libseccomp's bindings) and no_new_privs set
(setpriv --no-new-privs) or CAP_SYS_ADMIN.
"""

import errno
import os
import socket
import subprocess
import sys

import seccomp

# systemd allows these whatever the filter says (systemd.exec(5)).
ALWAYS = ["execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"]


def service_settings(path):
    """The [Service] section's key -> list of values (in order)."""
    settings = {}
    section = None
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            if section != "Service" or "=" not in line:
                continue
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def syscall_groups():
    """@group -> its entries (syscalls and nested @groups), from systemd itself."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], check=True, capture_output=True, text=True).stdout
    groups, current = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names, groups, seen=None):
    seen = set() if seen is None else seen
    out = set()
    for name in names:
        if name.startswith("@"):
            if name in seen:
                continue
            seen.add(name)
            if name not in groups:
                sys.exit(f"unit_seccomp: unknown syscall group {name}")
            out |= expand(groups[name], groups, seen)
        else:
            out.add(name)
    return out


def yes(settings, key):
    return settings.get(key, ["no"])[-1].lower() in ("yes", "true", "1", "on")


def add(f, action, name, *args):
    """Adds a rule; syscalls this architecture does not have are skipped."""
    try:
        f.add_rule(action, name, *args)
    except (RuntimeError, ValueError, OSError):
        pass


def syscall_filter(settings):
    entries = settings.get("SystemCallFilter")
    if not entries:
        return None
    groups = syscall_groups()
    allowed, allow_list = set(), None
    for entry in entries:
        deny = entry.startswith("~")
        names = entry.lstrip("~").split()
        if allow_list is None:
            allow_list = not deny
        if deny:
            allowed -= expand(names, groups)
        else:
            allowed |= expand(names, groups)
    if not allow_list:
        sys.exit("unit_seccomp: only allow-list filters are emulated")
    error = settings.get("SystemCallErrorNumber", ["EPERM"])[-1]
    f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(getattr(errno, error)))
    for name in sorted(allowed | set(ALWAYS)):
        add(f, seccomp.ALLOW, name)
    return f


def address_families(settings):
    entries = settings.get("RestrictAddressFamilies")
    if not entries:
        return None
    allowed = {getattr(socket, name) for e in entries for name in e.split()}
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for family in range(0, 64):
        if family not in allowed:
            add(f, seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family))
    return f


def memory_deny_write_execute(settings):
    if not yes(settings, "MemoryDenyWriteExecute"):
        return None
    prot_wx = 0x2 | 0x4  # PROT_WRITE | PROT_EXEC
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    add(f, seccomp.ERRNO(errno.EPERM), "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, prot_wx, prot_wx))
    add(f, seccomp.ERRNO(errno.EPERM), "mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, 0x4, 0x4))
    add(f, seccomp.ERRNO(errno.EPERM), "pkey_mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, 0x4, 0x4))
    add(f, seccomp.ERRNO(errno.EPERM), "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, 0o100000, 0o100000))
    return f


def restrict_namespaces(settings):
    if settings.get("RestrictNamespaces", ["no"])[-1].lower() not in ("yes", "true", "1", "on"):
        return None
    ns_flags = [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080]
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for flag in ns_flags:
        add(f, seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
        add(f, seccomp.ERRNO(errno.EPERM), "unshare", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    add(f, seccomp.ERRNO(errno.EPERM), "setns")
    # clone3's flags are behind a pointer: systemd answers ENOSYS so libc falls back to clone.
    add(f, seccomp.ERRNO(errno.ENOSYS), "clone3")
    return f


def restrict_realtime(settings):
    if not yes(settings, "RestrictRealtime"):
        return None
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for policy in (1, 2, 6):  # SCHED_FIFO, SCHED_RR, SCHED_DEADLINE
        add(f, seccomp.ERRNO(errno.EPERM), "sched_setscheduler", seccomp.Arg(1, seccomp.EQ, policy))
    return f


def restrict_suid_sgid(settings):
    if not yes(settings, "RestrictSUIDSGID"):
        return None
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for bit in (0o4000, 0o2000):
        add(f, seccomp.ERRNO(errno.EPERM), "chmod", seccomp.Arg(1, seccomp.MASKED_EQ, bit, bit))
        add(f, seccomp.ERRNO(errno.EPERM), "fchmod", seccomp.Arg(1, seccomp.MASKED_EQ, bit, bit))
        add(f, seccomp.ERRNO(errno.EPERM), "fchmodat", seccomp.Arg(2, seccomp.MASKED_EQ, bit, bit))
    return f


def main():
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit(__doc__)
    settings = service_settings(sys.argv[1])
    command = sys.argv[3:]
    native = settings.get("SystemCallArchitectures", [""])[-1] == "native"
    filters = [
        make(settings)
        for make in (
            memory_deny_write_execute,
            restrict_namespaces,
            restrict_realtime,
            restrict_suid_sgid,
            address_families,
            syscall_filter,  # last: the others' own syscalls must still pass
        )
    ]
    loaded = 0
    for f in filters:
        if f is None:
            continue
        if not native:
            f.add_arch(seccomp.Arch.X86)
        f.load()
        loaded += 1
    print(f"unit_seccomp: {loaded} filters loaded", file=sys.stderr, flush=True)
    os.execv(command[0], command)


main()
