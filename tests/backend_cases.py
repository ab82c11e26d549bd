"""What Pool(..., backend=ENGINE) and the executor must do on any remote
engine, written once for test_backend_ray.py and test_backend_dask.py.

Not a test module itself: each engine's module imports the tests and the
``pool`` fixture from here by name, after skipping when its extra is not
installed, and provides the fixtures they take:

``backend``          what ``backend=`` is given (``'ray'``, a dask Client)
``backend_name``     the engine's name (``'ray'``, ``'dask'``)
``backend_address``  the ``--pool-backend`` value naming the running cluster

The functions run on the workers live here too (the workers import this
module by name, as they did the test modules)."""
import os
import time

import pytest

import multiprocessing_c
from multiprocessing_c import pool as mpc_pool
from multiprocessing_c.backends import RefusedArgument
from multiprocessing_c.futures import BrokenProcessPool, ProcessPoolExecutor
from testutil import run_python, write_script


def descendants():
    # This process's descendants, less the resource trackers (ours and the
    # stdlib's), which live as long as this process by design.
    import psutil
    found = {}
    try:
        for p in psutil.Process().children(recursive=True):
            try:
                if 'resource_tracker' not in ' '.join(p.cmdline()):
                    found[p.pid] = p
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return found


def assert_none_left(before, engine):
    """Wait up to 30 s for the processes started since ``before`` to go;
    kill any left and fail naming them."""
    import psutil
    deadline = time.monotonic() + 30
    while True:
        left = {pid: p for pid, p in descendants().items()
                if pid not in before and p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for p in left.values():
        p.kill()
    assert not left, '%s left processes behind: %r' % (engine, [
        (p.pid, p.name()) for p in left.values()])


@pytest.fixture(scope='module')
def pool(backend):
    p = multiprocessing_c.Pool(2, initializer=init, initargs=('configured',),
                               backend=backend)
    yield p
    p.terminate()
    p.join()

# ------------------------------------------------ run on the workers


_SETTING = None


def init(value):
    global _SETTING
    _SETTING = value


def setting(x):
    return _SETTING, x


def sqr(x):
    return x * x


def mul(x, y):
    return x * y


def fail(x):
    raise ValueError('no good: %r' % (x,))


def fail_on_three(x):
    if x == 3:
        raise KeyError(x)
    return x


def nap(seconds):
    time.sleep(seconds)
    return seconds


def pid(_=None):
    return os.getpid()


def exit_now(_=None):
    os._exit(7)


def announce_and_sleep(path):
    with open(path, 'w') as f:
        f.write(str(os.getpid()))
    time.sleep(60)


def bad_init():
    raise RuntimeError('initializer broke')

# ------------------------------------------------------------ the tests


def test_pool_keeps_the_local_shape(pool, backend_name):
    assert isinstance(pool, mpc_pool.Pool)
    assert type(pool).__module__ == ('multiprocessing_c.backends.'
                                     + backend_name)
    assert pool._processes == 2
    assert pool._state == mpc_pool.RUN
    assert len(pool._pool) == 2
    assert isinstance(pool._cache, dict)
    pool._check_running()
    assert 'backend=' + backend_name in repr(pool)


def test_map_family(pool):
    assert pool.map(sqr, range(20)) == [x * x for x in range(20)]
    assert pool.map(sqr, range(20), chunksize=3) == [x * x for x in range(20)]
    assert pool.map(sqr, []) == []
    assert pool.starmap(mul, [(1, 2), (3, 4)]) == [2, 12]
    assert list(pool.imap(sqr, (x for x in range(10)))) == [
        x * x for x in range(10)]
    assert list(pool.imap(sqr, range(10), chunksize=4)) == [
        x * x for x in range(10)]
    assert sorted(pool.imap_unordered(sqr, range(10), chunksize=3)) == [
        x * x for x in range(10)]
    assert pool.apply(mul, (6, 7)) == 42
    assert pool.apply(mul, (), {'x': 2, 'y': 5}) == 10


def test_async_results_and_callbacks(pool):
    got = []
    r = pool.map_async(sqr, range(5), callback=got.append)
    assert r.get(timeout=60) == [0, 1, 4, 9, 16]
    assert r.ready() and r.successful()
    assert got == [[0, 1, 4, 9, 16]]
    r = pool.starmap_async(mul, [(2, 2)], callback=got.append)
    r.wait(60)
    assert r.get() == [4] and got[-1] == [4]
    errors = []
    r = pool.apply_async(fail, (1,), error_callback=errors.append)
    r.wait(60)
    assert r.ready() and not r.successful()
    assert isinstance(errors[0], ValueError)
    slow = pool.apply_async(nap, (1.5,))
    with pytest.raises(ValueError):
        slow.successful()                      # not ready yet
    with pytest.raises(multiprocessing_c.TimeoutError):
        slow.get(timeout=0.05)
    assert slow.get(timeout=60) == 1.5


def test_initializer_globals_are_seen_by_tasks(pool):
    assert pool.apply(setting, (1,)) == ('configured', 1)
    assert set(pool.map(setting, range(8), chunksize=1)) == {
        ('configured', x) for x in range(8)}


def test_task_error_carries_remote_traceback(pool):
    with pytest.raises(ValueError, match='no good') as info:
        pool.apply(fail, ('x',))
    cause = info.value.__cause__
    assert isinstance(cause, mpc_pool.RemoteTraceback)
    assert 'in fail' in cause.tb and 'ValueError' in cause.tb
    with pytest.raises(KeyError):
        pool.map(fail_on_three, range(6), chunksize=1)
    it = pool.imap(fail_on_three, range(6))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(KeyError):
        next(it)


def test_arguments_tied_to_this_machine_are_refused_at_once(pool):
    from multiprocessing_c import managers
    local = [multiprocessing_c.Queue(), multiprocessing_c.Lock(),
             multiprocessing_c.Value('i', 1),
             multiprocessing_c.RawArray('d', 3),
             multiprocessing_c.Pipe()[0]]
    with managers.SyncManager() as m:
        local.append(m.dict())
        for obj in local:
            with pytest.raises(RefusedArgument,
                               match='another machine') as info:
                pool.apply_async(sqr, (obj,))
            assert type(obj).__name__ in str(info.value)
            with pytest.raises(TypeError):
                pool.map(sqr, [1, obj])
        it = pool.imap(sqr, [local[0]])
        with pytest.raises(RefusedArgument):
            next(it)
    assert pool.apply(sqr, (3,)) == 9          # the pool is unharmed
    before = set(pool._cache)
    with pytest.raises(RefusedArgument):
        pool.apply_async(sqr, (local[1],))
    assert set(pool._cache) == before          # nothing left pending


def test_unpicklable_argument_fails_in_get(pool):
    r = pool.apply_async(sqr, (x for x in ()),)
    with pytest.raises(TypeError):
        r.get(timeout=60)


def kill_a_busy_worker(pool, tmp_path):
    """A task whose worker exits fails with WorkerLostError; then a worker
    is SIGKILLed while running a task: returns its pid and that task's
    WorkerLostError. The engine's test checks what follows."""
    import signal
    with pytest.raises(mpc_pool.WorkerLostError, match='died'):
        pool.apply(exit_now)
    path = tmp_path / 'pid'
    r = pool.apply_async(announce_and_sleep, (str(path),))
    deadline = time.monotonic() + 60
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    victim = int(path.read_text())
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(mpc_pool.WorkerLostError) as info:
        r.get(timeout=60)
    return victim, info.value


def assert_pool_recovered(pool):
    assert pool.map(sqr, range(6)) == [0, 1, 4, 9, 16, 25]
    assert len(pool._pool) == 2
    assert pool.apply(setting, (0,)) == ('configured', 0)   # re-initialized


def test_initializer_failure_fails_tasks_without_hanging(backend):
    with multiprocessing_c.Pool(1, initializer=bad_init,
                                backend=backend) as p:
        with pytest.raises(RuntimeError, match='initializer broke') as info:
            p.apply_async(sqr, (2,)).get(timeout=60)
        assert isinstance(info.value.__cause__, mpc_pool.RemoteTraceback)


def test_close_join_and_terminate(backend):
    p = multiprocessing_c.pool.Pool(1, backend=backend)
    results = [p.apply_async(nap, (0.2,)) for _ in range(4)]
    p.close()
    with pytest.raises(ValueError, match='not running'):
        p.apply(sqr, (1,))
    p.join()
    assert [r.get(0) for r in results] == [0.2] * 4
    assert not any(w.is_alive() for w in p._pool)
    p = multiprocessing_c.Pool(1, backend=backend)
    pending = p.map_async(nap, [30, 30])
    p.terminate()
    p.join()
    with pytest.raises(mpc_pool.WorkerLostError):
        pending.get(timeout=30)


def assert_environment_variable_picks(backend_name, value, monkeypatch):
    monkeypatch.setenv('MULTIPROCESSING_C_POOL_BACKEND', value)
    with multiprocessing_c.Pool(1) as p:
        assert type(p).__module__ == ('multiprocessing_c.backends.'
                                      + backend_name)
        assert p.apply(sqr, (5,)) == 25
    with multiprocessing_c.pool.ThreadPool(1) as t:    # threads stay local
        assert type(t) is mpc_pool.ThreadPool


def test_executor(backend):
    with ProcessPoolExecutor(2, initializer=init, initargs=('ex',),
                             backend=backend) as ex:
        assert ex.submit(mul, 3, 4).result(60) == 12
        assert list(ex.map(sqr, range(7), chunksize=3)) == [
            x * x for x in range(7)]
        assert ex.submit(setting, 1).result(60) == ('ex', 1)
        with pytest.raises(ValueError):
            ex.submit(fail, 1).result(60)
        with pytest.raises(RefusedArgument):
            ex.submit(sqr, multiprocessing_c.Lock())
        with pytest.raises(BrokenProcessPool):
            ex.submit(exit_now).result(60)
        with pytest.raises(BrokenProcessPool):
            ex.submit(sqr, 1)


SCRIPT = '''
import multiprocessing, os, sys

LIMIT = None

def setup(limit):
    global LIMIT
    LIMIT = limit

def clip(x):
    return min(x, LIMIT)

if __name__ == '__main__':
    with multiprocessing.Pool(2, initializer=setup, initargs=(3,)) as p:
        print(type(p).__module__)
        print(p.map(clip, range(6)))
        print(sorted(p.imap_unordered(clip, range(6))))
        try:
            p.apply(clip, (multiprocessing.Queue(),))
        except TypeError as e:
            print('refused:', 'another machine' in str(e))
'''


def test_unchanged_script_runs_on_the_cluster(backend_name, backend_address,
                                              tmp_path):
    script = write_script(tmp_path / 'job.py', SCRIPT)
    r = run_python(['-m', 'multiprocessing_c', '--pool-backend',
                    backend_address, script], timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[:4] == ['multiprocessing_c.backends.' + backend_name,
                         '[0, 1, 2, 3, 3, 3]', '[0, 1, 2, 3, 3, 3]',
                         'refused: True'], r.stdout
