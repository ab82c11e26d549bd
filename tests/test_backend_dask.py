"""Pool(..., backend="dask") and the executor on a real Dask LocalCluster
(two worker processes, one thread each, started once for the module and
closed after, with none of its processes left): the engine-independent
tests of backend_cases.py (every Pool method, AsyncResult, errors with
their remote traceback, refused arguments, initializer globals, an
unchanged script under ``python -m multiprocessing_c --pool-backend
dask:ADDRESS``), then a killed worker and what the backend refuses."""
import pytest

pytest.register_assert_rewrite('backend_cases')

distributed = pytest.importorskip(
    'distributed', reason="the dask extra is not installed "
                          "(pip install 'multiprocessing_c[dask]')")
pytest.importorskip('psutil')
import dask  # noqa: E402

import multiprocessing_c  # noqa: E402
from multiprocessing_c.futures import ProcessPoolExecutor  # noqa: E402
from backend_cases import (  # noqa: E402,F401  (pool: a fixture)
    assert_environment_variable_picks,
    assert_none_left,
    assert_pool_recovered,
    descendants,
    kill_a_busy_worker,
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
def client():
    before = set(descendants())
    # A worker that dies fails its task at once (the default retries it on
    # three more workers first).
    with dask.config.set({'distributed.scheduler.allowed-failures': 0}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True,
            dashboard_address=None)
    c = distributed.Client(cluster, set_as_default=False)
    try:
        yield c
    finally:
        c.close()
        cluster.close()
        assert_none_left(before, 'Dask')


@pytest.fixture(scope='module')
def backend(client):
    return client


@pytest.fixture(scope='module')
def backend_name():
    return 'dask'


@pytest.fixture(scope='module')
def backend_address(client):
    return 'dask:' + client.scheduler.address


def test_lost_worker_gives_worker_lost_error_and_is_replaced(client, pool,
                                                           tmp_path):
    victim, error = kill_a_busy_worker(pool, tmp_path)
    assert 'died while running this task' in str(error)
    client.wait_for_workers(2, timeout=60)     # the nannies restarted them
    assert_pool_recovered(pool)


def test_what_dask_workers_cannot_do_is_refused(client, pool):
    with pytest.raises(ValueError, match='maxtasksperchild'):
        multiprocessing_c.Pool(1, maxtasksperchild=2, backend=client)
    with pytest.raises(ValueError, match='timeout'):
        pool.apply_async(sqr, (1,), timeout=5)
    with pytest.raises(ValueError, match='max_tasks_per_child'):
        ProcessPoolExecutor(1, max_tasks_per_child=1, backend=client)


def test_processes_defaults_to_the_cluster_threads(client):
    with multiprocessing_c.Pool(backend=client) as p:
        assert p._processes == 2
        assert p.map(sqr, range(4)) == [0, 1, 4, 9]


def test_environment_variable_picks_the_backend(backend_address,
                                                monkeypatch):
    assert_environment_variable_picks('dask', backend_address, monkeypatch)


# Last: the executor's initializer runs on the same workers as the
# module's pool's and sets the same global, and its task kills one.
from backend_cases import (  # noqa: E402,F401
    test_executor,
    test_unchanged_script_runs_on_the_cluster,
)
