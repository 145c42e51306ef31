/* Executes RUNTIME with an argv that lives in never-read pages of FILE (a
 * file on a FUSE mount that never answers reads): whoever reads that argv
 * before the kernel does waits on the FUSE daemon.
 * Usage: exec_stuck_argv FILE RUNTIME PAGE
 * Prints "execve: <error>" and exits 13 (EPERM) or 4 when the exec fails. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror("open"); return 2; }
    size_t size = 1 << 20;
    char *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) { perror("mmap"); return 3; }
    long page = atol(argv[3]);
    char **fake = (char **)(map + (page % 256) * 4096);
    char *envp[] = { NULL };
    printf("exec\n");
    fflush(stdout);
    execve(argv[2], fake, envp);
    printf("execve: %s\n", strerror(errno));
    fflush(stdout);
    return errno == EPERM ? 13 : 4;
}
