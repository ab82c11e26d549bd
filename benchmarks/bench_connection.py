"""Connection throughput, side by side with the stdlib in one run.

  python benchmarks/bench_connection.py [--quick]

Workloads: round trip of a small object over Pipe() (send/recv to an echo
child), one-way 64-byte send_bytes/recv_bytes, and one-way 1 MiB messages.
Prints each figure for the stdlib and for multiprocessing_c and the ratio.
"""
import os
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


def bench_roundtrip(mp, n):
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
    return n / dt


def bench_oneway(mp, n, size):
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
    return n / dt


def main():
    quick = '--quick' in sys.argv
    scale = 10 if quick else 1
    std = multiprocessing.get_context('fork')
    ours = multiprocessing_c.get_context('fork')
    rows = [
        ('round trip, small object', 'round trips/s',
         lambda mp: bench_roundtrip(mp, ROUNDS['rt'] // scale)),
        ('send_bytes 64 B one way', 'msgs/s',
         lambda mp: bench_oneway(mp, ROUNDS['small'] // scale, 64)),
        ('send_bytes 1 MiB one way', 'MB/s',
         lambda mp: bench_oneway(mp, ROUNDS['big'] // scale, 1 << 20) * (1 << 20) / 1e6),
    ]
    print('%-28s %14s %14s %7s' % ('workload', 'stdlib', 'ours', 'ratio'))
    for name, unit, fn in rows:
        s = max(fn(std) for _ in range(3))
        o = max(fn(ours) for _ in range(3))
        print('%-28s %14.0f %14.0f %6.2fx  (%s)' % (name, s, o, o / s, unit))


if __name__ == '__main__':
    main()
