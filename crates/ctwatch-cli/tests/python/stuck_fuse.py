"""A FUSE file system whose file reads never answer (stdlib only, /dev/fuse
through fusermount3): an ordinary user's way to make any reader of the file's
pages, including a root process reading another process's memory, wait for
good. It serves one read-only 1 MiB file, `argv`, at the mount point, answers
lookups, getattr and open, and takes every READ without ever replying.

Usage: stuck_fuse.py MOUNTPOINT  (prints "mounted" when ready; runs until killed)
"""

import os
import socket
import struct
import subprocess
import sys

FUSE_LOOKUP, FUSE_FORGET, FUSE_GETATTR, FUSE_OPEN, FUSE_READ = 1, 2, 3, 14, 15
FUSE_RELEASE, FUSE_FLUSH, FUSE_INIT, FUSE_OPENDIR, FUSE_RELEASEDIR = 18, 25, 26, 27, 29
FUSE_INTERRUPT, FUSE_DESTROY, FUSE_BATCH_FORGET = 36, 38, 42
ENOENT, ENOSYS = 2, 38
FOPEN_KEEP_CACHE = 1 << 1
FILE_SIZE = 1 << 20


def mount(mountpoint):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
    subprocess.run(["fusermount3", "-o", "ro,nosuid,nodev,fsname=ctwatch-stuck", "--", mountpoint],
                   env=env, pass_fds=[theirs.fileno()], check=True)
    _, fds, _, _ = socket.recv_fds(ours, 16, 1)
    return fds[0]


def attr(ino, mode, size):
    uid, gid = os.getuid(), os.getgid()
    # ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode nlink uid gid rdev blksize flags
    return struct.pack("<QQQQQQIIIIIIIIII", ino, size, (size + 511) // 512, 0, 0, 0, 0, 0, 0,
                       mode, 1, uid, gid, 0, 4096, 0)


def main():
    fd = mount(sys.argv[1])
    print("mounted", flush=True)
    while True:
        try:
            req = os.read(fd, 1 << 21)
        except OSError as e:
            if e.errno in (4, 11):  # EINTR, EAGAIN
                continue
            return  # ENODEV: unmounted
        length, opcode, unique, nodeid = struct.unpack_from("<IIQQ", req)
        body = req[40:length]

        def reply(payload=b"", error=0):
            try:
                os.write(fd, struct.pack("<IiQ", 16 + len(payload), -error, unique) + payload)
            except OSError:
                pass

        if opcode == FUSE_INIT:
            major, minor, readahead = struct.unpack_from("<III", body)
            reply(struct.pack("<IIIIHHIIHHII", 7, 31, readahead, 0, 0, 0, 65536, 1, 0, 0, 0, 0).ljust(64, b"\0"))
        elif opcode == FUSE_LOOKUP:
            name = body.split(b"\0", 1)[0]
            if nodeid == 1 and name == b"argv":
                reply(struct.pack("<QQQQII", 2, 0, 3600, 3600, 0, 0) + attr(2, 0o100444, FILE_SIZE))
            else:
                reply(error=ENOENT)
        elif opcode == FUSE_GETATTR:
            a = attr(1, 0o40755, 0) if nodeid == 1 else attr(2, 0o100444, FILE_SIZE)
            reply(struct.pack("<QII", 3600, 0, 0) + a)
        elif opcode in (FUSE_OPEN, FUSE_OPENDIR):
            # FOPEN_KEEP_CACHE: a second open must not wait for the pages a stuck read holds.
            reply(struct.pack("<QII", 0, FOPEN_KEEP_CACHE, 0))
        elif opcode == FUSE_READ:
            pass  # never answered: that is the point
        elif opcode in (FUSE_FORGET, FUSE_BATCH_FORGET, FUSE_INTERRUPT):
            pass  # no reply expected (an interrupt of a READ is ignored too)
        elif opcode in (FUSE_RELEASE, FUSE_RELEASEDIR, FUSE_FLUSH):
            reply()
        elif opcode == FUSE_DESTROY:
            reply()
            return
        else:
            reply(error=ENOSYS)


if __name__ == "__main__":
    main()
