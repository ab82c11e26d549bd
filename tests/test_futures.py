"""multiprocessing_c.futures.ProcessPoolExecutor: the concurrent.futures
API under fork and spawn, BrokenProcessPool instead of hangs, and
max_tasks_per_child with a backlog (CPython issue 115634 deadlocked
there); plus the stdlib's executor on our contexts under the runner."""
import concurrent.futures as cf
import os
import sys
import time

import pytest

from multiprocessing_c.futures import BrokenProcessPool, ProcessPoolExecutor
from testutil import run_python, write_script


def sqr(x, wait=0.0):
    time.sleep(wait)
    return x * x


def mul(x, y):
    return x * y


def getpid(_=None):
    return os.getpid()


def raise_value_error():
    raise ValueError('boom')  # marker comment


def exit_now(code=3):
    os._exit(code)


_INIT = None


def init(value):
    global _INIT
    _INIT = value


def get_init():
    return _INIT


def bad_init():
    raise OSError('init failed')


@pytest.fixture
def executor(ctx):
    ex = ProcessPoolExecutor(2, mp_context=ctx)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


def test_submit_and_result(executor):
    f = executor.submit(sqr, 7)
    assert f.result(timeout=20) == 49
    assert f.done() and not f.cancelled()
    assert executor.submit(mul, 6, y=7).result(20) == 42


def test_exception_with_remote_traceback(executor):
    f = executor.submit(raise_value_error)
    with pytest.raises(ValueError, match='boom') as info:
        f.result(20)
    assert 'marker comment' in str(info.value.__cause__)


def test_map_with_chunksize(executor):
    assert list(executor.map(sqr, range(20))) == [x * x for x in range(20)]
    assert list(executor.map(mul, range(30), range(30), chunksize=7)) == \
        [x * x for x in range(30)]
    assert list(executor.map(sqr, [])) == []
    with pytest.raises(ValueError):
        executor.map(sqr, [1], chunksize=0)


def test_map_timeout(executor):
    it = executor.map(sqr, [1, 2], [2.0, 2.0], timeout=0.2)
    with pytest.raises(cf.TimeoutError):
        list(it)


def test_as_completed_and_wait(executor):
    fs = [executor.submit(sqr, i) for i in range(8)]
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=20)) == \
        [i * i for i in range(8)]
    done, not_done = cf.wait(fs, timeout=20)
    assert len(done) == 8 and not not_done


def test_unpicklable_argument(executor):
    f = executor.submit(sqr, lambda: 1)
    with pytest.raises(Exception):
        f.result(20)
    assert executor.submit(sqr, 2).result(20) == 4


def test_shutdown_refuses_new_work(ctx):
    ex = ProcessPoolExecutor(1, mp_context=ctx)
    assert ex.submit(sqr, 2).result(20) == 4
    ex.shutdown()
    with pytest.raises(RuntimeError, match='after shutdown'):
        ex.submit(sqr, 1)


def test_shutdown_cancel_futures(ctx):
    ex = ProcessPoolExecutor(1, mp_context=ctx)
    first = ex.submit(sqr, 1, 0.5)
    rest = [ex.submit(sqr, i) for i in range(20)]
    deadline = time.monotonic() + 20
    while not first.running() and not first.done():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.result(0) == 1
    assert any(f.cancelled() for f in rest)
    assert all(f.done() for f in rest)


def test_calls_behind_a_running_one_stay_cancellable(ctx):
    # However quick its earlier calls were, a worker holds at most one
    # call queued behind the one it runs: the others can be cancelled.
    ex = ProcessPoolExecutor(1, mp_context=ctx)
    try:
        assert [f.result(20) for f in [ex.submit(sqr, i) for i in range(200)]] \
            == [i * i for i in range(200)]
        first = ex.submit(sqr, 1, 1.0)
        rest = [ex.submit(sqr, i) for i in range(10)]
        cancelled = sum(f.cancel() for f in rest)
        assert cancelled >= len(rest) - 1
        assert first.result(20) == 1
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def test_shutdown_nowait_finishes_in_background(ctx):
    ex = ProcessPoolExecutor(2, mp_context=ctx)
    fs = [ex.submit(sqr, i, 0.05) for i in range(6)]
    ex.shutdown(wait=False)
    assert [f.result(20) for f in fs] == [i * i for i in range(6)]
    ex.shutdown(wait=True)


def test_context_manager_waits(ctx):
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        fs = [ex.submit(sqr, i, 0.05) for i in range(4)]
    assert all(f.done() for f in fs)


def test_initializer(ctx):
    with ProcessPoolExecutor(2, mp_context=ctx, initializer=init,
                             initargs=('hi',)) as ex:
        assert ex.submit(get_init).result(20) == 'hi'


def test_initializer_failure_breaks_pool(ctx):
    ex = ProcessPoolExecutor(2, mp_context=ctx, initializer=bad_init)
    try:
        f = ex.submit(sqr, 1)
        with pytest.raises(BrokenProcessPool):
            f.result(20)
        with pytest.raises(BrokenProcessPool):
            ex.submit(sqr, 1)
    finally:
        ex.shutdown()


def test_invalid_arguments():
    with pytest.raises(ValueError):
        ProcessPoolExecutor(0)
    with pytest.raises(TypeError):
        ProcessPoolExecutor(1, initializer=3)
    with pytest.raises(ValueError):
        ProcessPoolExecutor(1, max_tasks_per_child=0)
    with pytest.raises(TypeError):
        ProcessPoolExecutor(1, max_tasks_per_child='3')


def test_worker_death_breaks_pool_without_hanging(ctx):
    ex = ProcessPoolExecutor(2, mp_context=ctx)
    try:
        pending = [ex.submit(sqr, i, 0.3) for i in range(6)]
        f = ex.submit(exit_now, 9)
        with pytest.raises(BrokenProcessPool, match='exit code 9'):
            f.result(timeout=20)
        assert isinstance(BrokenProcessPool(), cf.BrokenExecutor)
        for p in pending:
            p.exception(timeout=20)    # each settles: result or broken
        with pytest.raises(BrokenProcessPool):
            ex.submit(sqr, 1)
    finally:
        ex.shutdown()


@pytest.mark.parametrize('n', [1, 2, 3])
def test_max_tasks_per_child_with_backlog(ctx, n):
    # CPython issue 115634: deadlocked for n > 1 with a backlog.
    with ProcessPoolExecutor(2, mp_context=ctx, max_tasks_per_child=n) as ex:
        futures = [ex.submit(getpid) for _ in range(2 * n + 3)]
        pids = [f.result(timeout=30) for f in futures]
    counts = {p: pids.count(p) for p in set(pids)}
    assert max(counts.values()) <= n
    assert len(counts) >= len(pids) // n


def test_default_context_with_max_tasks_is_spawn():
    ex = ProcessPoolExecutor(1, max_tasks_per_child=1)
    try:
        assert ex._mp_context.get_start_method() == 'spawn'
        assert ex.submit(sqr, 3).result(30) == 9
    finally:
        ex.shutdown()


def test_package_does_not_import_stdlib_multiprocessing():
    r = run_python(['-c', 'import sys, multiprocessing_c.futures\n'
                    'print([m for m in sys.modules if m.startswith("multiprocessing")'
                    ' and not m.startswith("multiprocessing_c")])'])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '[]'


STDLIB_EXECUTOR_SCRIPT = '''
    import os, sys
    import concurrent.futures as cf
    import multiprocessing_c

    def sqr(x):
        return x * x

    def die():
        os._exit(3)

    if __name__ == '__main__':
        import multiprocessing
        print('aliased', multiprocessing is multiprocessing_c)
        method = sys.argv[1]
        ctx = multiprocessing_c.get_context(method)
        with cf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
            print(ex.submit(sqr, 4).result(30), list(ex.map(sqr, range(5), chunksize=2)))
            try:
                ex.submit(sqr, lambda: 1).result(30)
            except Exception as e:
                print('unpicklable', type(e).__name__)
        ex = cf.ProcessPoolExecutor(2, mp_context=ctx)
        try:
            ex.submit(die).result(30)
        except cf.process.BrokenProcessPool:
            print('broken')
        ex.shutdown()
    '''


def test_stdlib_executor_under_runner(tmp_path, start_method):
    script = write_script(tmp_path / 'cf_runner.py', STDLIB_EXECUTOR_SCRIPT)
    r = run_python(['-m', 'multiprocessing_c', script, start_method],
                   cwd=str(tmp_path), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split('\n')[:4] == ['aliased True', '16 [0, 1, 4, 9, 16]',
                                        'unpicklable PicklingError', 'broken']


def test_stdlib_executor_plain_script(tmp_path, start_method):
    # Without the runner: works under fork, else fails at once pointing
    # at multiprocessing_c.futures.
    script = write_script(tmp_path / 'cf_plain.py', STDLIB_EXECUTOR_SCRIPT)
    start = time.monotonic()
    r = run_python([script, start_method], cwd=str(tmp_path), timeout=60)
    assert time.monotonic() - start < 30
    if start_method == 'fork':
        assert r.returncode == 0, r.stderr
        assert r.stdout.split('\n')[:4] == ['aliased False',
                                            '16 [0, 1, 4, 9, 16]',
                                            'unpicklable PicklingError',
                                            'broken']
    else:
        assert r.returncode != 0
        assert 'multiprocessing_c.futures.ProcessPoolExecutor' in r.stderr
