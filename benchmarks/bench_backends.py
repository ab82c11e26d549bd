"""The same Pool workloads on a local pool and on each distributed backend.

    python benchmarks/bench_backends.py [--quick] [--reps N]
                                        [--only local,stdlib,ray,raypool,dask]

Every pool has 2 workers on this machine: multiprocessing_c's local Pool,
the stdlib's, Pool(backend="ray") on a local Ray (ray.init(num_cpus=2)),
Ray's own ray.util.multiprocessing.Pool for comparison, and
Pool(backend="dask") on a Dask LocalCluster (2 processes, 1 thread each).
The workloads measure what an engine adds per task, so that users know
when it pays: a task must run much longer than that overhead.

  apply        one pool.apply() of a no-op at a time: the round trip
  async        N apply_async() of a no-op, then every get(): per task
  map1         map(no-op, N items, chunksize=1): per task
  map100k      map(no-op, 100,000 items), default chunks: per item
  cpu10ms      map of tasks that each compute for ~10 ms on 2 workers:
               the wall time per task (ideal: 5 ms)
  start        Pool(2) up to its first result, then close+join (the
               cluster itself already running)

Prints the median of --reps runs of each, and how long the engine's own
start took (ray.init, LocalCluster).  No figure here is asserted anywhere.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def noop(x):
    return x


def spin(ms):
    end = time.perf_counter() + ms / 1000.0
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def per(fn, count):
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) / count


def workloads(make_pool, quick):
    n_apply = 50 if quick else 200
    n_async = 300 if quick else 2000
    n_map1 = 300 if quick else 2000
    n_cpu = 20 if quick else 100

    def start():
        t = time.perf_counter()
        p = make_pool()
        p.apply(noop, (0,))
        p.close()
        p.join()
        return time.perf_counter() - t

    pool = make_pool()
    pool.map(noop, range(8), chunksize=1)         # workers up and warm
    try:
        yield 'apply', 'ms', 1e3, lambda: per(
            lambda: [pool.apply(noop, (i,)) for i in range(n_apply)], n_apply)
        yield 'async', 'ms', 1e3, lambda: per(
            lambda: [r.get() for r in [pool.apply_async(noop, (i,))
                                       for i in range(n_async)]], n_async)
        yield 'map1', 'ms', 1e3, lambda: per(
            lambda: pool.map(noop, range(n_map1), chunksize=1), n_map1)
        yield 'map100k', 'us', 1e6, lambda: per(
            lambda: pool.map(noop, range(100000)), 100000)
        yield 'cpu10ms', 'ms', 1e3, lambda: per(
            lambda: pool.map(spin, [10] * n_cpu, chunksize=1), n_cpu)
        yield 'start', 's', 1, start
    finally:
        pool.terminate()
        pool.join()


def run(name, make_pool, quick, reps, table):
    for workload, unit, scale, fn in workloads(make_pool, quick):
        times = [fn() for _ in range(reps)]
        table.setdefault((workload, unit), {})[name] = (
            statistics.median(times) * scale)
        print('  %-8s %-8s %10.3f %s' % (name, workload,
                                         table[(workload, unit)][name], unit),
              file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--only', default='local,stdlib,ray,raypool,dask')
    args = ap.parse_args()
    only = args.only.split(',')
    table = {}
    started = {}
    import multiprocessing_c
    if 'local' in only:
        run('local', lambda: multiprocessing_c.Pool(2), args.quick,
            args.reps, table)
    if 'stdlib' in only:
        import multiprocessing
        run('stdlib', lambda: multiprocessing.Pool(2), args.quick, args.reps,
            table)
    if 'ray' in only or 'raypool' in only:
        import ray
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        started['ray.init(num_cpus=2)'] = time.perf_counter() - t
        try:
            if 'ray' in only:
                run('ray', lambda: multiprocessing_c.Pool(2, backend='ray'),
                    args.quick, args.reps, table)
            if 'raypool' in only:
                from ray.util.multiprocessing import Pool as RayPool
                run('raypool', lambda: RayPool(2), args.quick, args.reps,
                    table)
        finally:
            ray.shutdown()
    if 'dask' in only:
        import distributed
        t = time.perf_counter()
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True,
            dashboard_address=None)
        client = distributed.Client(cluster, set_as_default=False)
        started['LocalCluster(2 workers)'] = time.perf_counter() - t
        try:
            run('dask', lambda: multiprocessing_c.Pool(2, backend=client),
                args.quick, args.reps, table)
        finally:
            client.close()
            cluster.close()
    names = [n for n in ('local', 'stdlib', 'ray', 'raypool', 'dask')
             if n in only]
    print('%-9s %-5s' % ('workload', 'unit')
          + ''.join('%11s' % n for n in names))
    for (workload, unit), row in table.items():
        print('%-9s %-5s' % (workload, unit) + ''.join(
            '%11.3f' % row[n] if n in row else '%11s' % 'n/a'
            for n in names))
    for what, secs in started.items():
        print('engine start: %s %.1f s' % (what, secs))


if __name__ == '__main__':
    main()
