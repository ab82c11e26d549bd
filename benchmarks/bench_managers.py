"""Managers, side by side with the stdlib in one run.

    python benchmarks/bench_managers.py [--repeat N]

Prints each workload's best wall time per run for the stdlib and for
multiprocessing_c with the ratio (stdlib / ours: above 1 means we are
faster), then the CPU time per run spent by the client and the manager's
server process together, with its ratio.  On a busy machine the wall
times wander; the CPU times much less.  Both managers use the fork start
method, so that only the managers differ.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multiprocessing as std_mp                     # noqa: E402

import multiprocessing_c as our_mp                   # noqa: E402


def best_of(fn, repeat, number):
    best = float('inf')
    for _ in range(repeat):
        t = time.perf_counter()
        fn(number)
        best = min(best, (time.perf_counter() - t) / number)
    return best


def process_cpu(pid):
    """CPU seconds used so far by process `pid` (user + system)."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def timed(fn, repeat, number, server_pid):
    """(best wall seconds per run, client+server CPU seconds per run)."""
    cpu0 = time.process_time() + process_cpu(server_pid)
    wall = best_of(fn, repeat, number)
    cpu1 = time.process_time() + process_cpu(server_pid)
    return wall, (cpu1 - cpu0) / (repeat * number)


def dict_get_set(manager):
    d = manager.dict()

    def run(n):
        for _ in range(n):
            for i in range(500):
                d[i] = i
                d[i]
    return run


def list_append(manager):
    lst = manager.list()

    def run(n):
        for _ in range(n):
            for i in range(1000):
                lst.append(i)
            del lst[:]
    return run


def queue_put_get(manager):
    q = manager.Queue()

    def run(n):
        for _ in range(n):
            for i in range(500):
                q.put(i)
                q.get()
    return run


def create_and_drop(manager):
    def run(n):
        for _ in range(n):
            for _ in range(100):
                d = manager.dict()
                del d
    return run


def start_shutdown(mp):
    ctx = mp.get_context('fork')

    def run(n):
        for _ in range(n):
            m = ctx.Manager()
            m.shutdown()
    return run


WORKLOADS = [
    # name, runs per timing, workload factory taking a started manager
    ('dict: 500 x (set + get)', 5, dict_get_set),
    ('list: 1000 x append', 5, list_append),
    ('Queue: 500 x (put + get)', 5, queue_put_get),
    ('dict(): 100 x create + drop', 5, create_and_drop),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--repeat', type=int, default=5)
    args = ap.parse_args()
    std_m = std_mp.get_context('fork').Manager()
    our_m = our_mp.get_context('fork').Manager()
    print('%-32s %10s %10s %7s | %10s %10s %7s' % (
        'workload', 'stdlib', 'ours', 'ratio', 'std cpu', 'our cpu', 'ratio'))
    try:
        for name, number, make in WORKLOADS:
            w_std, c_std = timed(make(std_m), args.repeat, number,
                                 std_m._process.pid)
            w_ours, c_ours = timed(make(our_m), args.repeat, number,
                                   our_m._process.pid)
            print('%-32s %8.2fms %8.2fms %6.2fx | %8.2fms %8.2fms %6.2fx'
                  % (name, w_std * 1e3, w_ours * 1e3, w_std / w_ours,
                     c_std * 1e3, c_ours * 1e3, c_std / c_ours))
    finally:
        std_m.shutdown()
        our_m.shutdown()
    name = 'Manager() start + shutdown'
    # Short and noisy: the best of many single runs, interleaved.
    t_std = t_ours = float('inf')
    for _ in range(3 * args.repeat):
        t_std = min(t_std, best_of(start_shutdown(std_mp), 1, 1))
        t_ours = min(t_ours, best_of(start_shutdown(our_mp), 1, 1))
    print('%-32s %8.2fms %8.2fms %6.2fx'
          % (name, t_std * 1e3, t_ours * 1e3, t_std / t_ours))


if __name__ == '__main__':
    main()
