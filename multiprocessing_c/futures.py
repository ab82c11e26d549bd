"""ProcessPoolExecutor: the concurrent.futures executor over
multiprocessing_c's worker channels (the dispatcher of pool.py).

Like the stdlib's, a worker that dies breaks the executor: its futures
and every pending one fail with BrokenProcessPool, and submit() refuses
new work.  Unlike CPython 3.11-3.13, it never deadlocks: the parent knows
which task each worker holds, and replaces workers that reach
max_tasks_per_child by count, whatever the backlog.

The stdlib's concurrent.futures.process imports the stdlib
multiprocessing, so the exception is our own subclass of
concurrent.futures.BrokenExecutor.
"""
import itertools
import sys
import threading
import time
from concurrent.futures import _base

from . import pool as _pool
from . import util

__all__ = ['ProcessPoolExecutor', 'BrokenProcessPool']


class BrokenProcessPool(_base.BrokenExecutor):
    """A worker process of the executor died, or its initializer failed:
    the executor cannot be used any more."""


_shutdown_all = False


def _process_chunk(fn, chunk):
    return [fn(*args) for args in chunk]


class _FutureTask:
    """Links one submitted call to its Future, as the dispatcher's result
    object: the dispatcher calls _start() as the task goes to a worker and
    _set() with its outcome."""

    __slots__ = ('_job', 'future', '_executor_break', '_started')

    def __init__(self, future, cache, on_lost):
        self._job = next(_pool.job_counter)
        self.future = future
        self._executor_break = on_lost
        self._started = False
        cache[self._job] = self

    def _start(self, i):
        if self._started:
            return True
        self._started = True
        return self.future.set_running_or_notify_cancel()

    def _set(self, i, obj):
        success, value = obj
        if self.future.done():
            return
        if not success and isinstance(value, _pool.WorkerLostError):
            value = self._executor_break(value)
        if self.future.cancelled():
            return
        try:
            if success:
                self.future.set_result(value)
            else:
                self.future.set_exception(value)
        except _base.InvalidStateError:
            pass

    def _abort(self, exc):
        if isinstance(exc, _pool.WorkerLostError):
            exc = self._executor_break(exc)
        if not self.future.done():
            if not self._started:
                self.future.set_running_or_notify_cancel()
            try:
                self.future.set_exception(exc)
            except _base.InvalidStateError:
                pass


class _ExecutorDispatcher(_pool._ProcessDispatcher):
    """The pool's dispatcher, with the executor's rule: a lost worker or a
    failed initializer breaks everything."""

    # A future is running once its call is sent: keep that to two calls
    # a worker, so that cancel() still catches the rest, as the stdlib's
    # does.
    _line_max = _pool._LINE_MIN

    def __init__(self, *args, **kwds):
        super().__init__(*args, **kwds)
        self.cache = self._cache

    def broken_from(self, exc):
        if isinstance(exc, BrokenProcessPool):
            return exc
        if isinstance(exc, _pool.WorkerLostError):
            msg = ('A process in the process pool was terminated abruptly '
                   'while the future was running or pending (%s).' % exc)
        else:
            msg = ('A child process terminated abruptly, the process pool '
                   'is not usable anymore (its initializer raised %r)'
                   % (exc,))
        new = BrokenProcessPool(msg)
        new.__cause__ = exc
        return new

    def _break(self, exc):
        super()._break(self.broken_from(exc))
        self._terminating = True

    def _after_loss(self, pid, exitcode):
        if not self._terminating:
            self._break(_pool._lost(pid, exitcode))


class ProcessPoolExecutor(_base.Executor):
    """Runs calls in a pool of worker processes; see concurrent.futures."""

    def __new__(cls, *args, backend=None, **kwds):
        # backend="ray"/"dask": the engine's executor, from backends/.
        if cls is ProcessPoolExecutor and backend:
            from .backends import executor_class
            cls = executor_class(backend)
        return object.__new__(cls)

    def __init__(self, max_workers=None, mp_context=None, initializer=None,
                 initargs=(), *, max_tasks_per_child=None, backend=None):
        if max_workers is None:
            max_workers = util._default_worker_count() or 1
        elif max_workers <= 0:
            raise ValueError('max_workers must be greater than 0')
        if initializer is not None and not callable(initializer):
            raise TypeError('initializer must be a callable')
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError('max_tasks_per_child must be an integer')
            if max_tasks_per_child <= 0:
                raise ValueError('max_tasks_per_child must be >= 1')
        if mp_context is None:
            from . import context
            if max_tasks_per_child is not None:
                # As the stdlib: replacing workers from a thread is safest
                # without fork.
                mp_context = context._default_context.get_context('spawn')
            else:
                mp_context = context._default_context.get_context()
        self._max_workers = max_workers
        self._mp_context = mp_context
        self._initializer = initializer
        self._initargs = initargs
        self._max_tasks_per_child = max_tasks_per_child
        self._shutdown_lock = threading.Lock()
        self._shutdown_thread = False
        self._processes = {}
        self._dispatcher = None
        self._pool_list = []

    def _start(self):
        # Workers start with the first submit, as the stdlib's do.
        if self._dispatcher is None:
            d = _ExecutorDispatcher(
                self._pool_list, {}, self._mp_context,
                _pool.Pool.Process, self._max_workers, self._initializer,
                self._initargs, self._max_tasks_per_child, True)
            d.start()
            self._dispatcher = d
            util.Finalize(self, _finalize_dispatcher, args=(d,),
                          exitpriority=20)
        return self._dispatcher

    @property
    def _broken(self):
        d = self._dispatcher
        return d is not None and d._broken is not None

    def submit(self, fn, /, *args, **kwargs):
        """Schedule fn(*args, **kwargs); return a Future."""
        with self._shutdown_lock:
            self._refuse_if_closed()
            d = self._start()
            f = _base.Future()
            task = _FutureTask(f, d.cache, d.broken_from)
            d.submit(task, 0, fn, args, kwargs, None)
            return f

    submit.__doc__ = _base.Executor.submit.__doc__

    def _refuse_if_closed(self):
        d = self._dispatcher
        if d is not None and d._broken is not None:
            raise d.broken_from(d._broken)
        when = ('after shutdown' if self._shutdown_thread else
                'after interpreter shutdown' if _shutdown_all else None)
        if when is not None:
            raise RuntimeError('cannot schedule new futures ' + when)

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        """Return an iterator equivalent to map(fn, *iterables), the calls
        made in the workers `chunksize` at a time.  TimeoutError if a
        result is not ready `timeout` seconds after map() was called."""
        if chunksize < 1:
            raise ValueError('chunksize must be >= 1.')
        end_time = None if timeout is None else timeout + time.monotonic()
        args = zip(*iterables)
        futures = []
        while True:
            chunk = list(itertools.islice(args, chunksize))
            if not chunk:
                break
            futures.append(self.submit(_process_chunk, fn, chunk))
        return _results(futures, end_time)

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Stop accepting work; with `cancel_futures`, cancel the calls not
        started yet; with `wait`, return once every worker has exited."""
        with self._shutdown_lock:
            self._shutdown_thread = True
            d = self._dispatcher
        if d is None:
            return
        if cancel_futures:
            for task in list(d.cache.values()):
                task.future.cancel()
        d.close()
        if wait:
            d.join()

    shutdown.__doc__ = _base.Executor.shutdown.__doc__


def _results(futures, end_time):
    # A generator of the flattened chunk results; cancels what is left if
    # abandoned or on error.
    futures.reverse()
    try:
        while futures:
            f = futures.pop()
            if end_time is None:
                chunk = f.result()
            else:
                chunk = f.result(end_time - time.monotonic())
            yield from chunk
    finally:
        for f in futures:
            f.cancel()


def _finalize_dispatcher(d):
    # The executor was collected, or the program is exiting: let pending
    # work finish, and at exit wait for it as the stdlib does.
    d.close()
    if util.is_exiting():
        d.join()


def _check_stdlib_executor(ctx, frame):
    """Refuse, at once and clearly, the stdlib's ProcessPoolExecutor with
    one of our non-fork contexts in a program where `multiprocessing` is
    the stdlib's: its queues are the stdlib's, which our spawned children
    cannot receive.  (Under python -m multiprocessing_c it is all ours.)"""
    for _ in range(4):
        if frame is None:
            return
        if frame.f_globals.get('__name__') == 'concurrent.futures.process':
            break
        frame = frame.f_back
    else:
        return
    std = sys.modules.get('multiprocessing')
    if std is None or std.__name__ == __package__:
        return
    if ctx.get_start_method() == 'fork':
        return      # inherited, not pickled: that works
    raise RuntimeError(
        "concurrent.futures.ProcessPoolExecutor cannot use multiprocessing_c's "
        "%r context here: it runs on the stdlib's multiprocessing queues, "
        "which multiprocessing_c's %s children cannot receive. Use "
        "multiprocessing_c.futures.ProcessPoolExecutor (same API), or run "
        "the program with `python -m multiprocessing_c`."
        % (ctx.get_start_method(), ctx.get_start_method()))
