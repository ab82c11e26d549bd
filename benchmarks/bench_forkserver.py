"""The forkserver start method, side by side with the stdlib in one run.

    python benchmarks/bench_forkserver.py [--repeat N]

Workloads: start+join of one no-op Process at a time, and 100 no-op
Processes started at once then joined.  Prints each workload's best time
for the stdlib and for multiprocessing_c and the ratio (stdlib / ours:
above 1 means we are faster); the stdlib's fork start method is shown for
scale.  Each side's fork server is started (and warmed) before timing.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multiprocessing as std_mp        # noqa: E402

import multiprocessing_c as our_mp      # noqa: E402


def noop():
    pass


def best_of(fn, repeat):
    best = float('inf')
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def one_at_a_time(ctx, n=20):
    def run():
        for _ in range(n):
            p = ctx.Process(target=noop)
            p.start()
            p.join()
    return run, n


def hundred_at_once(ctx):
    def run():
        procs = [ctx.Process(target=noop) for _ in range(100)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    return run, 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--repeat', type=int, default=5)
    a = ap.parse_args()
    std = std_mp.get_context('forkserver')
    ours = our_mp.get_context('forkserver')
    std_fork = std_mp.get_context('fork')
    for ctx in (std, ours):
        p = ctx.Process(target=noop)
        p.start()
        p.join()
    print('%-32s %12s %12s %8s %14s' % ('workload', 'stdlib', 'ours', 'ratio',
                                        'stdlib fork'))
    for name, make in (('start+join one no-op process', one_at_a_time),
                       ('100 no-op processes at once', hundred_at_once)):
        times = []
        for ctx in (std, ours, std_fork):
            fn, per = make(ctx)
            times.append(best_of(fn, a.repeat) / per)
        print('%-32s %10.2fms %10.2fms %7.2fx %12.2fms' % (
            name, times[0] * 1e3, times[1] * 1e3, times[0] / times[1],
            times[2] * 1e3))


if __name__ == '__main__':
    main()
