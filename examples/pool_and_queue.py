"""A Pool, a Queue and shared memory in one unchanged stdlib-style script.

    python -m multiprocessing_c examples/pool_and_queue.py
"""
import multiprocessing
import os


def square(x):
    return x * x


def producer(q, n):
    for i in range(n):
        q.put(('item', i, os.getpid()))
    q.put(None)


def add_into(total, lock, values):
    for v in values:
        with lock:
            total.value += v


if __name__ == '__main__':
    print('multiprocessing is', multiprocessing.__name__)
    with multiprocessing.Pool(2) as pool:
        squares = pool.map(square, range(10_000), chunksize=500)
    print('sum of squares below 10000:', sum(squares))

    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=producer, args=(q, 5))
    p.start()
    items = list(iter(q.get, None))
    p.join()
    print('received', len(items), 'items from pid', items[0][2])

    total = multiprocessing.Value('q', 0, lock=False)
    lock = multiprocessing.Lock()
    workers = [multiprocessing.Process(target=add_into, args=(total, lock, range(1000)))
               for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print('shared counter:', total.value, '(expected', 4 * sum(range(1000)), ')')
