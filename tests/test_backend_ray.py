"""Pool(..., backend="ray") and the executor on a real local Ray cluster
(ray.init(num_cpus=2), started once for the module and stopped after,
with none of its daemons left): every Pool method, AsyncResult, errors
with their remote traceback, refused arguments, initializer globals,
maxtasksperchild, a killed worker, and an unchanged script under
``python -m multiprocessing_c --pool-backend ray:ADDRESS``."""
import gc
import os
import signal
import time
import warnings

import pytest

ray = pytest.importorskip(
    'ray', reason="the ray extra is not installed "
                  "(pip install 'multiprocessing_c[ray]')")
psutil = pytest.importorskip('psutil')

import multiprocessing_c  # noqa: E402
from multiprocessing_c import pool as mpc_pool  # noqa: E402
from multiprocessing_c.backends import RefusedArgument  # noqa: E402
from multiprocessing_c.futures import (  # noqa: E402
    BrokenProcessPool, ProcessPoolExecutor)
from testutil import ROOT, TESTS, run_python, write_script  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def _descendants():
    # This process's descendants, less the resource trackers (ours and the
    # stdlib's), which live as long as this process by design.
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


@pytest.fixture(scope='module')
def cluster():
    before = set(_descendants())
    # ray.init installs a SIGTERM handler (sys.exit) that ray.shutdown
    # leaves behind; later tests fork children that must die by SIGTERM.
    handlers = {sig: signal.getsignal(sig)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    for attempt in (1, 2):
        try:
            with warnings.catch_warnings():
                # Ray's own warnings at start (2.51, the last release for
                # Python 3.9, warns of future changes and leaves files of
                # its own to the garbage collector) are not ours to fail on.
                warnings.simplefilter('ignore')
                ray.init(num_cpus=2, include_dashboard=False,
                         log_to_driver=False,
                         runtime_env={'env_vars': {
                             'PYTHONPATH': os.pathsep.join([TESTS, ROOT])}})
                gc.collect()
            break
        except Exception:
            # Ray gives its raylet 30 s to register; a machine busy enough
            # misses that: once more.
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        with warnings.catch_warnings():
            # Ray 2.51 drops its Popen objects of daemons still exiting.
            warnings.simplefilter('ignore', ResourceWarning)
            ray.shutdown()
            gc.collect()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        # gcs_server, raylet and the workers are daemons of their own:
        # every one started here must be gone.
        deadline = time.monotonic() + 30
        while True:
            left = {pid: p for pid, p in _descendants().items()
                    if pid not in before and p.is_running()
                    and p.status() != psutil.STATUS_ZOMBIE}
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for p in left.values():
            p.kill()
        assert not left, 'Ray left processes behind: %r' % [
            (p.pid, p.name()) for p in left.values()]


@pytest.fixture(scope='module')
def pool(cluster):
    p = multiprocessing_c.Pool(2, initializer=init, initargs=('configured',),
                               backend='ray')
    yield p
    p.terminate()
    p.join()

# ------------------------------------------------ run on the Ray workers


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


def test_pool_keeps_the_local_shape(pool):
    assert isinstance(pool, mpc_pool.Pool)
    assert type(pool).__module__ == 'multiprocessing_c.backends.ray'
    assert pool._processes == 2
    assert pool._state == mpc_pool.RUN
    assert len(pool._pool) == 2
    assert isinstance(pool._cache, dict)
    pool._check_running()
    assert 'backend=ray' in repr(pool)


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


def test_lost_worker_gives_worker_lost_error_and_is_replaced(pool, tmp_path):
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
    assert info.value.pid == victim
    assert pool.map(sqr, range(6)) == [0, 1, 4, 9, 16, 25]
    assert len(pool._pool) == 2
    assert pool.apply(setting, (0,)) == ('configured', 0)   # re-initialized


def test_maxtasksperchild_replaces_workers(cluster):
    with multiprocessing_c.Pool(1, maxtasksperchild=2, backend='ray') as p:
        pids = [p.apply(pid) for _ in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3], pids


def test_per_task_timeout_kills_the_worker(pool):
    with pytest.raises(multiprocessing_c.TimeoutError, match='timeout'):
        pool.apply_async(nap, (60,), timeout=1).get(60)
    assert pool.apply(sqr, (4,)) == 16


def test_initializer_failure_fails_tasks_without_hanging(cluster):
    with multiprocessing_c.Pool(1, initializer=bad_init, backend='ray') as p:
        with pytest.raises(RuntimeError, match='initializer broke') as info:
            p.apply_async(sqr, (2,)).get(timeout=60)
        assert isinstance(info.value.__cause__, mpc_pool.RemoteTraceback)


def test_close_join_and_terminate(cluster):
    p = multiprocessing_c.pool.Pool(1, backend='ray')
    results = [p.apply_async(nap, (0.2,)) for _ in range(4)]
    p.close()
    with pytest.raises(ValueError, match='not running'):
        p.apply(sqr, (1,))
    p.join()
    assert [r.get(0) for r in results] == [0.2] * 4
    assert not any(w.is_alive() for w in p._pool)
    p = multiprocessing_c.Pool(1, backend='ray')
    pending = p.map_async(nap, [30, 30])
    p.terminate()
    p.join()
    with pytest.raises(mpc_pool.WorkerLostError):
        pending.get(timeout=30)


def test_environment_variable_picks_the_backend(cluster, monkeypatch):
    monkeypatch.setenv('MULTIPROCESSING_C_POOL_BACKEND', 'ray')
    with multiprocessing_c.Pool(1) as p:
        assert type(p).__module__ == 'multiprocessing_c.backends.ray'
        assert p.apply(sqr, (5,)) == 25
    with multiprocessing_c.pool.ThreadPool(1) as t:    # threads stay local
        assert type(t) is mpc_pool.ThreadPool


def test_executor(cluster):
    with ProcessPoolExecutor(2, initializer=init, initargs=('ex',),
                             backend='ray') as ex:
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


def test_unchanged_script_runs_on_the_cluster(cluster, tmp_path):
    script = write_script(tmp_path / 'job.py', SCRIPT)
    r = run_python(['-m', 'multiprocessing_c', '--pool-backend',
                    'ray:' + cluster, script], timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[:4] == ['multiprocessing_c.backends.ray',
                         '[0, 1, 2, 3, 3, 3]', '[0, 1, 2, 3, 3, 3]',
                         'refused: True'], r.stdout
