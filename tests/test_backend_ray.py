"""Pool(..., backend="ray") and the executor on a real local Ray cluster
(ray.init(num_cpus=2), started once for the module and stopped after,
with none of its daemons left): the engine-independent tests of
backend_cases.py (every Pool method, AsyncResult, errors with their remote
traceback, refused arguments, initializer globals, an unchanged script
under ``python -m multiprocessing_c --pool-backend ray:ADDRESS``), then
maxtasksperchild, per-task timeouts and a killed worker."""
import gc
import os
import signal
import warnings

import pytest

pytest.register_assert_rewrite('backend_cases')

ray = pytest.importorskip(
    'ray', reason="the ray extra is not installed "
                  "(pip install 'multiprocessing_c[ray]')")
pytest.importorskip('psutil')

import multiprocessing_c  # noqa: E402
from testutil import ROOT, TESTS  # noqa: E402
from backend_cases import (  # noqa: E402,F401  (pool: a fixture)
    assert_environment_variable_picks,
    assert_none_left,
    assert_pool_recovered,
    descendants,
    kill_a_busy_worker,
    nap,
    pid,
    pool,
    sqr,
)
# The shared tests, collected in the order they are named here.
from backend_cases import (  # noqa: E402,F401
    test_pool_keeps_the_local_shape,
    test_map_family,
    test_async_results_and_callbacks,
    test_initializer_globals_are_seen_by_tasks,
    test_task_error_carries_remote_traceback,
    test_arguments_tied_to_this_machine_are_refused_at_once,
    test_unpicklable_argument_fails_in_get,
    test_initializer_failure_fails_tasks_without_hanging,
    test_close_join_and_terminate,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope='module')
def cluster():
    before = set(descendants())
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
        assert_none_left(before, 'Ray')


@pytest.fixture(scope='module')
def backend(cluster):
    return 'ray'


@pytest.fixture(scope='module')
def backend_name():
    return 'ray'


@pytest.fixture(scope='module')
def backend_address(cluster):
    return 'ray:' + cluster


def test_lost_worker_gives_worker_lost_error_and_is_replaced(pool, tmp_path):
    victim, error = kill_a_busy_worker(pool, tmp_path)
    assert error.pid == victim
    assert_pool_recovered(pool)


def test_maxtasksperchild_replaces_workers(cluster):
    with multiprocessing_c.Pool(1, maxtasksperchild=2, backend='ray') as p:
        pids = [p.apply(pid) for _ in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3], pids


def test_per_task_timeout_kills_the_worker(pool):
    with pytest.raises(multiprocessing_c.TimeoutError, match='timeout'):
        pool.apply_async(nap, (60,), timeout=1).get(60)
    assert pool.apply(sqr, (4,)) == 16


def test_environment_variable_picks_the_backend(cluster, monkeypatch):
    assert_environment_variable_picks('ray', 'ray', monkeypatch)


# Last: the executor's initializer runs on the same workers as the
# module's pool's and sets the same global, and its task kills one.
from backend_cases import (  # noqa: E402,F401
    test_executor,
    test_unchanged_script_runs_on_the_cluster,
)
