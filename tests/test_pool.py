"""Pool and ThreadPool: the documented API under fork and spawn, plus what
the stdlib cannot do: a worker that dies fails its task with
WorkerLostError instead of hanging the pool, and per-task timeouts."""
import gc
import itertools
import os
import signal
import sys
import threading
import time
import weakref

import pytest

import multiprocessing_c
from multiprocessing_c import pool as mpool
from multiprocessing_c.pool import WorkerLostError

# ------------------------------------------------ module-level helpers
# (spawned workers import this module by name to find them)


def sqr(x, wait=0.0):
    time.sleep(wait)
    return x * x


def mul(x, y):
    return x * y


def raising():
    raise KeyError('key')


def raise_runtime():
    raise RuntimeError(123)  # marker comment


def unpickleable_result():
    return lambda: 42


def identity(x):
    return x


def getpid(_=None):
    return os.getpid()


def exit_now(code):
    os._exit(code)


def kill_self(_=None):
    os.kill(os.getpid(), signal.SIGKILL)


def segfault(_=None):
    import ctypes
    ctypes.string_at(0)


def die_on(x, bad):
    if x == bad:
        os._exit(7)
    return x


def sleep_forever(_=None):
    time.sleep(60)


def set_global(value):
    global _GLOBAL
    _GLOBAL = value


_GLOBAL = None


def get_global(_=None):
    return _GLOBAL


def failing_initializer():
    raise ValueError('initializer says no')


def exiting_initializer():
    os._exit(3)


class SayWhenError(ValueError):
    pass


def exception_throwing_generator(total, when):
    if when == -1:
        raise SayWhenError('Somebody said when')
    for i in range(total):
        if i == when:
            raise SayWhenError('Somebody said when')
        yield i


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError('cannot pickle')


class BadUnpickle:
    """Pickles fine, fails to unpickle in the worker."""

    def __reduce__(self):
        return (_refuse, ())


def _refuse():
    raise ValueError('refused to unpickle')


@pytest.fixture
def pool(ctx):
    p = ctx.Pool(2)
    yield p
    p.terminate()
    p.join()

# ---------------------------------------------------------- basic API


def test_apply_and_apply_async(pool):
    assert pool.apply(sqr, (5,)) == 25
    assert pool.apply(sqr, (), {'x': 3}) == 9
    r = pool.apply_async(mul, (6, 7))
    assert r.get(timeout=10) == 42
    assert r.ready() and r.successful()


def test_map_starmap_and_async(pool):
    assert pool.map(sqr, range(10)) == [x * x for x in range(10)]
    assert pool.map(sqr, range(100), chunksize=20) == [x * x for x in range(100)]
    assert pool.map(sqr, iter(range(7))) == [x * x for x in range(7)]
    tuples = list(zip(range(50), range(49, -1, -1)))
    assert pool.starmap(mul, tuples) == list(itertools.starmap(mul, tuples))
    assert pool.starmap_async(mul, tuples, 7).get(10) == \
        list(itertools.starmap(mul, tuples))
    assert pool.map_async(sqr, range(10)).get(10) == [x * x for x in range(10)]


def test_empty_iterables(pool):
    assert pool.map(sqr, []) == []
    assert list(pool.imap(sqr, [])) == []
    assert list(pool.imap_unordered(sqr, [])) == []
    assert pool.map_async(sqr, [], chunksize=1).get(timeout=5) == []


def test_imap_with_generator(pool):
    gen = (i for i in range(30))
    assert list(pool.imap(sqr, gen)) == [i * i for i in range(30)]
    it = pool.imap(sqr, (i for i in range(1000)), chunksize=100)
    for i in range(1000):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        next(it)
    got = pool.imap_unordered(sqr, (i for i in range(100)), chunksize=7)
    assert sorted(got) == [i * i for i in range(100)]


def test_imap_endless_generator_is_consumed_lazily(pool):
    it = pool.imap(sqr, itertools.count(), chunksize=3)
    assert [next(it) for _ in range(50)] == [i * i for i in range(50)]


def test_imap_next_timeout(pool):
    it = pool.imap(sleep_then, [0.5, 0.0])
    with pytest.raises(multiprocessing_c.TimeoutError):
        it.next(timeout=0.05)
    assert it.next(timeout=10) == 0.5
    assert it.next(timeout=10) == 0.0


def sleep_then(t):
    time.sleep(t)
    return t


def test_imap_handle_iterable_exception(pool):
    it = pool.imap(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        next(it)
    it = pool.imap(sqr, exception_throwing_generator(10, 3), 1)
    for i in range(3):
        assert next(it) == i * i
    with pytest.raises(SayWhenError):
        next(it)
    it = pool.imap(sqr, exception_throwing_generator(20, 7), 2)
    for i in range(6):
        assert next(it) == i * i
    with pytest.raises(SayWhenError):
        next(it)
    it = pool.imap_unordered(sqr, exception_throwing_generator(10, 3), 1)
    with pytest.raises(SayWhenError):
        for _ in range(10):
            next(it)


def test_map_handle_iterable_exception(pool):
    with pytest.raises(SayWhenError) as info:
        pool.map(sqr, exception_throwing_generator(10, 3), 1)
    assert info.value.__cause__ is None


def test_invalid_arguments(ctx):
    with pytest.raises(ValueError):
        ctx.Pool(0)
    with pytest.raises(ValueError):
        ctx.Pool(-1)
    for bad in (0, -1, 0.5, '12'):
        with pytest.raises(ValueError):
            ctx.Pool(1, maxtasksperchild=bad)
    with pytest.raises(TypeError):
        ctx.Pool(1, initializer=1)


def test_chunksize_must_be_positive(pool):
    with pytest.raises(ValueError):
        pool.imap(sqr, [1], chunksize=0)


def test_private_attributes_third_party_code_reads(ctx):
    p = ctx.Pool(3)
    try:
        assert p._processes == 3
        assert len(p._pool) == 3
        assert all(w.pid for w in p._pool)
        assert p._state == mpool.RUN
        assert isinstance(p._cache, dict)
        assert p._taskqueue.qsize() == 0
        assert 'PoolWorker' in p._pool[0].name
        assert all(w.daemon for w in p._pool)
    finally:
        p.close()
        p.join()
    assert p._state == mpool.CLOSE

# ------------------------------------------------- errors and callbacks


def test_exception_carries_remote_traceback(ctx):
    with ctx.Pool(1) as p:
        with pytest.raises(RuntimeError) as info:
            p.apply(raise_runtime)
    p.join()
    exc = info.value
    assert exc.args == (123,)
    assert type(exc.__cause__) is mpool.RemoteTraceback
    assert 'raise RuntimeError(123)  # marker comment' in exc.__cause__.tb


def test_callbacks(pool):
    got = []
    pool.map_async(int, ['1'], callback=got.append,
                   error_callback=got.append).wait(10)
    assert got == [[1]]
    pool.map_async(int, ['a'], callback=got.append,
                   error_callback=got.append).wait(10)
    assert len(got) == 2 and isinstance(got[1], ValueError)
    errs = []
    r = pool.apply_async(raising, error_callback=errs.append)
    with pytest.raises(KeyError):
        r.get(10)
    assert isinstance(errs[0], KeyError)
    assert not r.successful()
    done = []
    pool.apply_async(sqr, (3,), callback=done.append).wait(10)
    assert done == [9]


def test_raising_callback_does_not_break_pool(pool, capsys):
    def bad(_):
        raise ZeroDivisionError
    pool.apply_async(sqr, (2,), callback=bad).wait(10)
    assert pool.apply(sqr, (4,)) == 16
    assert 'ZeroDivisionError' in capsys.readouterr().err


def test_successful_not_ready_raises(pool):
    r = pool.apply_async(sqr, (1, 0.5))
    with pytest.raises(ValueError):
        r.successful()
    assert r.get(10) == 1


def test_get_timeout(pool):
    r = pool.apply_async(sqr, (6, 1.0))
    with pytest.raises(multiprocessing_c.TimeoutError):
        r.get(timeout=0.05)
    assert r.get(10) == 36


def test_unpicklable_argument(pool):
    with pytest.raises(RuntimeError, match='cannot pickle') as info:
        pool.map(sqr, [Unpicklable()] * 10)
    if sys.version_info >= (3, 11):
        assert 'module-level functions' in ' '.join(info.value.__notes__)
    r = pool.apply_async(sqr, (Unpicklable(),))
    with pytest.raises(RuntimeError):
        r.get(10)
    # arguments that fail to unpickle in the worker fail just their task
    with pytest.raises(ValueError, match='refused to unpickle') as info:
        pool.apply(identity, (BadUnpickle(),))
    if sys.version_info >= (3, 11):
        assert 'could not unpickle' in ' '.join(info.value.__notes__)
    assert pool.apply(sqr, (3,)) == 9


def test_unpicklable_result(pool):
    for _ in range(5):
        errs = []
        r = pool.apply_async(unpickleable_result, error_callback=errs.append)
        with pytest.raises(mpool.MaybeEncodingError):
            r.get(10)
        assert errs[0].exc and errs[0].value
    assert pool.apply(sqr, (2,)) == 4


def test_map_no_failfast_pool_still_usable(pool):
    with pytest.raises(KeyError):
        pool.map(raising_x, range(10), chunksize=1)
    assert pool.map(sqr, range(4)) == [0, 1, 4, 9]


def raising_x(x):
    if x == 5:
        raise KeyError(x)
    return x

# ------------------------------------------------------- worker death


@pytest.mark.parametrize('killer', [exit_now, kill_self, segfault],
                         ids=['os_exit', 'sigkill', 'segfault'])
def test_worker_death_fails_task_not_hangs(ctx, killer):
    with ctx.Pool(2) as p:
        args = (5,) if killer is exit_now else ()
        r = p.apply_async(killer, args)
        with pytest.raises(WorkerLostError) as info:
            r.get(timeout=20)
        code = info.value.exitcode
        if killer is exit_now:
            assert code == 5
            assert 'exit code 5' in str(info.value)
        elif killer is kill_self:
            assert code == -signal.SIGKILL
            assert 'SIGKILL' in str(info.value)
        else:
            assert code == -signal.SIGSEGV
        # the pool replaced the worker and keeps serving
        assert p.map(sqr, range(20)) == [x * x for x in range(20)]
        assert len(p._pool) == 2
    p.join()


def test_worker_death_in_map_and_imap(ctx):
    with ctx.Pool(2) as p:
        with pytest.raises(WorkerLostError):
            p.starmap(die_on, [(i, 4) for i in range(10)], chunksize=1)
        it = p.imap(die_on_4, range(10))
        got = []
        with pytest.raises(WorkerLostError):
            for x in it:
                got.append(x)
        assert got == [0, 1, 2, 3]
        assert p.apply(sqr, (3,)) == 9
    p.join()


def die_on_4(x):
    return die_on(x, 4)


def test_worker_killed_from_outside(ctx):
    with ctx.Pool(1) as p:
        pid = p.apply(getpid)
        r = p.apply_async(sleep_forever)
        time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerLostError) as info:
            r.get(timeout=20)
        assert info.value.pid == pid
        assert p.apply(getpid) != pid
    p.join()


def test_per_task_timeout_kills_and_replaces(ctx):
    with ctx.Pool(1) as p:
        pid = p.apply(getpid)
        r = p.apply_async(sleep_forever, timeout=0.3)
        with pytest.raises(multiprocessing_c.TimeoutError, match='timeout'):
            r.get(timeout=20)
        assert r.ready()
        assert p.apply(getpid) != pid
        with pytest.raises(multiprocessing_c.TimeoutError):
            p.starmap(sqr, [(1, 5.0)], timeout=0.3)
        assert p.map(sqr, range(3), timeout=10) == [0, 1, 4]
    p.join()

# ------------------------------------------------------------ lifetime


def test_close_join_waits_for_tasks(ctx):
    p = ctx.Pool(2)
    results = [p.apply_async(sqr, (i, 0.05)) for i in range(6)]
    p.close()
    p.join()
    assert [r.get(0) for r in results] == [i * i for i in range(6)]
    assert not any(w.is_alive() for w in p._pool)


def test_use_after_close_raises(ctx):
    p = ctx.Pool(1)
    p.close()
    for call in (lambda: p.apply_async(sqr, (1,)),
                 lambda: p.map(sqr, [1]),
                 lambda: p.imap(sqr, [1])):
        with pytest.raises(ValueError):
            call()
    p.join()


def test_join_while_running_raises(ctx):
    p = ctx.Pool(1)
    with pytest.raises(ValueError):
        p.join()
    p.terminate()
    p.join()


def test_context_manager_terminates(ctx):
    with ctx.Pool(2) as p:
        assert p.map_async(sqr, range(10)).get(10) == [x * x for x in range(10)]
    p.join()
    assert p._state == mpool.TERMINATE
    with pytest.raises(ValueError):
        p.map_async(sqr, [1])
    with pytest.raises(ValueError):
        with p:
            pass


def test_terminate_during_map_fails_pending_results(ctx):
    p = ctx.Pool(2)
    r = p.starmap_async(sqr, [(1, 10.0)] * 100, chunksize=1)
    time.sleep(0.2)
    start = time.monotonic()
    p.terminate()
    p.join()
    assert time.monotonic() - start < 10
    with pytest.raises(WorkerLostError):
        r.get(timeout=5)


def test_maxtasksperchild_replaces_workers(ctx):
    p = ctx.Pool(2, maxtasksperchild=2)
    try:
        first = sorted(w.pid for w in p._pool)
        pids = p.map(getpid, range(8), chunksize=1)
        # every worker ran at most two tasks
        counts = {pid: pids.count(pid) for pid in set(pids)}
        assert max(counts.values()) <= 2
        assert len(counts) >= 4
        assert [r.get(10) for r in
                [p.apply_async(sqr, (i,)) for i in range(4)]] == \
            [i * i for i in range(4)]
        assert len(p._pool) == 2
        assert sorted(w.pid for w in p._pool) != first
    finally:
        p.close()
        p.join()


def test_maxtasksperchild_early_close(ctx):
    p = ctx.Pool(2, maxtasksperchild=1)
    results = [p.apply_async(sqr, (i, 0.05)) for i in range(4)]
    p.close()
    p.join()
    assert [r.get(0) for r in results] == [i * i for i in range(4)]


def test_initializer(ctx):
    with ctx.Pool(2, initializer=set_global, initargs=('ready',)) as p:
        assert p.map(get_global, range(4)) == ['ready'] * 4
    p.join()


@pytest.mark.parametrize('init', [failing_initializer, exiting_initializer],
                         ids=['raises', 'exits'])
def test_initializer_failure_fails_tasks(ctx, init, capfd):
    p = ctx.Pool(2, initializer=init)
    try:
        r = p.apply_async(sqr, (2,))
        expected = ValueError if init is failing_initializer else WorkerLostError
        with pytest.raises(expected):
            r.get(timeout=20)
        # later submissions fail at once, nothing hangs
        with pytest.raises(expected):
            p.map(sqr, range(3))
    finally:
        p.terminate()
        p.join()


def test_release_task_refs(pool):
    objs = [Counted() for _ in range(10)]
    refs = [weakref.ref(o) for o in objs]
    pool.map(identity, objs)
    del objs
    gc.collect()
    assert set(r() for r in refs) == {None}


class Counted:
    pass


def test_resource_warning_when_collected_running(ctx):
    p = ctx.Pool(1)
    p.terminate()
    p.join()
    p._state = mpool.RUN
    with pytest.warns(ResourceWarning, match='unclosed running multiprocessing pool'):
        p = None
        gc.collect()


def test_unclosed_pool_collected_stops_workers(ctx):
    p = ctx.Pool(1)
    proc = p._pool[0]
    with pytest.warns(ResourceWarning):
        del p
        gc.collect()
    proc.join(10)
    assert not proc.is_alive()


def test_nested_pool_refused_clearly(pool):
    with pytest.raises(AssertionError, match='daemonic processes'):
        pool.apply(make_pool)


def make_pool():
    p = multiprocessing_c.Pool(1)
    p.terminate()


def test_start_failure_does_not_leak_processes():
    from unittest import mock
    made = []

    class FailingProcess:
        def __init__(self, **kwargs):
            self.name = 'Fake Process'
            self.state = None
            made.append(self)

        def start(self):
            if len(made) > 3:
                raise OSError('induced')
            self.state = 'started'

        def terminate(self):
            self.state = 'stopping'

        def join(self, timeout=None):
            if self.state == 'stopping':
                self.state = 'stopped'

        def is_alive(self):
            return self.state in ('started', 'stopping')

    with pytest.raises(OSError, match='induced'):
        mpool.Pool(5, context=mock.MagicMock(Process=FailingProcess))
    assert not any(p.is_alive() for p in made)


def test_atexit_with_unclosed_pool(tmp_path):
    from testutil import run_python, write_script
    script = write_script(tmp_path / 'unclosed.py', '''
        from multiprocessing_c import Pool
        class A:
            def __init__(self):
                self.pool = Pool(processes=1)
        def main():
            global problem
            problem = A()
            print(problem.pool.map(float, tuple(range(4))))
        if __name__ == "__main__":
            main()
        ''')
    r = run_python([script], timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '[0.0, 1.0, 2.0, 3.0]'


def test_default_size_follows_the_running_python(tmp_path):
    # 3.13 sizes Pool and ProcessPoolExecutor by os.process_cpu_count()
    # (the CPUs this process may use), earlier versions by os.cpu_count().
    from testutil import run_python, write_script
    script = write_script(tmp_path / 'size.py', '''
        import os
        from multiprocessing_c import Pool
        from multiprocessing_c.futures import ProcessPoolExecutor
        if __name__ == "__main__":
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
            with Pool() as p:
                print(p._processes)
            e = ProcessPoolExecutor()
            print(e._max_workers)
            e.shutdown()
        ''')
    r = run_python([script], timeout=60)
    assert r.returncode == 0, r.stderr
    expected = 1 if sys.version_info >= (3, 13) else os.cpu_count()
    assert r.stdout.split() == [str(expected)] * 2


def test_many_tiny_items(ctx):
    with ctx.Pool(2) as p:
        assert p.map(abs, range(-50000, 50000)) == [abs(i) for i in range(-50000, 50000)]
    p.join()

# ---------------------------------------------------------- ThreadPool


def test_threadpool_api():
    with mpool.ThreadPool(3) as p:
        assert p.map(sqr, range(10)) == [x * x for x in range(10)]
        assert p.apply(mul, (3, 4)) == 12
        assert list(p.imap(sqr, (i for i in range(5)))) == [0, 1, 4, 9, 16]
        assert sorted(p.imap_unordered(sqr, range(5), 2)) == [0, 1, 4, 9, 16]
        assert p.starmap(mul, [(1, 2), (3, 4)]) == [2, 12]
        lam = p.apply(lambda: 42)   # no pickling with threads
        assert lam == 42
        with pytest.raises(RuntimeError) as info:
            p.apply(raise_runtime)
        assert info.value.__cause__ is None
        assert len(p._pool) == 3
        assert isinstance(p, mpool.Pool)
    p.join()


def test_threadpool_close_join_initializer():
    seen = []
    p = mpool.ThreadPool(2, initializer=seen.append, initargs=(1,))
    rs = [p.apply_async(sqr, (i, 0.01)) for i in range(10)]
    p.close()
    p.join()
    assert [r.get(0) for r in rs] == [i * i for i in range(10)]
    assert seen == [1, 1]
    assert not any(t.is_alive() for t in p._pool)


def test_threadpool_terminate_fails_pending():
    p = mpool.ThreadPool(1)
    ev = threading.Event()
    started = threading.Event()

    def blocker():
        started.set()
        return ev.wait(10)
    first = p.apply_async(blocker)
    later = p.apply_async(sqr, (2,))
    assert started.wait(10)
    p.terminate()
    p.join()
    ev.set()
    # terminate() settles everything pending, the running call included
    # (a thread cannot be stopped; its late result is dropped)
    for r in (first, later):
        with pytest.raises(WorkerLostError):
            r.get(5)


def test_threadpool_refuses_task_timeout():
    with mpool.ThreadPool(1) as p:
        with pytest.raises(ValueError):
            p.apply_async(sqr, (1,), timeout=1)
    p.join()


def test_task_queued_behind_a_dying_one_still_runs(ctx):
    # A worker may hold a second small task in its pipe; if it dies, that
    # task never started and runs elsewhere instead of being lost.
    with ctx.Pool(1) as p:
        p.apply(sqr, (1,))
        doomed = p.apply_async(exit_now, (5,))
        queued = [p.apply_async(sqr, (i,)) for i in range(3)]
        with pytest.raises(WorkerLostError):
            doomed.get(timeout=20)
        assert [r.get(timeout=20) for r in queued] == [0, 1, 4]
    p.join()


def test_long_line_of_tiny_tasks_behind_a_dying_one(ctx):
    # Quick tasks make a worker hold many in its pipe; when it dies, the
    # one it ran fails and every one queued behind it runs elsewhere.
    with ctx.Pool(1) as p:
        assert sum(p.imap_unordered(sqr, range(500))) == sum(i * i for i in range(500))
        doomed = p.apply_async(exit_now, (5,))
        queued = [p.apply_async(sqr, (i,)) for i in range(100)]
        with pytest.raises(WorkerLostError):
            doomed.get(timeout=20)
        assert [r.get(timeout=20) for r in queued] == [i * i for i in range(100)]
    p.join()


@pytest.mark.parametrize('seq', [range(1000), range(-7, 300, 3), range(50, 0, -2),
                                 range(0), range(5)])
def test_map_over_a_range(pool, seq):
    # Ranges travel as range slices: the results are map()'s all the same.
    expected = [x * x for x in seq]
    assert pool.map(sqr, seq) == expected
    assert pool.map(sqr, seq, chunksize=7) == expected
    assert pool.map_async(sqr, seq, 1).get(timeout=20) == expected
    if len(seq):
        with pytest.raises(TypeError):
            pool.starmap(mul, seq)       # ints are not argument tuples


def test_large_tasks_and_results_both_ways(ctx):
    # Big messages in both directions at once must not deadlock the
    # handler and a worker against each other.
    big = b'x' * 300000
    with ctx.Pool(2) as p:
        out = p.map(identity, [big] * 12, chunksize=1)
        assert out == [big] * 12
        rs = [p.apply_async(identity, (big + bytes([i]),)) for i in range(8)]
        assert [r.get(timeout=20)[-1] for r in rs] == list(range(8))
    p.join()


def test_stdlib_pool_program_under_runner(tmp_path, start_method):
    from testutil import run_python, write_script
    script = write_script(tmp_path / 'pool_prog.py', '''
        import multiprocessing, os, sys
        from multiprocessing.pool import ThreadPool

        def sqr(x):
            return x * x

        def die():
            os._exit(4)

        if __name__ == '__main__':
            multiprocessing.set_start_method(sys.argv[1])
            with multiprocessing.Pool(2) as p:
                print(type(p).__module__, p.map(sqr, range(5)))
                try:
                    p.apply(die)
                except Exception as e:
                    print(type(e).__name__, e.exitcode)
            with ThreadPool(2) as t:
                print(t.map(sqr, range(3)))
        ''')
    r = run_python(['-m', 'multiprocessing_c', script, start_method],
                   cwd=str(tmp_path), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split('\n')[:3] == [
        'multiprocessing_c.pool [0, 1, 4, 9, 16]', 'WorkerLostError 4',
        '[0, 1, 4]']


def test_terminate_with_a_large_backlog_is_prompt(ctx):
    # CPython's test_terminate; it once caught a lost wakeup here.
    for _ in range(3):
        p = ctx.Pool(3)
        p.map_async(time.sleep, [60] * 10000, chunksize=1)
        start = time.monotonic()
        p.terminate()
        p.join()
        assert time.monotonic() - start < 10


def test_threadpool_terminate_with_backlog_is_prompt():
    p = mpool.ThreadPool(3)
    r = p.map_async(time.sleep, [2] * 1000, chunksize=1)
    start = time.monotonic()
    p.terminate()
    p.join()
    assert time.monotonic() - start < 1.5
    with pytest.raises(WorkerLostError):
        r.get(1)
