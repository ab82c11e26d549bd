/* One-way stream of SIZE-byte messages over a socketpair: the parent
 * writes them all, the child reads them all and answers one byte.
 * usage: pipe_stream ITERATIONS SIZE */
#include "socketpair.h"

int main(int argc, char **argv)
{
    long n = floor_arg(argc, argv, 1, 10000);
    size_t size = (size_t)floor_arg(argc, argv, 2, 64);
    char ack = 0;
    char *buf;
    int fd;
    pid_t pid = pair_fork(size, &buf, &fd);
    if (pid == 0) {
        for (long i = 0; i < n; i++)
            xfer_all(fd, buf, size, 0);
        xfer_all(fd, &ack, 1, 1);
        _exit(0);
    }
    double t0 = floor_now();
    for (long i = 0; i < n; i++)
        xfer_all(fd, buf, size, 1);
    xfer_all(fd, &ack, 1, 0);
    double t1 = floor_now();
    pair_finish(pid, fd, buf);
    floor_report(t1 - t0, n);
    return 0;
}
