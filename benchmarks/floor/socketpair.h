/* Shared by the socketpair floors (pipe_roundtrip, pipe_stream): a parent
 * and a forked child joined by an AF_UNIX stream socketpair, moving whole
 * buffers of SIZE bytes. */
#ifndef BENCH_FLOOR_SOCKETPAIR_H
#define BENCH_FLOOR_SOCKETPAIR_H

#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "floor.h"

/* Write (writing != 0) or read exactly `size` bytes of `buf` on `fd`;
 * exits quietly once the peer has closed. */
static void xfer_all(int fd, char *buf, size_t size, int writing)
{
    size_t done = 0;
    while (done < size) {
        ssize_t r = writing ? write(fd, buf + done, size - done)
                            : read(fd, buf + done, size - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            floor_die(writing ? "write" : "read");
        if (r == 0)
            exit(0);    /* peer closed */
        done += (size_t)r;
    }
}

/* A zeroed buffer of `size` bytes in *buf, then fork(): returns the
 * child's pid in the parent and 0 in the child, each side with its own end
 * of the socketpair in *fd (the other end closed). */
static pid_t pair_fork(size_t size, char **buf, int *fd)
{
    int sv[2];
    *buf = calloc(1, size);
    if (!*buf)
        floor_die("calloc");
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        floor_die("socketpair");
    pid_t pid = fork();
    if (pid < 0)
        floor_die("fork");
    *fd = sv[pid == 0];
    close(sv[pid != 0]);
    return pid;
}

/* The parent's end: close our side, reap the child, free the buffer. */
static void pair_finish(pid_t pid, int fd, char *buf)
{
    close(fd);
    waitpid(pid, NULL, 0);
    free(buf);
}

#endif
