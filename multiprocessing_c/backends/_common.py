"""What the Ray and Dask backends share: the task payload, the code that
runs it on a remote worker, the refusal of objects that cannot leave this
machine, and the dispatcher that feeds tasks to remote workers.

The dispatcher has the interface of pool.py's process dispatcher (submit,
close, terminate, join, backlog, wait_for_space, wake, _broken; the
lifecycle and flow control are pool._HandlerDispatcher's, shared), so the
Pool and its result objects (ApplyResult, MapResult, the imap iterators and
the imap feeder) are multiprocessing_c's own; only the transport differs.
One handler thread owns the engine's workers: submitting threads and the
engine's completion callbacks hand it events through a queue.
"""
import builtins
import collections
import functools
import io
import os
import pickle
import queue
import sys
import threading
import time
import traceback
import types

from .. import pool as _pool
from .. import util
from . import RefusedArgument

# --------------------------------------------- objects tied to this machine

# module suffix -> ((class name, why it cannot travel), ...); looked up in
# both our modules and the stdlib's, whichever are imported.
_LOCAL_ONLY = {
    'queues': (('Queue', 'it is a pipe and semaphores of this machine'),
               ('SimpleQueue', 'it is a pipe of this machine')),
    'synchronize': (
        ('SemLock', 'it is a semaphore in the kernel of this machine'),
        ('Condition', 'it is made of semaphores of this machine'),
        ('Event', 'it is made of semaphores of this machine'),
        ('Barrier', 'it is made of semaphores of this machine')),
    'sharedctypes': (('SynchronizedBase',
                      'its value lives in shared memory of this machine'),),
    'shared_memory': (
        ('SharedMemory', 'it is shared memory of this machine'),
        ('ShareableList', 'it lives in shared memory of this machine')),
    'connection': (
        ('Connection', 'it is a pipe or socket of this process'),
        ('_ConnectionBase', 'it is a pipe or socket of this process'),
        ('Listener', 'it is a socket of this process')),
    'managers': (
        ('BaseProxy', 'a proxy reaches its manager process with this '
                      "program's authkey, which a remote worker does not "
                      'have; the manager lives and dies with this program'),
        ('BaseManager', 'it is a server process of this program')),
    'process': (('BaseProcess', 'it is a process of this machine'),),
    'pool': (('Pool', 'it is a pool of this program'),),
}


def _local_only_types():
    found = []
    for suffix, entries in _LOCAL_ONLY.items():
        for pkg in ('multiprocessing_c', 'multiprocessing'):
            mod = sys.modules.get(pkg + '.' + suffix)
            if mod is None:
                continue
            for name, why in entries:
                cls = getattr(mod, name, None)
                if isinstance(cls, type):
                    found.append((cls, why))
    return found


def _shared_ctypes(obj):
    # RawValue/RawArray are ctypes objects made on a shared buffer: ctypes
    # would pickle a copy of their bytes, silently unshared.
    objs = getattr(obj, '_objects', None)
    if isinstance(objs, memoryview):
        return True
    if isinstance(objs, dict):
        return any(isinstance(v, memoryview) for v in objs.values())
    return False


def _refuse(obj, why, engine):
    return RefusedArgument(
        'cannot send %s to a %s worker: %s, and the %s backend may run the '
        'task on another machine. Pass plain data (and return results), or '
        'use the engine\'s own shared objects (%s).'
        % (_describe(obj), engine, why, engine, _ALTERNATIVES[engine]))


_ALTERNATIVES = {
    'ray': 'Ray actors, ray.util.queue.Queue, ray.put',
    'dask': 'distributed.Queue, distributed.Variable, distributed.Lock',
}


def _describe(obj):
    cls = type(obj)
    return 'a %s.%s object' % (cls.__module__, cls.__qualname__)


def make_dumps(cloudpickle, engine):
    """Return dumps(obj) for task payloads: cloudpickle (so that functions
    of the script travel by value), refusing objects tied to this machine
    with RefusedArgument."""
    base = cloudpickle.CloudPickler

    class _Pickler(base):
        def reducer_override(self, obj):
            for cls, why in self._refused:
                if isinstance(obj, cls):
                    raise _refuse(obj, why, engine)
            if _shared_ctypes(obj):
                raise _refuse(obj, 'its value lives in shared memory of '
                                   'this machine', engine)
            return base.reducer_override(self, obj)

    def dumps(obj):
        buf = io.BytesIO()
        p = _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
        p._refused = _local_only_types()
        p.dump(obj)
        return buf.getvalue()

    return dumps

# ------------------------------------------------------- the task payload

CALL, MAP, STARMAP, ONE = 0, 1, 2, 3


def payload_of(func, args, kwds):
    """The (kind, function, data) tuple a worker runs; the pool's chunk
    helpers are unwrapped so that the user's function is seen (and its
    globals joined with the initializer's) on the worker."""
    if not kwds and len(args) == 1:
        if func is _pool.mapstar:
            return (MAP,) + tuple(args[0])
        if func is _pool.starmapstar:
            return (STARMAP,) + tuple(args[0])
        if func is getattr(_pool, '_one', None):
            return (ONE,) + tuple(args[0])
    if func is _futures()._process_chunk and not kwds and len(args) == 2:
        return (STARMAP,) + tuple(args)
    return (CALL, func, (args, kwds))


def _futures():
    from .. import futures
    return futures

# ------------------------------------------------- on the remote worker

def _by_value(func):
    # cloudpickle rebuilds a function of the driver's script (or of any
    # module the worker cannot import) with a fresh globals dict of its own.
    mod = sys.modules.get(func.__module__)
    return func.__globals__ is not getattr(mod, '__dict__', None)


def _rebind(func, ns):
    new = types.FunctionType(func.__code__, ns, func.__name__,
                             func.__defaults__, func.__closure__)
    new.__kwdefaults__ = func.__kwdefaults__
    new.__qualname__ = func.__qualname__
    new.__module__ = func.__module__
    new.__doc__ = func.__doc__
    new.__dict__.update(func.__dict__)
    return new


def adopt(func, ns):
    """Give a function that came by value the worker's one namespace for
    its pool, so that globals set by the initializer (and by earlier tasks)
    are those the tasks see, as in a worker process of a local pool."""
    if isinstance(func, functools.partial):
        inner = adopt(func.func, ns)
        if inner is func.func:
            return func
        return functools.partial(inner, *func.args, **func.keywords)
    if type(func) is not types.FunctionType or not _by_value(func):
        return func
    g = func.__globals__
    if g is ns:
        return func
    ns.setdefault('__builtins__', builtins)
    for k, v in g.items():
        ns.setdefault(k, v)
    # Its helpers came in the same dict: they join the namespace too.
    for k, v in list(ns.items()):
        if type(v) is types.FunctionType and v.__globals__ is g:
            ns[k] = _rebind(v, ns)
    return _rebind(func, ns)


def _wrap_error(e):
    return _pool.ExceptionWithTraceback(e, e.__traceback__)


def run_payload(data, ns, dumps):
    """Run one task (cloudpickled payload `data`) on a worker; return the
    pickled (success, value) as the local pool's worker would send it."""
    try:
        try:
            kind, func, arg = pickle.loads(data)
        except Exception as e:
            raise _pool._unpickling_hint(e)
        func = adopt(func, ns)
        if kind == CALL:
            value = func(*arg[0], **arg[1])
        elif kind == MAP:
            value = list(map(func, arg))
        elif kind == STARMAP:
            value = [func(*a) for a in arg]
        else:
            value = [func(arg)]
        result = (True, value)
    except Exception as e:
        result = (False, _wrap_error(e))
    try:
        return dumps(result)
    except Exception as e:
        err = _pool.MaybeEncodingError(e, result[1])
        return dumps((False, _wrap_error(err)))


def run_initializer(data, ns, dumps):
    """Run the pool's initializer on a worker: None, or the pickled
    exception it raised."""
    if data is None:
        return None
    try:
        initializer, initargs = pickle.loads(data)
        adopt(initializer, ns)(*initargs)
    except Exception as e:
        return dumps(_wrap_error(e))
    return None


def loads_result(data):
    try:
        return pickle.loads(data)
    except Exception as e:
        return (False, e)

# ----------------------------------------------- the driver's dispatcher


class RemoteWorker:
    """What Pool._pool lists for a backend: one remote worker (a Ray actor,
    or a share of a Dask cluster), with the attributes code reads off a
    pool worker process."""

    daemon = True
    exitcode = None

    def __init__(self, name):
        self.name = name
        self.pid = None
        self.node = None
        self._alive = True

    def is_alive(self):
        return self._alive

    def __repr__(self):
        return '<%s %s pid=%s node=%s%s>' % (
            type(self).__name__, self.name, self.pid, self.node,
            '' if self._alive else ' stopped')


class Slot:
    """The handler's record of one remote worker."""

    __slots__ = ('worker', 'handle', 'ready', 'inflight', 'done', 'retiring',
                 'deadline', 'lost')

    def __init__(self, worker, handle):
        self.worker = worker          # the RemoteWorker in Pool._pool
        self.handle = handle          # the engine's (actor, ...) or None
        self.ready = False
        self.inflight = collections.deque()   # (task, engine future)
        self.done = 0
        self.retiring = False
        self.deadline = None
        self.lost = False


class WorkerLost(Exception):
    """Raised by an engine's fetch(): the worker holding the task is gone."""

    def __init__(self, detail, pid=None):
        super().__init__(detail)
        self.detail = detail
        self.pid = pid


class InitFailed(Exception):
    """Raised by an engine's fetch(): the pool's initializer raised
    `exc` on the worker."""

    def __init__(self, exc):
        super().__init__(exc)
        self.exc = exc


class RemoteDispatcher(_pool._HandlerDispatcher):
    """Feeds the pool's tasks to an engine's workers, `depth` at a time
    each, from one handler thread.  Subclasses provide the engine: start
    a worker, send a task, fetch a result, stop a worker."""

    engine = None         # 'ray' or 'dask'
    depth = 2             # tasks held by one worker: one runs, one waits
    replaces_workers = True

    def __init__(self, pool_list, cache, processes, initializer, initargs,
                 maxtasks, dumps):
        self.taskqueue = queue.SimpleQueue()
        self._events = queue.SimpleQueue()
        self._retry = collections.deque()
        self._workers = pool_list
        self._slots = []
        self._cache = cache
        self._processes = processes
        self._maxtasks = maxtasks
        self._dumps = dumps
        self._init_payload = None
        if initializer is not None:
            self._init_payload = dumps((initializer, tuple(initargs)))
        self._closing = False
        self._terminating = False
        self._broken = None
        self._thread = None
        self._space = threading.Event()
        self._space_low = -1
        self._counter = 0

    # -- called from the pool's threads

    def submit(self, result, i, func, args, kwds, timeout):
        if timeout is not None:
            if not timeout > 0:
                raise ValueError('timeout must be a positive number of '
                                 'seconds')
            self._check_timeout_supported()
        try:
            data = self._dumps(payload_of(func, args, kwds))
        except RefusedArgument as e:
            if isinstance(result, _pool.IMapIterator):
                # imap's feeder thread: the iterator raises it in order.
                result._set(i, (False, e))
                return
            # Refused at once, in the caller: nothing was sent.
            self._cache.pop(getattr(result, '_job', None), None)
            raise
        except Exception as e:
            result._set(i, (False, _pickling_hint(e, self.engine)))
            return
        if self._broken is not None:
            result._set(i, (False, self._broken))
            return
        self.taskqueue.put((result, i, data, timeout))
        self.wake()

    def _check_timeout_supported(self):
        pass

    def backlog(self):
        return self.taskqueue.qsize() + len(self._retry)

    def wake(self):
        self._events.put(None)

    def start(self):
        # The workers are asked for now, so that the pool lists them as a
        # local pool does once created; they become ready in the handler.
        self._maintain()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='pool-%s-handler' % self.engine)
        self._thread.start()

    # -- engine hooks

    def _start_slot(self, slot):
        """Start slot's worker; post ('ready', slot, future) when known."""
        raise NotImplementedError

    def _send(self, slot, data):
        """Send one task; return the engine's future for its result."""
        raise NotImplementedError

    def _watch(self, fut, event):
        """Post `event` to the handler when `fut` completes."""
        raise NotImplementedError

    def _prefetch(self, futs):
        """Results of these finished tasks are about to be fetched: an
        engine may get them in one go."""

    def _fetch(self, fut):
        """The result bytes of a finished task; WorkerLost if its worker
        died."""
        raise NotImplementedError

    def _fetch_ready(self, fut):
        """(pid, node, pickled initializer error or None) of a started
        worker; WorkerLost if it died."""
        raise NotImplementedError

    def _stop_slot(self, slot, graceful):
        raise NotImplementedError

    def _shutdown(self):
        """After the last worker stopped."""

    # -- the handler thread

    def _run(self):
        try:
            self._loop()
        except BaseException as e:
            traceback.print_exc()
            self._broken = _pool.WorkerLostError(
                'the %s pool handler failed: %r' % (self.engine, e))
            self._terminating = True
        finally:
            try:
                for slot in list(self._slots):
                    self._stop(slot, graceful=not self._terminating)
                self._fail_pending(self._broken or _pool._terminated())
            finally:
                try:
                    self._shutdown()
                except Exception:
                    pass

    def _loop(self):
        while not self._terminating:
            try:
                self._maintain()
            except Exception as e:
                # The engine cannot start a worker (it was shut down, the
                # cluster is gone): fail the work rather than wait for it.
                self._break(e)
            self._dispatch()
            if self._space_low >= 0 and self.backlog() <= self._space_low:
                self._space_low = -1
                self._space.set()
            if self._closing and self._idle():
                return
            event = self._next_event(self._next_timeout())
            events = []
            while event is not None:
                events.append(event)
                try:
                    event = self._events.get_nowait()
                except queue.Empty:
                    break
            self._prefetch([e[2] for e in events
                            if e is not None and e[0] == 'done'])
            for event in events:
                self._handle(event)
                if self._terminating:
                    return
            self._check_deadlines()

    def _next_event(self, timeout):
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def _idle(self):
        return (not self._retry and self.taskqueue.empty()
                and all(not s.inflight for s in self._slots))

    def _handle(self, event):
        if event is None:
            return
        kind, slot, fut = event
        if slot not in self._slots:
            return
        if kind == 'ready':
            self._on_ready(slot, fut)
        else:
            self._on_done(slot, fut)

    def _maintain(self):
        if self._broken is not None or self._terminating:
            return
        if self._closing and self._idle():
            return
        live = sum(1 for s in self._slots if not s.retiring)
        for _ in range(self._processes - live):
            self._counter += 1
            worker = RemoteWorker('%sPoolWorker-%d' % (self.engine.title(),
                                                       self._counter))
            slot = Slot(worker, None)
            self._start_slot(slot)
            self._slots.append(slot)
            self._workers.append(worker)

    def _next_task(self):
        if self._retry:
            return self._retry.popleft()
        try:
            return self.taskqueue.get_nowait()
        except queue.Empty:
            return None

    def _can_take(self, slot, depth):
        if not slot.ready or slot.retiring or slot.lost:
            return False
        if len(slot.inflight) >= depth:
            return False
        return (self._maxtasks is None
                or slot.done + len(slot.inflight) < self._maxtasks)

    def _dispatch(self):
        for depth in range(1, self.depth + 1):
            for slot in list(self._slots):
                while self._can_take(slot, depth):
                    task = self._next_task()
                    if task is None:
                        return
                    self._send_task(slot, task)

    def _send_task(self, slot, task):
        result, i, data, timeout = task
        if self._broken is not None:
            result._set(i, (False, self._broken))
            return
        if not result._start(i):
            return                        # cancelled meanwhile (executors)
        try:
            fut = self._send(slot, data)
        except Exception as e:
            result._set(i, (False, e))
            return
        slot.inflight.append((task, fut))
        if len(slot.inflight) == 1 and timeout is not None:
            slot.deadline = time.monotonic() + timeout
        self._watch(fut, ('done', slot, fut))

    def _on_ready(self, slot, fut):
        try:
            pid, node, init_error = self._fetch_ready(fut)
        except WorkerLost as e:
            self._remove(slot)
            self._break(_pool.WorkerLostError(
                '%s worker died before its initializer finished: %s'
                % (self.engine, e.detail), e.pid))
            return
        except Exception as e:
            self._remove(slot)
            self._break(e)
            return
        slot.worker.pid, slot.worker.node = pid, node
        if init_error is not None:
            self._break(loads_result(init_error) if isinstance(
                init_error, bytes) else init_error)
            return
        slot.ready = True

    def _on_done(self, slot, fut):
        for n, (task, f) in enumerate(slot.inflight):
            if f is fut:
                break
        else:
            return
        try:
            data = self._fetch(fut)
        except WorkerLost as e:
            self._lose(slot, n, e)
            return
        except InitFailed as e:
            del slot.inflight[n]
            self._break(e.exc)
            task[0]._set(task[1], (False, self._broken))
            return
        except Exception as e:
            obj = (False, e)
        else:
            obj = loads_result(data)
        del slot.inflight[n]
        slot.deadline = None
        if slot.inflight and slot.inflight[0][0][3] is not None:
            slot.deadline = time.monotonic() + slot.inflight[0][0][3]
        slot.done += 1
        if self._maxtasks is not None and slot.done >= self._maxtasks:
            slot.retiring = True
            self._unlist(slot)
            self._maintain()              # replaced before the caller hears
        if slot.retiring and not slot.inflight:
            self._stop(slot, graceful=True)
        result, i = task[0], task[1]
        result._set(i, obj)

    # Whether a lost task means its slot's worker is gone (an actor), or
    # only that one task is (a task of a cluster's shared workers).
    lost_kills_slot = True

    def _lose(self, slot, n, exc):
        pid = exc.pid or slot.worker.pid
        if not self.lost_kills_slot:
            (result, i, _, _), _f = slot.inflight[n]
            del slot.inflight[n]
        else:
            # The first task it held was running: it fails.  The others
            # never started: they go first to the other workers.
            (result, i, _, _), _f = slot.inflight.popleft()
            while slot.inflight:
                self._retry.appendleft(slot.inflight.pop()[0])
            self._stop(slot, graceful=False)
        util.debug('%s worker %s lost: %s', self.engine, pid, exc.detail)
        who = 'a %s pool worker' % self.engine
        if pid is not None:
            who = '%s pool worker process %s' % (self.engine, pid)
        err = _pool.WorkerLostError('%s died while running this task: %s'
                                    % (who, exc.detail), pid, None)
        result._set(i, (False, err))
        self._after_loss(pid, None, err)

    def _after_loss(self, pid, exitcode, exc=None):
        pass

    def _check_deadlines(self):
        now = time.monotonic()
        for slot in list(self._slots):
            if (slot.deadline is not None and now >= slot.deadline
                    and slot.inflight):
                (result, i, _, timeout), _f = slot.inflight.popleft()
                while slot.inflight:
                    self._retry.appendleft(slot.inflight.pop()[0])
                pid = slot.worker.pid
                self._stop(slot, graceful=False)
                result._set(i, (False, _pool.TimeoutError(
                    'task exceeded its timeout of %g s; %s worker process %s '
                    'was killed and replaced' % (timeout, self.engine, pid))))

    def _next_timeout(self):
        nearest = None
        for slot in self._slots:
            if slot.deadline is not None and (nearest is None
                                              or slot.deadline < nearest):
                nearest = slot.deadline
        if nearest is None:
            return None
        return max(0.0, nearest - time.monotonic())

    def _unlist(self, slot):
        try:
            self._workers.remove(slot.worker)
        except ValueError:
            pass

    def _remove(self, slot):
        slot.worker._alive = False
        slot.lost = True
        if slot in self._slots:
            self._slots.remove(slot)
        self._unlist(slot)

    def _stop(self, slot, graceful):
        self._remove(slot)
        try:
            self._stop_slot(slot, graceful)
        except Exception:
            pass
        while slot.inflight:
            (result, i, _, _), _f = slot.inflight.popleft()
            result._set(i, (False, self._broken or _pool._terminated()))

    def _break(self, exc):
        if self._broken is None:
            self._broken = exc
        self._fail_pending(self._broken)

    def _fail_pending(self, exc):
        while True:
            task = self._next_task()
            if task is None:
                break
            task[0]._set(task[1], (False, exc))
        for slot in self._slots:
            while slot.inflight:
                (result, i, _, _), _f = slot.inflight.popleft()
                result._set(i, (False, exc))
        if self._terminating or self._broken is not None:
            for result in list(self._cache.values()):
                result._abort(exc)


def _pickling_hint(exc, engine):
    if hasattr(exc, 'add_note'):
        exc.add_note('(multiprocessing_c %s backend: the task function and '
                     'its arguments are pickled with cloudpickle to reach a '
                     'worker that may be on another machine)' % engine)
    return exc


def default_path_env():
    """PYTHONPATH for workers of a cluster started here: the directories
    this program imports from that are not the interpreter's own (the
    script's directory, PYTHONPATH, what it added), so that its modules
    import on the workers as they would in a local pool's spawned child."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix,
                                              sys.exec_prefix)}
    keep = []
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        real = os.path.realpath(entry)
        if any(real == p or real.startswith(p + os.sep) for p in prefixes):
            continue
        if real not in keep:
            keep.append(real)
    return os.pathsep.join(keep)

# ------------------------------------------------------------ executors


class ExecutorRules:
    """The executor's rule on a dispatcher: a lost worker or a failed
    initializer breaks it (BrokenProcessPool), as in futures.py."""

    def __init__(self, *args, **kwds):
        super().__init__(*args, **kwds)
        self.cache = self._cache

    def broken_from(self, exc):
        return _futures()._ExecutorDispatcher.broken_from(self, exc)

    def _break(self, exc):
        super()._break(self.broken_from(exc))
        self._terminating = True

    def _after_loss(self, pid, exitcode, exc=None):
        if not self._terminating:
            self._break(exc or _pool._lost(pid, exitcode))


def _executor_base():
    return _futures().ProcessPoolExecutor


class RemoteExecutor(_executor_base()):
    """ProcessPoolExecutor whose workers are an engine's; subclasses say
    how to connect and make the dispatcher."""

    _engine = None

    def __init__(self, max_workers=None, mp_context=None, initializer=None,
                 initargs=(), *, max_tasks_per_child=None, backend=None,
                 remote_args=None):
        cpus = self._connect(backend)
        if max_workers is None:
            max_workers = cpus
        self._remote_args = remote_args
        super().__init__(max_workers, mp_context, initializer, initargs,
                         max_tasks_per_child=max_tasks_per_child)

    def _connect(self, backend):
        raise NotImplementedError

    def _make_dispatcher(self):
        raise NotImplementedError

    def _start(self):
        if self._dispatcher is None:
            d = self._make_dispatcher()
            d.start()
            self._dispatcher = d
            util.Finalize(self, _futures()._finalize_dispatcher, args=(d,),
                          exitpriority=20)
        return self._dispatcher
