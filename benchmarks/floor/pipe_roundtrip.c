/* Round trip of SIZE bytes over a socketpair between two processes (what
 * a duplex Pipe() is built on): the parent writes SIZE bytes, the child
 * reads them all and writes them back.
 * usage: pipe_roundtrip ITERATIONS SIZE */
#include "socketpair.h"

int main(int argc, char **argv)
{
    long n = floor_arg(argc, argv, 1, 10000);
    size_t size = (size_t)floor_arg(argc, argv, 2, 64);
    long warm = n / 10 + 1;
    char *buf;
    int fd;
    pid_t pid = pair_fork(size, &buf, &fd);
    if (pid == 0) {
        for (long i = 0; i < warm + n; i++) {
            xfer_all(fd, buf, size, 0);
            xfer_all(fd, buf, size, 1);
        }
        _exit(0);
    }
    for (long i = 0; i < warm; i++) {
        xfer_all(fd, buf, size, 1);
        xfer_all(fd, buf, size, 0);
    }
    double t0 = floor_now();
    for (long i = 0; i < n; i++) {
        xfer_all(fd, buf, size, 1);
        xfer_all(fd, buf, size, 0);
    }
    double t1 = floor_now();
    pair_finish(pid, fd, buf);
    floor_report(t1 - t0, n);
    return 0;
}
