/* sem_wait + sem_post on a process-shared POSIX semaphore nobody else
 * touches: the floor of an uncontended Lock.  usage: sem_uncontended ITERATIONS */
#include <semaphore.h>
#include <sys/mman.h>

#include "floor.h"

int main(int argc, char **argv)
{
    long n = floor_arg(argc, argv, 1, 1000000);
    sem_t *sem = mmap(NULL, sizeof(sem_t), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sem == MAP_FAILED)
        floor_die("mmap");
    if (sem_init(sem, 1, 1) < 0)
        floor_die("sem_init");
    double t0 = floor_now();
    for (long i = 0; i < n; i++) {
        if (sem_wait(sem) < 0)
            floor_die("sem_wait");
        sem_post(sem);
    }
    double t1 = floor_now();
    floor_report(t1 - t0, n);
    return 0;
}
