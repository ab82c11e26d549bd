/* Round trip of SIZE bytes over a socketpair between two processes (what
 * a duplex Pipe() is built on): the parent writes SIZE bytes, the child
 * reads them all and writes them back.
 * usage: pipe_roundtrip ITERATIONS SIZE */
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "floor.h"

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

int main(int argc, char **argv)
{
    long n = floor_arg(argc, argv, 1, 10000);
    size_t size = (size_t)floor_arg(argc, argv, 2, 64);
    int sv[2];
    char *buf = calloc(1, size);
    if (!buf)
        floor_die("calloc");
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        floor_die("socketpair");
    long warm = n / 10 + 1;
    pid_t pid = fork();
    if (pid < 0)
        floor_die("fork");
    if (pid == 0) {
        close(sv[0]);
        for (long i = 0; i < warm + n; i++) {
            xfer_all(sv[1], buf, size, 0);
            xfer_all(sv[1], buf, size, 1);
        }
        _exit(0);
    }
    close(sv[1]);
    for (long i = 0; i < warm; i++) {
        xfer_all(sv[0], buf, size, 1);
        xfer_all(sv[0], buf, size, 0);
    }
    double t0 = floor_now();
    for (long i = 0; i < n; i++) {
        xfer_all(sv[0], buf, size, 1);
        xfer_all(sv[0], buf, size, 0);
    }
    double t1 = floor_now();
    close(sv[0]);
    waitpid(pid, NULL, 0);
    floor_report(t1 - t0, n);
    free(buf);
    return 0;
}
