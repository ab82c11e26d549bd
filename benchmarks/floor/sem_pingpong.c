/* Ping-pong between two processes on two POSIX semaphores in shared
 * memory: the parent posts "ping" and waits on "pong", the child the
 * other way round.  usage: sem_pingpong ITERATIONS */
#include <semaphore.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "floor.h"

static void xwait(sem_t *s)
{
    while (sem_wait(s) < 0)
        if (errno != EINTR)
            floor_die("sem_wait");
}

int main(int argc, char **argv)
{
    long n = floor_arg(argc, argv, 1, 10000);
    long warm = n / 10 + 1;
    sem_t *sems = mmap(NULL, 2 * sizeof(sem_t), PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sems == MAP_FAILED)
        floor_die("mmap");
    if (sem_init(&sems[0], 1, 0) < 0 || sem_init(&sems[1], 1, 0) < 0)
        floor_die("sem_init");
    pid_t pid = fork();
    if (pid < 0)
        floor_die("fork");
    if (pid == 0) {
        for (long i = 0; i < warm + n; i++) {
            xwait(&sems[0]);
            sem_post(&sems[1]);
        }
        _exit(0);
    }
    for (long i = 0; i < warm; i++) {
        sem_post(&sems[0]);
        xwait(&sems[1]);
    }
    double t0 = floor_now();
    for (long i = 0; i < n; i++) {
        sem_post(&sems[0]);
        xwait(&sems[1]);
    }
    double t1 = floor_now();
    waitpid(pid, NULL, 0);
    floor_report(t1 - t0, n);
    return 0;
}
