"""Pool and ProcessPoolExecutor on a Dask distributed cluster.

Tasks go to the cluster through a ``distributed.Client`` as plain Dask
tasks: the scheduler places them, at most two per pool worker in flight,
so ``processes`` still bounds how much of the cluster one pool uses.  The
initializer runs once in each Dask worker process, before the first task
of the pool runs there, in the namespace the pool's tasks then see.

Dask workers are the cluster's, not the pool's: maxtasksperchild and the
per-task timeout (which both need a worker that the pool may kill) are
refused.  A task whose worker dies fails with WorkerLostError once the
scheduler gives up on it (KilledWorker); a LocalCluster started here gives
up at the first death, as a local pool does.
"""
import atexit
import os
import threading
import uuid

import cloudpickle as _cloudpickle
import dask
import distributed

from .. import pool as _pool
from . import _common, parse, from_environment

__all__ = ['Pool', 'ProcessPoolExecutor', 'get_client']

_dumps = _common.make_dumps(_cloudpickle, 'dask')
_lock = threading.Lock()
_own = {}            # the LocalCluster and Client started here, if any

try:
    _KilledWorker = distributed.KilledWorker
except AttributeError:                      # pragma: no cover
    from distributed.scheduler import KilledWorker as _KilledWorker


def get_client(backend=None):
    """The Client for `backend`: the given one, a new one for an address,
    this process's current Client, or one on a LocalCluster started here
    (one worker process per CPU, one thread each), kept until exit."""
    spec = backend if backend is not None else from_environment()
    name, address = parse(spec) if spec else ('dask', None)
    if name != 'dask':
        raise ValueError('%r is not a dask backend' % (spec,))
    if isinstance(address, distributed.Client):
        return address, False
    if address is not None:
        return distributed.Client(address, set_as_default=False), True
    try:
        return distributed.get_client(), False
    except ValueError:
        pass
    with _lock:
        if 'client' not in _own:
            # A worker that dies fails its task at once, as in a local pool.
            with dask.config.set({'distributed.scheduler.allowed-failures': 0}):
                cluster = distributed.LocalCluster(
                    n_workers=os.cpu_count() or 1, threads_per_worker=1,
                    processes=True, dashboard_address=None)
            _own['cluster'] = cluster
            _own['client'] = distributed.Client(cluster,
                                                set_as_default=False)
            atexit.register(_close_own)
        return _own['client'], False


def _close_own():
    client = _own.pop('client', None)
    cluster = _own.pop('cluster', None)
    for obj in (client, cluster):
        if obj is not None:
            try:
                obj.close()
            except Exception:
                pass


def cluster_threads(client):
    workers = client.scheduler_info().get('workers', {})
    return max(1, sum(w.get('nthreads', 1) for w in workers.values()))

# ------------------------------------------------ on a Dask worker

_namespaces = {}     # pool token -> the namespace its tasks share
_initialized = {}    # pool token -> None, or the initializer's error
_worker_lock = threading.Lock()


def _run_task(token, init_payload, data):
    ns = _namespaces.get(token)
    if ns is None or token not in _initialized:
        with _worker_lock:
            ns = _namespaces.setdefault(token, {})
            if token not in _initialized:
                _initialized[token] = _common.run_initializer(
                    init_payload, ns, _cloudpickle.dumps)
    error = _initialized[token]
    if error is not None:
        return False, error
    return True, _common.run_payload(data, ns, _cloudpickle.dumps)


def _forget(token):
    _namespaces.pop(token, None)
    _initialized.pop(token, None)

# ------------------------------------------------ in this program


class _DaskDispatcher(_common.RemoteDispatcher):
    engine = 'dask'

    def __init__(self, *args, client, owned, **kwds):
        super().__init__(*args, **kwds)
        if self._maxtasks is not None:
            raise ValueError('the dask backend does not support '
                             'maxtasksperchild: Dask workers belong to the '
                             'cluster, not to the pool')
        self._client = client
        self._owned = owned
        self._token = 'mpc-pool-' + uuid.uuid4().hex
        self._fetched = {}

    def _check_timeout_supported(self):
        raise ValueError('the dask backend does not support a per-task '
                         'timeout: it cannot kill a task on a Dask worker')

    def _start_slot(self, slot):
        self._events.put(('ready', slot, None))

    def _fetch_ready(self, fut):
        return None, None, None

    def _send(self, slot, data):
        # The initializer travels with each task (it runs once per worker):
        # scattered data would be lost with the worker that held it.
        return self._client.submit(_run_task, self._token,
                                   self._init_payload, data, pure=False)

    def _watch(self, fut, event):
        put = self._events.put
        fut.add_done_callback(lambda f: put(event))

    # Dask's round trip is long: more tasks wait at the scheduler per
    # worker, so that workers need not wait for it between tasks.
    depth = 8

    def _prefetch(self, futs):
        # One gather for every result that came in together, rather than
        # a fetch from a worker for each.
        done = [f for f in futs if f.status == 'finished']
        self._fetched = {}
        if len(done) > 1:
            try:
                values = self._client.gather(done)
            except Exception:
                return
            self._fetched = {f.key: v for f, v in zip(done, values)}

    def _fetch(self, fut):
        try:
            if fut.key in self._fetched:
                ok, data = self._fetched.pop(fut.key)
            else:
                ok, data = fut.result()
        except _KilledWorker as e:
            detail = ' '.join(str(e).split())
            raise _common.WorkerLost(
                detail.split(' Inspecting worker logs')[0][:400]) from e
        if not ok:
            raise _common.InitFailed(_common.loads_result(data))
        return data

    # A dead Dask worker fails the task it ran; the pool's slot lives on.
    lost_kills_slot = False

    def _stop_slot(self, slot, graceful):
        for _task, fut in slot.inflight:
            try:
                fut.cancel()
            except Exception:
                pass

    def _shutdown(self):
        client = self._client
        if client is None:
            return
        self._client = None
        try:
            client.run(_forget, self._token)
        except Exception:
            pass
        if self._owned:
            client.close()


class Pool(_pool.Pool):
    """multiprocessing_c.pool.Pool whose tasks run on a Dask cluster.

    ``Pool(processes, initializer, initargs, backend="dask[:ADDRESS]")``
    or ``backend=client``: `processes` (the most tasks it runs at once)
    defaults to the cluster's worker threads."""

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None, *, backend=None):
        self._pool = []
        self._state = _pool.INIT
        self._backend = 'dask'
        if maxtasksperchild is not None:
            raise ValueError('the dask backend does not support '
                             'maxtasksperchild: Dask workers belong to the '
                             'cluster, not to the pool')
        self._client, self._owns_client = get_client(backend)
        if processes is None:
            processes = cluster_threads(self._client)
        super().__init__(processes, initializer, initargs, maxtasksperchild,
                         context)

    def _make_dispatcher(self):
        return _DaskDispatcher(
            self._pool, self._cache, self._processes, self._initializer,
            self._initargs, self._maxtasksperchild, _dumps,
            client=self._client, owned=self._owns_client)

    def __repr__(self):
        return '<%s.%s backend=dask state=%s pool_size=%d>' % (
            type(self).__module__, type(self).__qualname__,
            getattr(self, '_state', None), len(getattr(self, '_pool', ())))


class _DaskExecutorDispatcher(_common.ExecutorRules, _DaskDispatcher):
    # A future runs once its call is sent: two a worker, so that cancel()
    # still catches the rest, as in futures.py.
    depth = 2


class ProcessPoolExecutor(_common.RemoteExecutor):
    """multiprocessing_c.futures.ProcessPoolExecutor on a Dask cluster."""

    _engine = 'dask'

    def __init__(self, max_workers=None, mp_context=None, initializer=None,
                 initargs=(), *, max_tasks_per_child=None, backend=None,
                 remote_args=None):
        if max_tasks_per_child is not None:
            raise ValueError('the dask backend does not support '
                             'max_tasks_per_child: Dask workers belong to '
                             'the cluster, not to the executor')
        super().__init__(max_workers, mp_context, initializer, initargs,
                         backend=backend, remote_args=remote_args)

    def _connect(self, backend):
        self._client, self._owns_client = get_client(backend)
        return cluster_threads(self._client)

    def _make_dispatcher(self):
        return _DaskExecutorDispatcher(
            self._pool_list, {}, self._max_workers, self._initializer,
            self._initargs, self._max_tasks_per_child, _dumps,
            client=self._client, owned=self._owns_client)
