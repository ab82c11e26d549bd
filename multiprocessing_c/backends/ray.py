"""Pool and ProcessPoolExecutor on a Ray cluster.

Each pool worker is a Ray actor: a worker process somewhere in the cluster
that runs the initializer once when it starts (so the globals it sets are
those the tasks see), then the tasks sent to it, one at a time, with a
second one waiting in its queue.  A worker that reaches maxtasksperchild
is replaced by a new actor; one that dies fails the task it was running
with WorkerLostError and is replaced.  Actor calls cost about a third of
Ray tasks' round trip here, and an actor is what a pool worker is.

Tasks are pickled with cloudpickle in the submitting thread, so functions
of the script itself travel by value and objects tied to this machine (a
Queue, a Lock, a manager proxy...) are refused there, at once.
"""
import os
import threading

import ray
import ray.cloudpickle as _cloudpickle
import ray.exceptions as _rex

from .. import pool as _pool
from . import _common, parse, from_environment

__all__ = ['Pool', 'ProcessPoolExecutor', 'connect']

_dumps = _common.make_dumps(_cloudpickle, 'ray')
_connect_lock = threading.Lock()

# Errors that mean the worker process (or its node) went away.
_LOST = tuple(getattr(_rex, name) for name in (
    'RayActorError', 'WorkerCrashedError', 'NodeDiedError',
    'OutOfMemoryError', 'ObjectLostError', 'OwnerDiedError',
    'TaskUnschedulableError', 'ActorUnschedulableError')
    if hasattr(_rex, name))


def connect(address=None):
    """Connect this process to Ray unless it already is: to `address`
    (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``), or by Ray's own rules
    (RAY_ADDRESS, a cluster started here by ``ray start``, else a new local
    one).  A local cluster started here gets this program's import path."""
    with _connect_lock:
        if ray.is_initialized():
            return
        kwds = {'address': address}
        if address is None or address == 'local':
            kwds['include_dashboard'] = False
        path = _common.default_path_env()
        if path and (address is None or address == 'local'):
            kwds['runtime_env'] = {'env_vars': {'PYTHONPATH': path}}
        ray.init(**kwds)


def cluster_cpus():
    return max(1, int(ray.cluster_resources().get('CPU', 1)))


class _RayWorker:
    """A pool worker: one actor, one process."""

    def __init__(self, init_payload):
        self._ns = {}
        self._init_error = _common.run_initializer(init_payload, self._ns,
                                                   _dumps)

    def ready(self):
        try:
            node = ray.util.get_node_ip_address()
        except Exception:
            node = None
        return os.getpid(), node, self._init_error

    def run(self, data):
        return _common.run_payload(data, self._ns, _dumps)


_RemoteWorker = None


def _actor_class():
    global _RemoteWorker
    if _RemoteWorker is None:
        _RemoteWorker = ray.remote(max_restarts=0, max_task_retries=0)(
            _RayWorker)
    return _RemoteWorker


def _cpus_per_worker(processes):
    # A CPU per worker where the cluster has them free; else a share of
    # what is free, down to none: the pool starts at once and its workers
    # share CPUs, as a local pool's processes do, instead of waiting for
    # another pool to end.  ray_remote_args={"num_cpus": 1} waits instead.
    total = float(ray.cluster_resources().get('CPU', 1))
    free = float(ray.available_resources().get('CPU', 0))
    share = min(1.0, total / processes, free / processes)
    return 0 if share < 0.01 else round(share - 0.00005, 4)


def _lost_detail(e):
    # Ray's message is long: keep what says how the process ended.
    text = ' '.join(str(e).split())
    at = text.find('Worker exit type')
    if at < 0:
        at = text.find('The actor is dead')
    text = text[max(at, 0):]
    return text.split(' Some common causes')[0][:300]


class _RayDispatcher(_common.RemoteDispatcher):
    engine = 'ray'

    def __init__(self, *args, ray_options=None, **kwds):
        super().__init__(*args, **kwds)
        self._options = dict(ray_options or {})
        if 'num_cpus' not in self._options:
            self._options['num_cpus'] = _cpus_per_worker(self._processes)

    def _start_slot(self, slot):
        actor = _actor_class().options(**self._options).remote(
            self._init_payload)
        slot.handle = actor
        fut = actor.ready.remote()
        self._watch(fut, ('ready', slot, fut))

    def _send(self, slot, data):
        return slot.handle.run.remote(data)

    def _watch(self, fut, event):
        put = self._events.put
        fut.future().add_done_callback(lambda f: put(event))

    def _get(self, fut):
        try:
            return ray.get(fut)
        except _LOST as e:
            raise _common.WorkerLost(_lost_detail(e),
                                     getattr(e, 'pid', None)) from e
        except _rex.RayTaskError as e:
            # Our actor code catches task errors: this is Ray's own.
            cause = e.as_instanceof_cause() if hasattr(
                e, 'as_instanceof_cause') else e
            raise cause

    _fetch = _get
    _fetch_ready = _get

    def _stop_slot(self, slot, graceful):
        if slot.handle is not None and ray.is_initialized():
            ray.kill(slot.handle, no_restart=True)
        slot.handle = None


def _spec_address(backend):
    spec = backend if backend is not None else from_environment()
    name, address = parse(spec) if spec else ('ray', None)
    if name != 'ray':
        raise ValueError('%r is not a ray backend' % (spec,))
    return address


class Pool(_pool.Pool):
    """multiprocessing_c.pool.Pool whose workers are Ray actors.

    ``Pool(processes, initializer, initargs, maxtasksperchild,
    backend="ray[:ADDRESS]", ray_remote_args=None)``: `processes` defaults
    to the cluster's CPUs; `ray_remote_args` are Ray actor options for the
    workers (num_cpus, num_gpus, resources, runtime_env, ...)."""

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None, *, backend=None,
                 ray_remote_args=None):
        self._pool = []
        self._state = _pool.INIT
        self._backend = 'ray'
        connect(_spec_address(backend))
        if processes is None:
            processes = cluster_cpus()
        self._ray_remote_args = ray_remote_args
        super().__init__(processes, initializer, initargs, maxtasksperchild,
                         context)

    def _make_dispatcher(self):
        return _RayDispatcher(
            self._pool, self._cache, self._processes, self._initializer,
            self._initargs, self._maxtasksperchild, _dumps,
            ray_options=self._ray_remote_args)

    def __repr__(self):
        return '<%s.%s backend=ray state=%s pool_size=%d>' % (
            type(self).__module__, type(self).__qualname__,
            getattr(self, '_state', None), len(getattr(self, '_pool', ())))


class _RayExecutorDispatcher(_common.ExecutorRules, _RayDispatcher):
    pass


class ProcessPoolExecutor(_common.RemoteExecutor):
    """multiprocessing_c.futures.ProcessPoolExecutor on Ray actors."""

    _engine = 'ray'

    def _connect(self, backend):
        connect(_spec_address(backend))
        return cluster_cpus()

    def _make_dispatcher(self):
        return _RayExecutorDispatcher(
            self._pool_list, {}, self._max_workers, self._initializer,
            self._initargs, self._max_tasks_per_child, _dumps,
            ray_options=self._remote_args)
