"""Queue, JoinableQueue and SimpleQueue (multiprocessing_c.queues)."""
import gc
import glob
import os
import pickle
import queue
import signal
import threading
import time

import pytest

import multiprocessing_c
from multiprocessing_c import queues

WAIT = 10


def _join_ok(p):
    p.join(WAIT)
    assert p.exitcode == 0, p.exitcode


class NotPicklable(object):
    def __init__(self):
        self.reduced = False

    def __reduce__(self):
        self.reduced = True
        raise AttributeError('not today')


# Children (module level, so spawned children can import them).

def child_put_range(q, start, stop, close):
    for i in range(start, stop):
        q.put(i)
    if close:
        q.close()


def child_put_tagged(q, tag, n):
    for i in range(n):
        q.put((tag, i))


def child_get_n(q, n, out):
    for _ in range(n):
        out.put(q.get(timeout=WAIT))


def child_worker(q):
    for _ in iter(q.get, None):
        time.sleep(0.01)
        q.task_done()
    q.task_done()


def child_put_unread(q, n):
    # Nobody reads: without cancel_join_thread the exit would wait forever.
    q.cancel_join_thread()
    for i in range(n):
        q.put(b'x' * 1000)


def child_simple_echo(inq, outq):
    for obj in iter(inq.get, None):
        outq.put(obj)


def child_qsize(q, out):
    out.put(q.qsize())


# ---------------------------------------------------------------- in process


class TestQueueInProcess:
    def test_exceptions_are_the_queue_modules(self):
        assert queues.Empty is queue.Empty and queues.Full is queue.Full

    def test_put_get_order_and_state(self):
        q = multiprocessing_c.Queue()
        assert q.empty() and not q.full() and q.qsize() == 0
        q.put(1)
        q.put('two', True)
        q.put([3], True, None)
        q.put(4, False)
        q.put_nowait({5: 5})
        assert q.qsize() == 5 and not q.empty()
        assert [q.get(), q.get(True), q.get(True, None), q.get(timeout=1),
                q.get_nowait()] == [1, 'two', [3], 4, {5: 5}]
        assert q.empty() and q.qsize() == 0
        q.close()
        q.join_thread()

    @pytest.mark.parametrize('kind', ['Queue', 'JoinableQueue'])
    def test_empty_after_close(self, kind):
        # As the stdlib's: close() of a queue this process never put to
        # leaves the pipe alone; after a put, the pipe is closed and
        # empty() says so (3.13's test_closed_queue_empty_exceptions).
        before = set(os.listdir('/proc/self/fd'))
        q = getattr(multiprocessing_c, kind)()
        q.close()
        q.join_thread()
        assert q.empty()
        del q
        gc.collect()
        assert set(os.listdir('/proc/self/fd')) - before == set()
        q = getattr(multiprocessing_c, kind)()
        q.put('foo')
        q.close()
        q.join_thread()
        with pytest.raises(OSError, match='is closed'):
            q.empty()

    def test_timeouts(self):
        q = multiprocessing_c.Queue(maxsize=1)
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(False)
        with pytest.raises(queue.Empty):
            q.get_nowait()
        with pytest.raises(queue.Empty):
            q.get(False, 5)             # no block: timeout ignored
        assert time.monotonic() - t0 < 1
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(True, 0.2)
        assert 0.19 <= time.monotonic() - t0 < 3
        q.put(1)
        assert q.full()
        with pytest.raises(queue.Full):
            q.put(2, False)
        with pytest.raises(queue.Full):
            q.put_nowait(2)
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            q.put(2, timeout=0.2)
        assert 0.19 <= time.monotonic() - t0 < 3
        assert q.get() == 1
        q.close()

    def test_closed_queue_raises(self):
        for q in (multiprocessing_c.Queue(), multiprocessing_c.JoinableQueue()):
            with pytest.raises(AssertionError, match='not closed'):
                q.join_thread()
            q.close()
            with pytest.raises(ValueError, match='is closed'):
                q.put('foo')
            with pytest.raises(ValueError, match='is closed'):
                q.get()
            q.join_thread()

    def test_more_than_the_pipe_holds_from_one_process(self):
        # Puts never block on a full pipe: the rest waits in the buffer.
        q = multiprocessing_c.Queue()
        n = 20000
        for i in range(n):
            q.put(i)
        assert q.qsize() == n
        assert [q.get(timeout=WAIT) for _ in range(n)] == list(range(n))
        q.close()
        q.join_thread()

    def test_large_objects(self):
        q = multiprocessing_c.Queue()
        big = os.urandom(3 * 1024 * 1024)
        q.put(big)
        q.put('after')
        assert q.get(timeout=WAIT) == big
        assert q.get(timeout=WAIT) == 'after'
        q.put(b'')
        assert q.get(timeout=WAIT) == b''
        q.close()
        q.join_thread()

    def test_unpicklable_reported_like_stdlib(self, capfd):
        # The stdlib's put() returns and the error is printed; the queue
        # goes on working and its size stays right.
        q = multiprocessing_c.Queue(maxsize=1)
        bad = NotPicklable()
        assert q.put(bad) is None
        assert bad.reduced
        q.put(True)
        assert q.qsize() == 1
        assert q.get(timeout=WAIT) is True
        assert q.empty()
        err = capfd.readouterr().err
        assert 'AttributeError: not today' in err
        q.close()

    def test_unpicklable_hook(self):
        class SafeQueue(queues.Queue):
            seen = []

            @staticmethod
            def _on_queue_feeder_error(e, obj):
                SafeQueue.seen.append((type(e), obj))

        q = SafeQueue(ctx=multiprocessing_c.get_context())
        bad = NotPicklable()
        q.put(bad)
        q.put(True)
        assert q.get(timeout=WAIT) is True
        assert SafeQueue.seen == [(AttributeError, bad)]
        q.close()

    def test_not_picklable_outside_process_creation(self):
        for q in (multiprocessing_c.Queue(), multiprocessing_c.JoinableQueue(),
                  multiprocessing_c.SimpleQueue()):
            with pytest.raises(RuntimeError, match='through inheritance'):
                pickle.dumps(q)
            q.close()

    @pytest.mark.parametrize('timeout', [None, 30.0])
    def test_keyboard_interrupt_out_of_blocked_get(self, timeout):
        q = multiprocessing_c.Queue()

        def raise_kbi(*a):
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGALRM, raise_kbi)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            t0 = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                q.get(timeout=timeout)
            assert time.monotonic() - t0 < 5
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, old)
        # Still usable: the read lock was given back.
        q.put(1)
        assert q.get(timeout=WAIT) == 1
        q.close()

    def test_eintr_during_get_timeout(self):
        q = multiprocessing_c.Queue()
        old = signal.signal(signal.SIGALRM, lambda *a: None)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
            t0 = time.monotonic()
            with pytest.raises(queue.Empty):
                q.get(timeout=0.3)
            assert 0.29 <= time.monotonic() - t0 < 3
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, old)
        q.close()


class TestJoinableQueueInProcess:
    def test_task_done_and_join(self):
        q = multiprocessing_c.JoinableQueue()
        with pytest.raises(ValueError, match='too many times'):
            q.task_done()
        q.put(1)
        q.put(2)
        assert q.get() == 1
        q.task_done()
        done = []
        t = threading.Thread(target=lambda: (q.join(), done.append(1)))
        t.start()
        time.sleep(0.1)
        assert not done
        assert q.get() == 2
        q.task_done()
        t.join(WAIT)
        assert done == [1]
        q.close()

    def test_unpicklable_does_not_count_as_a_task(self, capfd):
        q = multiprocessing_c.JoinableQueue()
        q.put(NotPicklable())
        q.join()            # returns at once: nothing unfinished
        assert 'AttributeError' in capfd.readouterr().err
        q.close()


class TestSimpleQueueInProcess:
    def test_basics(self):
        q = multiprocessing_c.SimpleQueue()
        assert q.empty()
        q.put(1)
        q.put(b'x' * 50000)
        assert not q.empty()
        assert q.get() == 1
        assert q.get() == b'x' * 50000
        assert q.empty()
        q.close()
        assert queues.SimpleQueue[int].__origin__ is queues.SimpleQueue

    def test_unpicklable_raises_in_caller(self):
        q = multiprocessing_c.SimpleQueue()
        with pytest.raises(AttributeError, match='not today'):
            q.put(NotPicklable())
        q.put(2)
        assert q.get() == 2
        q.close()


# ------------------------------------------------------- across processes


class TestAcrossProcesses:
    @pytest.mark.parametrize('close', [True, False], ids=['close', 'noclose'])
    def test_items_arrive_in_order_and_none_lost_at_exit(self, ctx, close):
        q = ctx.Queue()
        n = 5000    # more than the pipe holds: the child's feeder must drain
        p = ctx.Process(target=child_put_range, args=(q, 0, n, close))
        p.start()
        time.sleep(0.2)     # the child is waiting at exit with data buffered
        assert [q.get(timeout=WAIT) for _ in range(n)] == list(range(n))
        _join_ok(p)
        with pytest.raises(queue.Empty):
            q.get(timeout=0.05)
        q.close()
        q.join_thread()

    def test_fork_after_puts(self, ctx):
        # The CPython suite's test_fork: the parent's items, then the child's.
        q = ctx.Queue()
        for i in range(10):
            q.put(i)
        p = ctx.Process(target=child_put_range, args=(q, 10, 20, False))
        p.start()
        assert [q.get(timeout=WAIT) for _ in range(20)] == list(range(20))
        with pytest.raises(queue.Empty):
            q.get(False)
        _join_ok(p)
        q.close()

    def test_many_producers_keep_their_order(self, ctx):
        q = ctx.Queue()
        n = 500
        procs = [ctx.Process(target=child_put_tagged, args=(q, t, n))
                 for t in range(3)]
        for p in procs:
            p.start()
        got = {0: [], 1: [], 2: []}
        for _ in range(3 * n):
            tag, i = q.get(timeout=WAIT)
            got[tag].append(i)
        for p in procs:
            _join_ok(p)
        assert all(v == list(range(n)) for v in got.values())
        q.close()

    def test_consumer_in_child_and_qsize(self, ctx):
        q, out = ctx.Queue(), ctx.Queue()
        for i in range(3):
            q.put(i)
        p = ctx.Process(target=child_qsize, args=(q, out))
        p.start()
        assert out.get(timeout=WAIT) == 3
        _join_ok(p)
        p = ctx.Process(target=child_get_n, args=(q, 3, out))
        p.start()
        assert [out.get(timeout=WAIT) for _ in range(3)] == [0, 1, 2]
        _join_ok(p)
        assert q.empty() and q.qsize() == 0
        q.close()
        out.close()

    def test_bounded_queue_across_processes(self, ctx):
        q, out = ctx.Queue(maxsize=2), ctx.Queue()
        q.put(1)
        q.put(2)
        with pytest.raises(queue.Full):
            q.put(3, timeout=0.1)
        p = ctx.Process(target=child_get_n, args=(q, 3, out))
        p.start()
        q.put(3, timeout=WAIT)      # room once the child has taken one
        assert [out.get(timeout=WAIT) for _ in range(3)] == [1, 2, 3]
        _join_ok(p)
        q.close()
        out.close()

    def test_joinable_queue(self, ctx):
        q = ctx.JoinableQueue()
        workers = [ctx.Process(target=child_worker, args=(q,)) for _ in range(3)]
        for p in workers:
            p.start()
        for i in range(10):
            q.put(i)
        q.join()
        assert q._unfinished_tasks.get_value() == 0
        for _ in workers:
            q.put(None)
        for p in workers:
            _join_ok(p)
        q.join()
        q.close()

    def test_cancel_join_thread_lets_producer_exit(self, ctx):
        q = ctx.Queue()
        p = ctx.Process(target=child_put_unread, args=(q, 500))
        p.start()
        p.join(WAIT)
        assert p.exitcode == 0
        # What reached the pipe is intact and in order of the frames.
        assert q.get(timeout=WAIT) == b'x' * 1000
        q.close()

    def test_simple_queue(self, ctx):
        inq, outq = ctx.SimpleQueue(), ctx.SimpleQueue()
        p = ctx.Process(target=child_simple_echo, args=(inq, outq))
        p.start()
        items = [1, 'two', b'x' * 100000, None]
        for obj in items:
            inq.put(obj)
        assert [outq.get() for _ in range(3)] == items[:3]
        _join_ok(p)
        assert outq.empty()
        inq.close()
        outq.close()


def test_no_semaphores_or_fds_left(monkeypatch):
    from multiprocessing_c import synchronize
    names = []
    make_name = synchronize.SemLock._make_name
    monkeypatch.setattr(synchronize.SemLock, '_make_name', staticmethod(
        lambda: names.append(make_name()) or names[-1]))
    before_fds = set(os.listdir('/proc/self/fd'))
    for method in ('fork', 'spawn'):
        ctx = multiprocessing_c.get_context(method)
        for q in (ctx.Queue(), ctx.JoinableQueue(), ctx.SimpleQueue()):
            q.put(1)
            assert q.get() == 1
            q.close()
        del q
    gc.collect()
    assert len(names) >= 2 * (3 + 5 + 2)
    assert [n for n in names if glob.glob('/dev/shm/sem.' + n.lstrip('/'))] == []
    assert set(os.listdir('/proc/self/fd')) - before_fds == set()


# ------------------------------------------- _mpcore.queue_send / queue_recv


class TestCQueuePath:
    @pytest.fixture
    def pipe_and_locks(self):
        from multiprocessing_c import _mpcore
        r, w = os.pipe()
        os.set_blocking(w, False)
        locks = [_mpcore.SemLock(1, 1, 1, '/mpc-q-%d-%d' % (os.getpid(), i), True)
                 for i in range(2)]
        yield _mpcore, r, w, locks[0], locks[1]
        os.close(r)
        os.close(w)

    def test_frames_round_trip_in_connection_format(self, pipe_and_locks):
        m, r, w, rl, wl = pipe_and_locks
        assert m.queue_send(w, wl, b'abc', False) is None
        assert os.read(r, 7) == b'\x00\x00\x00\x03abc'
        assert m.queue_send(w, wl, memoryview(b'xyz'), True) == 7
        assert m.queue_recv(r, rl, None, None) == b'xyz'
        assert m.queue_recv(r, rl, None, 0) is None
        assert rl._get_value() == 1 and wl._get_value() == 1

    def test_busy_lock_and_full_pipe(self, pipe_and_locks):
        m, r, w, rl, wl = pipe_and_locks
        wl.acquire()
        assert m.queue_send(w, wl, b'abc', False) == -1
        wl.release()
        big = b'z' * (1 << 20)
        n = m.queue_send(w, wl, big, False)
        assert 0 < n < len(big) + 4
        assert wl._get_value() == 0     # held for the caller to finish
        wl.release()
        assert m.queue_send(w, wl, b'more', False) == 0   # pipe full
        assert wl._get_value() == 1

    def test_sem_released_after_read(self, pipe_and_locks):
        m, r, w, rl, wl = pipe_and_locks
        sem = m.SemLock(1, 0, 5, '/mpc-qs-%d' % os.getpid(), True)
        m.queue_send(w, wl, b'1', True)
        assert m.queue_recv(r, rl, sem, 1.0) == b'1'
        assert sem._get_value() == 1

    def test_argument_errors(self, pipe_and_locks):
        m, r, w, rl, wl = pipe_and_locks
        with pytest.raises(TypeError):
            m.queue_recv(r, object(), None, None)
        with pytest.raises(TypeError):
            m.queue_send(w, wl, 'not bytes', True)
        with pytest.raises(TypeError):
            m.queue_recv(r, rl)
        rec = m.SemLock(0, 1, 1, '/mpc-qr-%d' % os.getpid(), True)
        with pytest.raises(ValueError):
            m.queue_recv(r, rec, None, 0)
        with pytest.raises(ValueError):
            m.queue_recv(-1, rl, None, 0)

    def test_eof(self, pipe_and_locks):
        m, r, w, rl, wl = pipe_and_locks
        r2, w2 = os.pipe()
        os.close(w2)
        with pytest.raises(EOFError):
            m.queue_recv(r2, rl, None, 1.0)
        os.close(r2)
        assert rl._get_value() == 1     # the lock was given back

    def test_timeout_with_sigalrm_spam(self, pipe_and_locks):
        m, r, w, rl, wl = pipe_and_locks
        old = signal.signal(signal.SIGALRM, lambda *a: None)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
            t0 = time.monotonic()
            assert m.queue_recv(r, rl, None, 0.3) is None
            assert 0.29 <= time.monotonic() - t0 < 3
            threading.Timer(0.1, m.queue_send, (w, wl, b'late', True)).start()
            assert m.queue_recv(r, rl, None, None) == b'late'
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, old)
