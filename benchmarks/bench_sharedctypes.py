"""Shared ctypes and the shared heap, side by side with the stdlib in one run.

    python benchmarks/bench_sharedctypes.py [--repeat N]

Prints each workload's best time per operation for the stdlib and for
multiprocessing_c, and the ratio (stdlib / ours: above 1 means we are
faster).  Workloads that need a part not built yet are reported as skipped.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multiprocessing as std_mp                     # noqa: E402
import multiprocessing.heap as std_heap              # noqa: E402
import multiprocessing.sharedctypes as std_sct       # noqa: E402

import multiprocessing_c as our_mp                   # noqa: E402
import multiprocessing_c.heap as our_heap            # noqa: E402
import multiprocessing_c.sharedctypes as our_sct     # noqa: E402


def best_of(fn, repeat, number):
    best = float('inf')
    for _ in range(repeat):
        t = time.perf_counter()
        fn(number)
        best = min(best, (time.perf_counter() - t) / number)
    return best


def array_create(sct, lock):
    def run(n):
        for _ in range(n):
            a = sct.Array('d', 1_000_000, lock=lock)
            del a
    return run


def rawarray_from_list(sct):
    data = [float(i) for i in range(100_000)]

    def run(n):
        for _ in range(n):
            a = sct.RawArray('d', data)
            del a
    return run


def small_blocks(heap_mod):
    def run(n):
        for _ in range(n):
            blocks = [heap_mod.BufferWrapper(16) for _ in range(1000)]
            del blocks
    return run


def element_access(sct):
    arr = sct.RawArray('d', 1_000_000)

    def run(n):
        for _ in range(n):
            s = 0.0
            for i in range(0, 1_000_000, 10):
                s += arr[i]
    return run


def slice_access(sct):
    arr = sct.RawArray('d', 1_000_000)

    def run(n):
        for _ in range(n):
            arr[1000:101000]
    return run


def locked_increments(mp):
    v = mp.Value('i', 0)

    def run(n):
        for _ in range(n):
            for _ in range(1000):
                with v.get_lock():
                    v.value += 1
    return run


def have_synchronize():
    try:
        import multiprocessing_c.synchronize  # noqa: F401
    except ImportError:
        return False
    return True


WORKLOADS = [
    ("Array('d', 1_000_000, lock=False) create+free", 20,
     lambda: array_create(std_sct, False), lambda: array_create(our_sct, False),
     None),
    ("Array('d', 1_000_000) create+free (with lock)", 20,
     lambda: array_create(std_sct, True), lambda: array_create(our_sct, True),
     have_synchronize),
    ("RawArray('d', list of 100_000)", 20,
     lambda: rawarray_from_list(std_sct), lambda: rawarray_from_list(our_sct),
     None),
    ('1000 x BufferWrapper(16) alloc+free', 20,
     lambda: small_blocks(std_heap), lambda: small_blocks(our_heap), None),
    ('100_000 element reads', 5,
     lambda: element_access(std_sct), lambda: element_access(our_sct), None),
    ('slice of 100_000', 20,
     lambda: slice_access(std_sct), lambda: slice_access(our_sct), None),
    ('1000 locked Value increments', 20,
     lambda: locked_increments(std_mp), lambda: locked_increments(our_mp),
     have_synchronize),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--repeat', type=int, default=5)
    args = ap.parse_args()
    print('%-48s %12s %12s %8s' % ('workload', 'stdlib', 'ours', 'ratio'))
    for name, number, make_std, make_ours, available in WORKLOADS:
        if available is not None and not available():
            print('%-48s %s' % (name, 'skipped (needs synchronize)'))
            continue
        t_std = best_of(make_std(), args.repeat, number)
        t_ours = best_of(make_ours(), args.repeat, number)
        print('%-48s %10.3fms %10.3fms %7.1fx'
              % (name, t_std * 1e3, t_ours * 1e3, t_std / t_ours))


if __name__ == '__main__':
    main()
