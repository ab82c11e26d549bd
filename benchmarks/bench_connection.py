"""Connection throughput, side by side with the stdlib in one run.

  python benchmarks/bench_connection.py [--quick]

Workloads: round trip of a small object over Pipe() (send/recv to an echo
child), one-way 64-byte send_bytes/recv_bytes, and one-way 1 MiB messages.
Prints each figure for the stdlib and for multiprocessing_c and the ratio,
twice: by wall clock, and by CPU time (parent + child, user + system),
which stays meaningful on a loaded machine where wall-clock round trips
mostly measure the scheduler.
"""
import os
import resource
import sys
import time

import multiprocessing
import multiprocessing_c

ROUNDS = {'rt': 20000, 'small': 200000, 'big': 1000}


def echo_objects(conn):
    while True:
        obj = conn.recv()
        conn.send(obj)
        if obj is None:
            break


def sink_bytes(conn, n):
    recv = conn.recv_bytes
    for _ in range(n):
        recv()
    conn.send_bytes(b'done')


def cpu_times():
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def measured(run):
    """Run run() -> (ops, wall seconds); return (ops/wall s, ops/CPU s)."""
    p0, c0 = cpu_times()
    ops, wall = run()
    p1, c1 = cpu_times()
    return ops / wall, ops / ((p1 - p0) + (c1 - c0))


def bench_roundtrip(mp, n):
    return measured(lambda: _roundtrip(mp, n))


def _roundtrip(mp, n):
    a, b = mp.Pipe()
    p = mp.Process(target=echo_objects, args=(b,))
    p.start()
    obj = ('task', 42, [1.5, None])
    a.send(obj)
    a.recv()
    t0 = time.perf_counter()
    for _ in range(n):
        a.send(obj)
        a.recv()
    dt = time.perf_counter() - t0
    a.send(None)
    a.recv()
    p.join()
    return n, dt


def bench_oneway(mp, n, size):
    return measured(lambda: _oneway(mp, n, size))


def _oneway(mp, n, size):
    a, b = mp.Pipe()
    p = mp.Process(target=sink_bytes, args=(b, n))
    p.start()
    msg = b'x' * size
    send = a.send_bytes
    t0 = time.perf_counter()
    for _ in range(n):
        send(msg)
    a.recv_bytes()
    dt = time.perf_counter() - t0
    p.join()
    return n, dt


def main():
    quick = '--quick' in sys.argv
    scale = 10 if quick else 1
    std = multiprocessing.get_context('fork')
    ours = multiprocessing_c.get_context('fork')
    mb = (1 << 20) / 1e6
    rows = [
        ('round trip, small object', 'round trips/s', 1,
         lambda mp: bench_roundtrip(mp, ROUNDS['rt'] // scale)),
        ('send_bytes 64 B one way', 'msgs/s', 1,
         lambda mp: bench_oneway(mp, ROUNDS['small'] // scale, 64)),
        ('send_bytes 1 MiB one way', 'MB/s', mb,
         lambda mp: bench_oneway(mp, ROUNDS['big'] // scale, 1 << 20)),
    ]
    print('%-28s %5s %12s %12s %7s' % ('workload', 'clock', 'stdlib', 'ours', 'ratio'))
    for name, unit, k, fn in rows:
        s = [fn(std) for _ in range(3)]
        o = [fn(ours) for _ in range(3)]
        for i, clock in enumerate(('wall', 'cpu')):
            bs = max(r[i] for r in s) * k
            bo = max(r[i] for r in o) * k
            print('%-28s %5s %12.0f %12.0f %6.2fx  (%s)'
                  % (name, clock, bs, bo, bo / bs, unit))


if __name__ == '__main__':
    main()
