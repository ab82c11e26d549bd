"""Queue / SimpleQueue throughput and lock costs, multiprocessing_c vs the
stdlib in one run, printed as ratios (higher = multiprocessing_c faster).

    python benchmarks/bench_sync_queues.py [--n N] [--method fork|spawn]
"""
import argparse
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import multiprocessing_c  # noqa: E402


CPU = False


def consumer(q, n, done):
    get = q.get
    for _ in range(n):
        get()
    done.set()


def pingpong_child(a, b, n):
    for _ in range(n):
        a.acquire()
        b.release()


def bench_queue(mod, method, kind, n):
    ctx = mod.get_context(method)
    q = getattr(ctx, kind)()
    done = ctx.Event()
    p = ctx.Process(target=consumer, args=(q, n, done))
    p.start()
    put = q.put
    c0 = os.times()
    t0 = time.perf_counter()
    for i in range(n):
        put(i)
    done.wait()
    dt = time.perf_counter() - t0
    p.join()
    c1 = os.times()
    cpu = sum(c1[:4]) - sum(c0[:4])
    # On a loaded machine wall time mostly measures the scheduler: report
    # items per CPU-second of both processes when asked.
    return n / cpu if CPU else n / dt


def bench_pingpong(mod, method, n):
    ctx = mod.get_context(method)
    a, b = ctx.Semaphore(0), ctx.Semaphore(0)
    p = ctx.Process(target=pingpong_child, args=(a, b, n))
    p.start()
    t0 = time.perf_counter()
    for _ in range(n):
        a.release()
        b.acquire()
    dt = time.perf_counter() - t0
    p.join()
    return n / dt


def bench_uncontended(mod, method, kind, n):
    lock = getattr(mod.get_context(method), kind)()
    acq, rel = lock.acquire, lock.release
    t0 = time.perf_counter()
    for _ in range(n):
        acq()
        rel()
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=100000)
    ap.add_argument('--method', default='fork')
    ap.add_argument('--cpu', action='store_true',
                    help='queues: items per CPU-second of both processes')
    args = ap.parse_args()
    global CPU
    CPU = args.cpu
    n, m = args.n, args.method
    rows = [
        ('Queue put/get, 2 processes', lambda mod: bench_queue(mod, m, 'Queue', n)),
        ('SimpleQueue put/get, 2 processes', lambda mod: bench_queue(mod, m, 'SimpleQueue', n)),
        ('Semaphore ping-pong', lambda mod: bench_pingpong(mod, m, n // 4)),
        ('Lock acquire+release', lambda mod: bench_uncontended(mod, m, 'Lock', n * 5)),
        ('RLock acquire+release', lambda mod: bench_uncontended(mod, m, 'RLock', n * 5)),
    ]
    print('%-36s %14s %14s %7s' % ('workload (%s)' % m, 'stdlib/s', 'ours/s', 'ratio'))
    for name, fn in rows:
        std = max(fn(multiprocessing) for _ in range(2))
        ours = max(fn(multiprocessing_c) for _ in range(2))
        print('%-36s %14.0f %14.0f %6.2fx' % (name, std, ours, ours / std))


if __name__ == '__main__':
    main()
