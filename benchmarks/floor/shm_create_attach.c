/* Create a POSIX shared memory segment (shm_open O_EXCL, ftruncate, mmap),
 * attach it again by name (shm_open, fstat, mmap), touch it, unmap and
 * close both, unlink: the floor of SharedMemory create + attach.
 * usage: shm_create_attach ITERATIONS SIZE */
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "floor.h"

int main(int argc, char **argv)
{
    long n = floor_arg(argc, argv, 1, 1000);
    size_t size = (size_t)floor_arg(argc, argv, 2, 65536);
    char name[64];
    double t0 = floor_now();
    for (long i = 0; i < n; i++) {
        snprintf(name, sizeof name, "/bench_floor_%ld_%ld", (long)getpid(), i);
        int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
        if (fd < 0)
            floor_die("shm_open");
        if (ftruncate(fd, (off_t)size) < 0)
            floor_die("ftruncate");
        char *a = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (a == MAP_FAILED)
            floor_die("mmap");
        int fd2 = shm_open(name, O_RDWR, 0);
        struct stat st;
        if (fd2 < 0 || fstat(fd2, &st) < 0)
            floor_die("shm_open attach");
        char *b = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE,
                       MAP_SHARED, fd2, 0);
        if (b == MAP_FAILED)
            floor_die("mmap attach");
        b[0] = 1;
        munmap(b, (size_t)st.st_size);
        close(fd2);
        munmap(a, size);
        close(fd);
        shm_unlink(name);
    }
    double t1 = floor_now();
    floor_report(t1 - t0, n);
    return 0;
}
