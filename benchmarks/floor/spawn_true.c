/* posix_spawn() of /bin/true and waitpid() for it: starting a fresh
 * program, the floor under the spawn start method (which then also has
 * to start an interpreter).  usage: spawn_true ITERATIONS [PROGRAM] */
#include <spawn.h>
#include <sys/wait.h>

#include "floor.h"

extern char **environ;

int main(int argc, char **argv)
{
    long n = floor_arg(argc, argv, 1, 200);
    char *prog = argc > 2 ? argv[2] : "/bin/true";
    char *args[] = {prog, NULL};
    double t0 = floor_now();
    for (long i = 0; i < n; i++) {
        pid_t pid;
        int status;
        int err = posix_spawn(&pid, prog, NULL, NULL, args, environ);
        if (err) {
            errno = err;
            floor_die("posix_spawn");
        }
        if (waitpid(pid, &status, 0) < 0)
            floor_die("waitpid");
    }
    double t1 = floor_now();
    floor_report(t1 - t0, n);
    return 0;
}
