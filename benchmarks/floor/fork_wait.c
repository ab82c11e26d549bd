/* fork() a child that exits at once, and waitpid() for it.
 * usage: fork_wait ITERATIONS */
#include <sys/wait.h>
#include <unistd.h>

#include "floor.h"

int main(int argc, char **argv)
{
    long n = floor_arg(argc, argv, 1, 1000);
    double t0 = floor_now();
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0)
            floor_die("fork");
        if (pid == 0)
            _exit(0);
        if (waitpid(pid, NULL, 0) < 0)
            floor_die("waitpid");
    }
    double t1 = floor_now();
    floor_report(t1 - t0, n);
    return 0;
}
