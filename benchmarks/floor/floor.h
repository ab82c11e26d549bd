/* Shared bits of the C floor programs: a monotonic clock, argument
 * parsing and the one output line the harness reads ("ns_per_op X"). */
#ifndef BENCH_FLOOR_H
#define BENCH_FLOOR_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double floor_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static long floor_arg(int argc, char **argv, int i, long dflt)
{
    if (argc > i) {
        char *end;
        long v = strtol(argv[i], &end, 10);
        if (*end || v <= 0) {
            fprintf(stderr, "bad argument: %s\n", argv[i]);
            exit(2);
        }
        return v;
    }
    return dflt;
}

static void floor_die(const char *what)
{
    fprintf(stderr, "%s: %s\n", what, strerror(errno));
    exit(1);
}

static void floor_report(double seconds, long n)
{
    printf("ns_per_op %.3f\n", seconds * 1e9 / n);
}

#endif
