"""The workloads, written once against whichever implementation is passed in.

A workload is a function ``fn(mp, n) -> seconds`` that gets the imported
implementation module ``mp`` (``multiprocessing_c``, ``multiprocessing``,
``billiard`` ...) and an operation count, does its own set-up and warm-up
untimed, and returns the wall time of exactly ``n`` operations.  What it
``needs`` (submodules of the implementation, start methods) is checked
before it runs, so an implementation that lacks one is reported n/a.

Helpers run in child processes are module-level functions, so spawned
children can import them from here.  This module imports no
implementation itself.
"""
import importlib
import pickle
from time import perf_counter

__all__ = ['Workload', 'WORKLOADS', 'get', 'names', 'submodule', 'SMALL_OBJ']


class Workload:
    """One benchmark: a name, the unit its per-op time is shown in, what
    it needs, operation counts for --quick and the full run, and the C
    floor program (name, args) that does the same operation, if any."""

    def __init__(self, name, fn, unit, needs, n_quick, n_full, floor=None,
                 what=''):
        self.name = name
        self.fn = fn
        self.unit = unit
        self.needs = tuple(needs)
        self.n_quick = n_quick
        self.n_full = n_full
        self.floor = floor
        self.what = what

    def n(self, quick):
        return self.n_quick if quick else self.n_full


WORKLOADS = []


def workload(name, unit, needs, n_quick, n_full, floor=None, what=''):
    def deco(fn):
        WORKLOADS.append(Workload(name, fn, unit, needs, n_quick, n_full,
                                  floor, what))
        return fn
    return deco


def get(name):
    for w in WORKLOADS:
        if w.name == name:
            return w
    raise KeyError(name)


def names():
    return [w.name for w in WORKLOADS]


def submodule(mp, name):
    """Import submodule `name` of implementation `mp` by name."""
    return importlib.import_module(mp.__name__ + '.' + name)


def _ctx(mp):
    # Helper processes are forked in every implementation, so a workload
    # measures its operation and not the default start method of the day.
    return mp.get_context('fork')


def _start(ctx, target, *args):
    p = ctx.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def _finish(p, timeout=30):
    p.join(timeout)
    if p.exitcode != 0:
        if p.exitcode is None:
            p.terminate()
            p.join(5)
        raise RuntimeError('helper process ended with exit code %r'
                           % (p.exitcode,))


# --------------------------------------------------------------------------
# Process start + join, per start method

def _noop():
    pass


def _start_join(mp, n, method):
    ctx = mp.get_context(method)
    # Warm-up; starts the fork server where there is one.
    for _ in range(1 if method == 'spawn' else 2):
        p = ctx.Process(target=_noop)
        p.start()
        p.join()
    t0 = perf_counter()
    for _ in range(n):
        p = ctx.Process(target=_noop)
        p.start()
        p.join()
    elapsed = perf_counter() - t0
    if p.exitcode != 0:
        raise RuntimeError('child exit code %r' % (p.exitcode,))
    return elapsed


@workload('process_fork', 'ms', ['start:fork'], 10, 100,
          floor=('fork_wait', []), what='Process(target=noop) start+join, fork')
def process_fork(mp, n):
    return _start_join(mp, n, 'fork')


@workload('process_spawn', 'ms', ['start:spawn'], 2, 6,
          floor=('spawn_true', []),
          what='Process(target=noop) start+join, spawn (floor: posix_spawn of /bin/true)')
def process_spawn(mp, n):
    return _start_join(mp, n, 'spawn')


@workload('process_forkserver', 'ms', ['start:forkserver'], 5, 20,
          floor=('fork_wait', []),
          what='Process(target=noop) start+join, forkserver')
def process_forkserver(mp, n):
    return _start_join(mp, n, 'forkserver')


# --------------------------------------------------------------------------
# Pipe

SMALL_OBJ = (1, 'spam', 2.5, [None, True])
_SMALL_LEN = len(pickle.dumps(SMALL_OBJ, protocol=pickle.HIGHEST_PROTOCOL)) + 4


def _echo_obj(conn):
    while True:
        obj = conn.recv()
        if obj is None:
            break
        conn.send(obj)
    conn.close()


def _echo_bytes(conn):
    while True:
        buf = conn.recv_bytes()
        if not buf:
            break
        conn.send_bytes(buf)
    conn.close()


def _pipe_pingpong(mp, n, child, send, recv, msg, stop, warm=50):
    ctx = _ctx(mp)
    a, b = ctx.Pipe()
    p = _start(ctx, child, b)
    b.close()
    for _ in range(warm):
        send(a, msg)
        recv(a)
    t0 = perf_counter()
    for _ in range(n):
        send(a, msg)
        recv(a)
    elapsed = perf_counter() - t0
    send(a, stop)
    _finish(p)
    a.close()
    return elapsed


@workload('pipe_obj', 'us', ['connection'], 3000, 15000,
          floor=('pipe_roundtrip', [_SMALL_LEN]),
          what='Pipe() send/recv round trip of a small tuple')
def pipe_obj(mp, n):
    return _pipe_pingpong(mp, n, _echo_obj, lambda c, m: c.send(m),
                          lambda c: c.recv(), SMALL_OBJ, None)


@workload('pipe_bytes_64', 'us', ['connection'], 3000, 15000,
          floor=('pipe_roundtrip', [64 + 4]),
          what='Pipe() send_bytes/recv_bytes round trip, 64 bytes')
def pipe_bytes_64(mp, n):
    return _pipe_pingpong(mp, n, _echo_bytes, lambda c, m: c.send_bytes(m),
                          lambda c: c.recv_bytes(), b'x' * 64, b'')


@workload('pipe_bytes_1m', 'us', ['connection'], 60, 250,
          floor=('pipe_roundtrip', [(1 << 20) + 4]),
          what='Pipe() send_bytes/recv_bytes round trip, 1 MiB')
def pipe_bytes_1m(mp, n):
    return _pipe_pingpong(mp, n, _echo_bytes, lambda c, m: c.send_bytes(m),
                          lambda c: c.recv_bytes(), b'x' * (1 << 20), b'',
                          warm=5)


def _sink_bytes(conn, n):
    recv = conn.recv_bytes
    for _ in range(n):
        recv()
    conn.send_bytes(b'done')
    conn.close()


def _pipe_stream(mp, n, msg, warm):
    """One way: the parent sends n messages, a child receives them all
    and says done; per message."""
    ctx = _ctx(mp)
    a, b = ctx.Pipe()
    p = _start(ctx, _sink_bytes, b, warm + n)
    b.close()
    send = a.send_bytes
    for _ in range(warm):
        send(msg)
    t0 = perf_counter()
    for _ in range(n):
        send(msg)
    if a.recv_bytes() != b'done':
        raise RuntimeError('bad reply')
    elapsed = perf_counter() - t0
    _finish(p)
    a.close()
    return elapsed


@workload('pipe_stream_64', 'us', ['connection'], 20000, 100000,
          floor=('pipe_stream', [64 + 4]),
          what='Pipe() send_bytes one way to a child, 64 bytes, per message')
def pipe_stream_64(mp, n):
    return _pipe_stream(mp, n, b'x' * 64, 200)


@workload('pipe_stream_1m', 'us', ['connection'], 100, 500,
          floor=('pipe_stream', [(1 << 20) + 4]),
          what='Pipe() send_bytes one way to a child, 1 MiB, per message')
def pipe_stream_1m(mp, n):
    return _pipe_stream(mp, n, b'x' * (1 << 20), 5)


# --------------------------------------------------------------------------
# Queues: a stream of small items from the parent to a consuming child

_WARM_ITEMS = 200


def _consume(q, done, n):
    for _ in range(_WARM_ITEMS):
        q.get()
    done.put('warm')
    for _ in range(n):
        q.get()
    done.put('done')


def _queue_stream(mp, n, factory):
    ctx = _ctx(mp)
    q, done = factory(ctx), factory(ctx)
    p = _start(ctx, _consume, q, done, n)
    for i in range(_WARM_ITEMS):
        q.put(i)
    assert done.get() == 'warm'
    t0 = perf_counter()
    for i in range(n):
        q.put(i)
    assert done.get() == 'done'
    elapsed = perf_counter() - t0
    _finish(p)
    return elapsed


@workload('queue', 'us', ['queues'], 5000, 30000,
          what='Queue: put() in the parent, get() in a child, per item')
def queue(mp, n):
    return _queue_stream(mp, n, lambda ctx: ctx.Queue())


@workload('simplequeue', 'us', ['queues'], 5000, 30000,
          what='SimpleQueue: put() in the parent, get() in a child, per item')
def simplequeue(mp, n):
    return _queue_stream(mp, n, lambda ctx: ctx.SimpleQueue())


def _consume_joinable(q, n):
    for _ in range(_WARM_ITEMS + n):
        q.get()
        q.task_done()


@workload('joinablequeue', 'us', ['queues'], 5000, 30000,
          what='JoinableQueue: put() in the parent, get()+task_done() in a '
               'child, then join(), per item')
def joinablequeue(mp, n):
    ctx = _ctx(mp)
    q = ctx.JoinableQueue()
    p = _start(ctx, _consume_joinable, q, n)
    for i in range(_WARM_ITEMS):
        q.put(i)
    q.join()
    t0 = perf_counter()
    for i in range(n):
        q.put(i)
    q.join()
    elapsed = perf_counter() - t0
    _finish(p)
    return elapsed


# --------------------------------------------------------------------------
# Synchronization primitives

def _acquire_release(lock, n):
    acquire, release = lock.acquire, lock.release
    for _ in range(1000):
        acquire()
        release()
    t0 = perf_counter()
    for _ in range(n):
        acquire()
        release()
    return perf_counter() - t0


@workload('lock', 'ns', ['synchronize'], 100000, 1000000,
          floor=('sem_uncontended', []),
          what='Lock acquire()+release(), uncontended')
def lock(mp, n):
    return _acquire_release(_ctx(mp).Lock(), n)


@workload('rlock', 'ns', ['synchronize'], 100000, 1000000,
          floor=('sem_uncontended', []),
          what='RLock acquire()+release(), uncontended')
def rlock(mp, n):
    return _acquire_release(_ctx(mp).RLock(), n)


def _sem_echo(ping, pong, total):
    for _ in range(total):
        ping.acquire()
        pong.release()


@workload('semaphore_pingpong', 'us', ['synchronize'], 3000, 20000,
          floor=('sem_pingpong', []),
          what='Semaphore release/acquire round trip between two processes')
def semaphore_pingpong(mp, n):
    ctx = _ctx(mp)
    ping, pong = ctx.Semaphore(0), ctx.Semaphore(0)
    warm = 100
    p = _start(ctx, _sem_echo, ping, pong, warm + n)
    for _ in range(warm):
        ping.release()
        pong.acquire()
    t0 = perf_counter()
    for _ in range(n):
        ping.release()
        pong.acquire()
    elapsed = perf_counter() - t0
    _finish(p)
    return elapsed


def _event_echo(ping, pong, total):
    for _ in range(total):
        ping.wait()
        ping.clear()
        pong.set()


@workload('event_pingpong', 'us', ['synchronize'], 2000, 10000,
          floor=('sem_pingpong', []),
          what='Event set/wait/clear round trip between two processes')
def event_pingpong(mp, n):
    ctx = _ctx(mp)
    ping, pong = ctx.Event(), ctx.Event()
    warm = 100
    p = _start(ctx, _event_echo, ping, pong, warm + n)

    def one():
        ping.set()
        pong.wait()
        pong.clear()
    for _ in range(warm):
        one()
    t0 = perf_counter()
    for _ in range(n):
        one()
    elapsed = perf_counter() - t0
    _finish(p)
    return elapsed


def _cond_echo(cond, turn, total):
    with cond:
        for _ in range(total):
            cond.wait_for(lambda: turn.value == 1)
            turn.value = 0
            cond.notify()


@workload('condition_pingpong', 'us', ['synchronize', 'sharedctypes'],
          2000, 10000, floor=('sem_pingpong', []),
          what='Condition notify/wait_for round trip between two processes '
               '(turn flag in a RawValue)')
def condition_pingpong(mp, n):
    ctx = _ctx(mp)
    cond = ctx.Condition()
    turn = ctx.RawValue('i', 0)
    warm = 100
    p = _start(ctx, _cond_echo, cond, turn, warm + n)

    def rounds(k):
        with cond:
            for _ in range(k):
                turn.value = 1
                cond.notify()
                cond.wait_for(lambda: turn.value == 0)
    rounds(warm)
    t0 = perf_counter()
    rounds(n)
    elapsed = perf_counter() - t0
    _finish(p)
    return elapsed


# --------------------------------------------------------------------------
# Shared memory

@workload('value_increment', 'ns', ['sharedctypes', 'synchronize'],
          50000, 300000, floor=('sem_uncontended', []),
          what="Value('i') += 1 under its get_lock()")
def value_increment(mp, n):
    v = _ctx(mp).Value('i', 0)
    lock = v.get_lock()
    for _ in range(1000):
        with lock:
            v.value += 1
    t0 = perf_counter()
    for _ in range(n):
        with lock:
            v.value += 1
    elapsed = perf_counter() - t0
    if v.value != n + 1000:
        raise RuntimeError('lost increments: %d' % v.value)
    return elapsed


def _create_many(factory, n):
    keep = [factory() for _ in range(100)]   # warm-up: grow the heap once
    del keep
    t0 = perf_counter()
    for _ in range(n):
        factory()
    return perf_counter() - t0


@workload('array_create', 'us', ['sharedctypes', 'synchronize'], 1000, 4000,
          what="Array('d', 1000) creation (with its lock) and release")
def array_create(mp, n):
    ctx = _ctx(mp)
    return _create_many(lambda: ctx.Array('d', 1000), n)


@workload('rawarray_create', 'us', ['sharedctypes'], 2000, 10000,
          what="RawArray('d', 1000) creation and release")
def rawarray_create(mp, n):
    ctx = _ctx(mp)
    return _create_many(lambda: ctx.RawArray('d', 1000), n)


@workload('array_create_1m', 'ms', ['sharedctypes', 'synchronize'], 20, 100,
          what="Array('d', 1_000_000) creation (with its lock) and release")
def array_create_1m(mp, n):
    ctx = _ctx(mp)
    for _ in range(3):      # warm-up: the heap's first big arena
        ctx.Array('d', 1000000)
    t0 = perf_counter()
    for _ in range(n):
        ctx.Array('d', 1000000)
    return perf_counter() - t0


_LIVE_BLOCKS = 100


@workload('heap_small_blocks', 'us', ['heap'], 20000, 200000,
          what='heap.BufferWrapper(16) allocation and free (100 live at a '
               'time), per block')
def heap_small_blocks(mp, n):
    BufferWrapper = submodule(mp, 'heap').BufferWrapper

    def allocate(k):
        while k > 0:
            batch = min(k, _LIVE_BLOCKS)
            blocks = [BufferWrapper(16) for _ in range(batch)]
            del blocks
            k -= batch
    allocate(1000)
    t0 = perf_counter()
    allocate(n)
    return perf_counter() - t0


@workload('shm_create_attach', 'us', ['shared_memory'], 300, 2000,
          floor=('shm_create_attach', [65536]),
          what='SharedMemory(create=True, size=64 KiB), attach by name, '
               'close both, unlink')
def shm_create_attach(mp, n):
    SharedMemory = submodule(mp, 'shared_memory').SharedMemory

    def one():
        sm = SharedMemory(create=True, size=65536)
        other = SharedMemory(name=sm.name)
        other.buf[0] = 1
        other.close()
        sm.close()
        sm.unlink()
    for _ in range(20):
        one()
    t0 = perf_counter()
    for _ in range(n):
        one()
    return perf_counter() - t0


# --------------------------------------------------------------------------
# Pool

def _square(x):
    return x * x


MAP_ITEMS = 100000


@workload('pool_map', 'ms', ['pool'], 1, 4,
          what='Pool(2).map(square, range(100000)), per map call')
def pool_map(mp, n):
    with _ctx(mp).Pool(2) as pool:
        pool.map(_square, range(1000))
        t0 = perf_counter()
        for _ in range(n):
            r = pool.map(_square, range(MAP_ITEMS))
        elapsed = perf_counter() - t0
    if r[-1] != (MAP_ITEMS - 1) ** 2:
        raise RuntimeError('wrong result')
    return elapsed


@workload('pool_imap_unordered', 'us', ['pool'], 1000, 6000,
          what='Pool(2).imap_unordered(square, range(n)) (chunksize 1), per item')
def pool_imap_unordered(mp, n):
    with _ctx(mp).Pool(2) as pool:
        sum(pool.imap_unordered(_square, range(200)))
        t0 = perf_counter()
        total = sum(pool.imap_unordered(_square, range(n)))
        elapsed = perf_counter() - t0
    if total != sum(i * i for i in range(n)):
        raise RuntimeError('wrong result')
    return elapsed


@workload('pool_apply_async', 'us', ['pool'], 300, 2000,
          what='Pool(2).apply_async(square, (3,)).get() round trip')
def pool_apply_async(mp, n):
    with _ctx(mp).Pool(2) as pool:
        for _ in range(50):
            pool.apply_async(_square, (3,)).get()
        t0 = perf_counter()
        for _ in range(n):
            pool.apply_async(_square, (3,)).get()
        return perf_counter() - t0


@workload('pool_start', 'ms', ['pool'], 3, 8,
          what='Pool(2) start, close(), join()')
def pool_start(mp, n):
    ctx = _ctx(mp)
    pool = ctx.Pool(2)
    pool.close()
    pool.join()
    t0 = perf_counter()
    for _ in range(n):
        pool = ctx.Pool(2)
        pool.close()
        pool.join()
    return perf_counter() - t0


# --------------------------------------------------------------------------
# Managers

@workload('manager_dict', 'us', ['managers'], 500, 4000,
          what='Manager().dict(): d[k] = v then d[k], per pair')
def manager_dict(mp, n):
    with _ctx(mp).Manager() as m:
        d = m.dict()
        for i in range(100):
            d['k'] = i
            d['k']
        t0 = perf_counter()
        for i in range(n):
            d['k'] = i
            d['k']
        elapsed = perf_counter() - t0
        if d['k'] != n - 1:
            raise RuntimeError('wrong result')
    return elapsed


@workload('manager_start', 'ms', ['managers'], 3, 8,
          what='Manager() start and shutdown')
def manager_start(mp, n):
    ctx = _ctx(mp)
    with ctx.Manager():
        pass
    t0 = perf_counter()
    for _ in range(n):
        with ctx.Manager():
            pass
    return perf_counter() - t0
