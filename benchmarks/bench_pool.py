"""Pool workloads, multiprocessing_c vs the stdlib in one run, printed as
ratios (higher = multiprocessing_c faster).

    python benchmarks/bench_pool.py [--n N] [--method fork|spawn] [--repeat R]

On a loaded machine wall time mostly measures the scheduler: compare
ratios from one run, take the best of --repeat runs.
"""
import argparse
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import multiprocessing_c  # noqa: E402


def tiny(x):
    return x


def bench_map(mod, method, n):
    with mod.get_context(method).Pool(2) as pool:
        pool.map(tiny, range(100))            # workers up and warm
        t0 = time.perf_counter()
        pool.map(tiny, range(n))
        return n / (time.perf_counter() - t0)


def bench_apply_roundtrip(mod, method, n):
    with mod.get_context(method).Pool(2) as pool:
        pool.apply(tiny, (0,))
        t0 = time.perf_counter()
        for i in range(n):
            pool.apply(tiny, (i,))
        return n / (time.perf_counter() - t0)


def bench_apply_async_burst(mod, method, n):
    with mod.get_context(method).Pool(2) as pool:
        pool.apply(tiny, (0,))
        t0 = time.perf_counter()
        results = [pool.apply_async(tiny, (i,)) for i in range(n)]
        for r in results:
            r.get()
        return n / (time.perf_counter() - t0)


def bench_imap(mod, method, n):
    with mod.get_context(method).Pool(2) as pool:
        pool.apply(tiny, (0,))
        t0 = time.perf_counter()
        for _ in pool.imap(tiny, range(n), chunksize=1):
            pass
        return n / (time.perf_counter() - t0)


def bench_lifecycle(mod, method, n):
    ctx = mod.get_context(method)
    t0 = time.perf_counter()
    for _ in range(n):
        pool = ctx.Pool(2)
        pool.close()
        pool.join()
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=100000)
    ap.add_argument('--method', default='fork')
    ap.add_argument('--repeat', type=int, default=3)
    args = ap.parse_args()
    n, m = args.n, args.method
    rows = [
        ('Pool(2).map, tiny items', 'items', lambda mod: bench_map(mod, m, n)),
        ('apply round trip', 'calls', lambda mod: bench_apply_roundtrip(mod, m, n // 100)),
        ('apply_async burst', 'calls', lambda mod: bench_apply_async_burst(mod, m, n // 20)),
        ('imap chunksize=1', 'items', lambda mod: bench_imap(mod, m, n // 20)),
        ('Pool(2) start+close+join', 'pools', lambda mod: bench_lifecycle(mod, m, 10)),
    ]
    print('%-32s %14s %14s %7s' % ('workload (%s)' % m, 'stdlib/s', 'ours/s', 'ratio'))
    for name, unit, fn in rows:
        std = ours = 0.0
        for _ in range(args.repeat):      # interleaved: same machine load
            std = max(std, fn(multiprocessing))
            ours = max(ours, fn(multiprocessing_c))
        print('%-32s %14.0f %14.0f %6.2fx' % (name, std, ours, ours / std))


if __name__ == '__main__':
    main()
