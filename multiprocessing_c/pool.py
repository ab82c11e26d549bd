"""Pools of workers: Pool (processes) and ThreadPool (threads).

The process pool never shares a lock with its workers.  Each worker has a
duplex pipe of its own: the parent's handler thread sends a task on it
only when the worker is idle, and reads the result back on it.  So the
parent always knows which task each worker holds, and a worker that dies
(os._exit, a segfault, SIGKILL) fails exactly that task with
WorkerLostError, is replaced, and the pool keeps serving.  The handler
waits on every worker's pipe and sentinel at once with connection.wait.

Tasks are pickled once in the submitting thread (so pickling errors land
where the task was submitted) and travel as bytes behind a 16-byte header
(job id, chunk index), which lets the worker report a task whose
arguments fail to unpickle.  map() batches items into chunks.
"""
import collections
import itertools
import os
import queue
import signal
import struct
import sys
import threading
import time
import traceback
import warnings

from . import context
from . import process as _process
from . import reduction
from . import util

__all__ = ['Pool', 'ThreadPool']

INIT = 'INIT'
RUN = 'RUN'
CLOSE = 'CLOSE'
TERMINATE = 'TERMINATE'

TimeoutError = context.TimeoutError

job_counter = itertools.count()

# Frame header of tasks and results: job id, chunk index.
_HEADER = struct.Struct('<qq')
_READY = -1           # worker -> parent: initializer done, send work
_INIT_FAILED = -2     # worker -> parent: initializer raised (payload: exc)
_STOP = b''           # parent -> worker: exit now

# ----------------------------------------------------------------- errors


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker; set as
    the __cause__ of the exception re-raised in the caller."""

    def __init__(self, tb):
        self.tb = tb

    def __str__(self):
        return self.tb


class ExceptionWithTraceback:
    """An exception and its traceback text, pickled together; unpickles to
    the exception with a RemoteTraceback as its cause."""

    def __init__(self, exc, tb):
        lines = traceback.format_exception(type(exc), exc, tb)
        self.exc = exc
        self.tb = '\n"""\n%s"""' % ''.join(lines)

    def __reduce__(self):
        return rebuild_exc, (self.exc, self.tb)


def rebuild_exc(exc, tb):
    """Return `exc` with RemoteTraceback(tb) as its cause."""
    exc.__cause__ = RemoteTraceback(tb)
    return exc


class MaybeEncodingError(Exception):
    """A worker's result (or exception) could not be pickled back."""

    def __init__(self, exc, value):
        self.exc = repr(exc)
        self.value = repr(value)
        super().__init__(self.exc, self.value)

    def __str__(self):
        return "Error sending result: '%s'. Reason: '%s'" % (self.value,
                                                             self.exc)

    def __repr__(self):
        return '<%s: %s>' % (type(self).__name__, self)


class WorkerLostError(Exception):
    """The worker process running a task died before returning a result
    (killed by a signal, os._exit, a crash), or the pool was terminated
    while the task was pending.  `exitcode` is the worker's exit code
    (negative: the signal number), or None."""

    def __init__(self, message, pid=None, exitcode=None):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode


def _describe_exit(exitcode):
    if exitcode is None:
        return 'with an unknown exit code'
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = 'signal %d' % -exitcode
        return 'with exit code %d (killed by %s)' % (exitcode, name)
    return 'with exit code %d' % exitcode


def _lost(pid, exitcode, what='while running this task'):
    return WorkerLostError('pool worker process %s exited %s %s'
                           % (pid, _describe_exit(exitcode), what),
                           pid, exitcode)


def _terminated():
    return WorkerLostError('the pool was terminated before this task '
                           'finished')

# ------------------------------------------------------------ the worker


def mapstar(args):
    """Run one map() chunk: args is (func, items)."""
    func, items = args
    return list(map(func, items))        # map() runs the loop in C


def starmapstar(args):
    """Run one starmap() chunk: args is (func, argument tuples)."""
    func, items = args
    return list(itertools.starmap(func, items))


def _dumps_with_header(job, i, obj):
    # Bytes, not a view of a BytesIO: queued tasks live in the pool's
    # reference cycles, where such a view breaks the garbage collector on
    # 3.12+ (see reduction._ChunkSink).
    out = [_HEADER.pack(job, i)]
    reduction.ForkingPickler(reduction._ChunkSink(out.append)).dump(obj)
    return b''.join(out)


def _wrap(exc, wrap_exception):
    if wrap_exception:
        return ExceptionWithTraceback(exc, exc.__traceback__)
    return exc


def worker(conn, initializer=None, initargs=(), maxtasks=None,
           wrap_exception=False, close_fds=()):
    """Run in a pool worker process: run `initializer`, then tasks read
    from `conn` until told to stop, the parent goes away, or `maxtasks`
    tasks are done.  Each result goes back on `conn`."""
    for fd in close_fds:
        # Inherited through fork: the other workers' channels.
        try:
            os.close(fd)
        except OSError:
            pass
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as e:
            try:
                conn.send_bytes(_dumps_with_header(
                    _INIT_FAILED, 0, ExceptionWithTraceback(e, e.__traceback__)))
            except Exception:
                pass
            raise
    conn.send_bytes(_HEADER.pack(_READY, 0))
    loads = reduction.ForkingPickler.loads
    done = 0
    while maxtasks is None or done < maxtasks:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            break
        if not data:
            break
        job, i = _HEADER.unpack_from(data)
        try:
            try:
                func, args, kwds = loads(memoryview(data)[_HEADER.size:])
            except Exception as e:
                raise _unpickling_hint(e)
            result = (True, func(*args, **kwds))
        except Exception as e:
            result = (False, _wrap(e, wrap_exception))
        del data
        try:
            out = _dumps_with_header(job, i, result)
        except Exception as e:
            err = MaybeEncodingError(e, result[1])
            out = _dumps_with_header(job, i, (False, _wrap(err, wrap_exception)))
        result = None
        conn.send_bytes(out)
        out = None
        done += 1
    conn.close()

# --------------------------------------------------------------- results


class ApplyResult:
    """The result of apply_async(): get(), wait(), ready(), successful()."""

    def __init__(self, pool, callback, error_callback):
        self._pool = pool
        self._event = threading.Event()
        self._job = next(job_counter)
        self._cache = pool._cache
        self._callback = callback
        self._error_callback = error_callback
        self._success = None
        self._value = None
        self._cache[self._job] = self

    def ready(self):
        """Whether the call has completed."""
        return self._event.is_set()

    def successful(self):
        """Whether the call completed without raising; ValueError if it has
        not completed yet."""
        if not self.ready():
            raise ValueError('{0!r} not ready'.format(self))
        return self._success

    def wait(self, timeout=None):
        """Wait until the result is available or `timeout` seconds pass."""
        self._event.wait(timeout)

    def get(self, timeout=None):
        """Return the result, or raise the call's exception; TimeoutError
        if it is not ready within `timeout` seconds."""
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _finish(self, success, value):
        # Callbacks run before waiters wake (the stdlib's order).
        self._success, self._value = success, value
        _run_callback(self._callback if success else self._error_callback,
                      value)
        self._event.set()
        self._cache.pop(self._job, None)
        self._pool = None

    def _set(self, i, obj):
        if not self._event.is_set():
            self._finish(*obj)

    def _start(self, i):
        # Called as its task goes to a worker: False skips the task.
        return True

    def _abort(self, exc):
        if not self._event.is_set():
            self._finish(False, exc)

    __class_getitem__ = classmethod(lambda cls, item: cls)


AsyncResult = ApplyResult


def _run_callback(callback, value):
    # A raising callback must not take the pool's handler down with it.
    if callback is None:
        return
    try:
        callback(value)
    except Exception:
        sys.stderr.write('Exception in pool callback %r:\n' % (callback,))
        traceback.print_exc()


class MapResult(ApplyResult):
    """The result of map_async(): a list assembled from chunk results."""

    def __init__(self, pool, chunksize, length, callback, error_callback):
        super().__init__(pool, callback, error_callback)
        self._lock = threading.Lock()
        self._value = [None] * length
        self._chunksize = chunksize
        if chunksize <= 0:
            self._number_left = 0
            self._finish(True, self._value)
        else:
            self._number_left = length // chunksize + bool(length % chunksize)

    def _abort(self, exc):
        with self._lock:
            if self._event.is_set() or self._success is False:
                return
            self._success = False
        self._finish(False, exc)

    def _set(self, i, obj):
        success, result = obj
        with self._lock:
            if self._event.is_set() or self._success is False:
                return
            if not success:
                self._success = False
                finish = True
            else:
                start = i * self._chunksize
                self._value[start:start + len(result)] = result
                self._number_left -= 1
                finish = self._number_left == 0
        if finish:
            if success:
                self._finish(True, self._value)
            else:
                self._finish(False, result)


class IMapIterator:
    """The iterator of imap(): results in order, chunk by chunk."""

    _ordered = True

    def __init__(self, pool):
        self._pool = pool
        self._cond = threading.Condition(threading.Lock())
        self._job = next(job_counter)
        self._cache = pool._cache
        self._chunks = {} if self._ordered else collections.deque()
        self._buffer = collections.deque()
        self._index = 0          # next chunk to yield
        self._received = 0
        self._length = None      # number of chunks, once known
        self._error = None       # set when the pool stops under it
        self._cache[self._job] = self

    def __iter__(self):
        return self

    def next(self, timeout=None):
        """Return the next result; TimeoutError if none arrives within
        `timeout` seconds; StopIteration at the end."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                if self._buffer:
                    return self._buffer.popleft()
                if self._length is not None and self._index >= self._length:
                    self._pool = None
                    raise StopIteration from None
                chunk = self._take()
                if chunk is not None:
                    success, value = chunk
                    self._index += 1
                    if not success:
                        raise value
                    self._buffer.extend(value)
                    continue
                if self._error is not None:
                    exc, self._error = self._error, None
                    self._length = self._index
                    raise exc
                if deadline is None:
                    self._cond.wait()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._cond.wait(left):
                        if self._buffer or self._has_next():
                            continue
                        raise TimeoutError from None

    __next__ = next

    def _take(self):
        if self._ordered:
            return self._chunks.pop(self._index, None)
        return self._chunks.popleft() if self._chunks else None

    def _start(self, i):
        return True

    def _has_next(self):
        if self._ordered:
            return self._index in self._chunks
        return bool(self._chunks)

    def _set(self, i, obj):
        with self._cond:
            if self._ordered:
                self._chunks[i] = obj
            else:
                self._chunks.append(obj)
            self._received += 1
            self._cond.notify()
            if self._length is not None and self._received >= self._length:
                self._cache.pop(self._job, None)

    def _abort(self, exc):
        with self._cond:
            if self._length is None or self._received < self._length:
                self._error = exc
                self._cond.notify_all()
            self._cache.pop(self._job, None)

    def _set_length(self, length):
        with self._cond:
            self._length = length
            self._cond.notify()
            if self._received >= length:
                self._cache.pop(self._job, None)


class IMapUnorderedIterator(IMapIterator):
    """The iterator of imap_unordered(): results as chunks complete."""

    _ordered = False

# ------------------------------------------------------------ the pools


def _check_chunksize(chunksize):
    if chunksize < 1:
        raise ValueError('Chunksize must be 1+, not {0:n}'.format(chunksize))


def _pickling_hint(exc):
    if hasattr(exc, 'add_note'):
        exc.add_note('(multiprocessing_c.pool: the task function and its '
                     'arguments are pickled to reach a worker process; use '
                     'module-level functions and picklable arguments, or a '
                     'ThreadPool)')
    return exc


def _unpickling_hint(exc):
    if hasattr(exc, 'add_note'):
        exc.add_note('(multiprocessing_c.pool: the worker process could not '
                     'unpickle the task; under spawn a worker imports the '
                     "function's module afresh, so the function and the "
                     'classes of its arguments must be importable there, '
                     'not defined in an interactive session or inside '
                     'another function)')
    return exc


class Pool:
    """A pool of worker processes that run tasks submitted with apply,
    map, imap and friends.  A worker that dies fails the task it held with
    WorkerLostError and is replaced."""

    _wrap_exception = True

    @staticmethod
    def Process(ctx, *args, **kwds):
        return ctx.Process(*args, **kwds)

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None):
        # Set first, so that __del__ has what it reads whatever fails below.
        self._pool = []
        self._state = INIT
        self._ctx = context or _get_default_context()
        self._cache = {}
        self._feeder = None
        if processes is None:
            processes = util._default_worker_count() or 1
        if processes < 1:
            raise ValueError('Number of processes must be at least 1')
        if maxtasksperchild is not None:
            if (not isinstance(maxtasksperchild, int)
                    or isinstance(maxtasksperchild, bool)
                    or maxtasksperchild <= 0):
                raise ValueError('maxtasksperchild must be a positive int '
                                 'or None')
        if initializer is not None and not callable(initializer):
            raise TypeError('initializer must be a callable')
        self._processes = processes
        self._initializer = initializer
        self._initargs = initargs
        self._maxtasksperchild = maxtasksperchild
        self._dispatcher = self._make_dispatcher()
        self._taskqueue = self._dispatcher.taskqueue
        self._dispatcher.start()
        self._state = RUN
        self._terminate = util.Finalize(self, self._dispatcher.terminate,
                                        exitpriority=15)

    def _make_dispatcher(self):
        return _ProcessDispatcher(
            self._pool, self._cache, self._ctx, type(self).Process,
            self._processes, self._initializer, self._initargs,
            self._maxtasksperchild, self._wrap_exception)

    def __del__(self, _warn=warnings.warn, RUN=RUN):
        if getattr(self, '_state', None) == RUN:
            _warn('unclosed running multiprocessing pool %r' % (self,),
                  ResourceWarning, source=self)

    def __repr__(self):
        return '<%s.%s state=%s pool_size=%d>' % (
            type(self).__module__, type(self).__qualname__,
            getattr(self, '_state', None), len(getattr(self, '_pool', ())))

    def __reduce__(self):
        raise NotImplementedError(
            'pool objects cannot be passed between processes or pickled')

    def _check_running(self):
        if self._state != RUN:
            raise ValueError('Pool not running')

    def _repopulate_pool(self):
        """Ask the handler to bring the pool back to its size."""
        self._dispatcher.wake()

    # -- submitting

    def apply(self, func, args=(), kwds={}):
        """Call func(*args, **kwds) in a worker and return its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds={}, callback=None,
                    error_callback=None, *, timeout=None):
        """Call func(*args, **kwds) in a worker; return an AsyncResult.
        With `timeout`, a worker still running the call after that many
        seconds is killed and replaced, and the call fails with
        TimeoutError."""
        self._check_running()
        result = ApplyResult(self, callback, error_callback)
        self._dispatcher.submit(result, 0, func, args, kwds, timeout)
        return result

    def map(self, func, iterable, chunksize=None, *, timeout=None):
        """Return [func(x) for x in iterable], computed by the workers in
        chunks of `chunksize` items."""
        return self._map_async(func, iterable, mapstar, chunksize,
                               timeout=timeout).get()

    def starmap(self, func, iterable, chunksize=None, *, timeout=None):
        """Return [func(*args) for args in iterable], computed in chunks."""
        return self._map_async(func, iterable, starmapstar, chunksize,
                               timeout=timeout).get()

    def map_async(self, func, iterable, chunksize=None, callback=None,
                  error_callback=None, *, timeout=None):
        """Like map(), returning a MapResult."""
        return self._map_async(func, iterable, mapstar, chunksize, callback,
                               error_callback, timeout)

    def starmap_async(self, func, iterable, chunksize=None, callback=None,
                      error_callback=None, *, timeout=None):
        """Like starmap(), returning a MapResult."""
        return self._map_async(func, iterable, starmapstar, chunksize,
                               callback, error_callback, timeout)

    def _map_async(self, func, iterable, mapper, chunksize=None,
                   callback=None, error_callback=None, timeout=None):
        self._check_running()
        if not hasattr(iterable, '__len__'):
            iterable = list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(iterable), self._processes * 4)
            if extra:
                chunksize += 1
        if len(iterable) == 0:
            chunksize = 0
        if not isinstance(iterable, (list, tuple)):
            iterable = list(iterable)
        result = MapResult(self, chunksize, len(iterable), callback,
                           error_callback)
        submit = self._dispatcher.submit
        for i, start in enumerate(range(0, len(iterable), chunksize or 1)):
            if result.ready():
                break
            chunk = iterable[start:start + chunksize]
            submit(result, i, mapper, ((func, chunk),), {}, timeout)
        return result

    def imap(self, func, iterable, chunksize=1):
        """Like map(), but lazily: an iterator over the results in order,
        consuming `iterable` as the workers need it."""
        return self._imap(IMapIterator, func, iterable, chunksize)

    def imap_unordered(self, func, iterable, chunksize=1):
        """Like imap(), yielding results in completion order."""
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize)

    def _imap(self, cls, func, iterable, chunksize):
        self._check_running()
        _check_chunksize(chunksize)
        result = cls(self)
        self._get_feeder().add(result, func, iterable, chunksize)
        return result

    def _get_feeder(self):
        if self._feeder is None:
            self._feeder = _Feeder(self._dispatcher,
                                   max(256, 8 * self._processes))
        return self._feeder

    # -- lifetime

    def close(self):
        """Accept no more tasks; workers exit once all tasks are done."""
        util.debug('closing pool')
        if self._state == RUN:
            self._state = CLOSE
            if self._feeder is not None:
                self._feeder.close()     # closes the dispatcher when done
            else:
                self._dispatcher.close()

    def terminate(self):
        """Stop the workers at once; pending tasks fail with
        WorkerLostError."""
        util.debug('terminating pool')
        self._state = TERMINATE
        if self._feeder is not None:
            self._feeder.terminate()
        self._terminate()

    def join(self):
        """Wait for the workers to exit; close() or terminate() first."""
        util.debug('joining pool')
        if self._state == RUN:
            raise ValueError('Pool is still running')
        elif self._state not in (CLOSE, TERMINATE):
            raise ValueError('In unknown state')
        if self._feeder is not None:
            self._feeder.join()
        self._dispatcher.join()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()


def _get_default_context():
    from . import context as _c
    return _c._default_context.get_context()


class _Feeder:
    """A thread that consumes imap() iterables into chunked tasks, so that
    a slow or endless generator never blocks the caller or the handler.
    It keeps the dispatcher's backlog bounded."""

    def __init__(self, dispatcher, limit):
        self._dispatcher = dispatcher
        self._limit = limit
        self._jobs = queue.SimpleQueue()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='pool-feeder')
        self._thread.start()

    def add(self, result, func, iterable, chunksize):
        self._jobs.put((result, func, iterable, chunksize))

    def close(self):
        self._jobs.put(None)

    def terminate(self):
        self._stopping = True
        self._jobs.put(None)

    def join(self):
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self):
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    break
                self._feed(*job)
                job = None
        finally:
            if not self._stopping:
                self._dispatcher.close()

    def _feed(self, result, func, iterable, chunksize):
        disp = self._dispatcher
        mapper = mapstar
        i = -1
        try:
            it = iter(iterable)
            while True:
                chunk = list(itertools.islice(it, chunksize))
                if not chunk:
                    break
                if self._stopping:
                    return
                while disp.backlog() >= self._limit and not self._stopping:
                    disp.wait_for_space(self._limit // 2)
                i += 1
                if chunksize == 1:
                    # No chunk to unpack in the worker: one call per item.
                    disp.submit(result, i, _one, ((func, chunk[0]),), {}, None)
                else:
                    disp.submit(result, i, mapper, ((func, chunk),), {}, None)
                if disp._broken is not None:
                    break        # every further chunk would fail alike
        except Exception as e:
            result._set(i + 1, (False, e))
            result._set_length(i + 2)
        else:
            result._set_length(i + 1)


def _one(args):
    func, item = args
    return [func(item)]

# ------------------------------------------------- the process dispatcher


class _Worker:
    """The parent's record of one worker process."""

    __slots__ = ('process', 'conn', 'sentinel', 'ready', 'tasks', 'deadline',
                 'done', 'retiring', 'eof_at')

    def __init__(self, process, conn):
        self.process = process
        self.conn = conn
        self.sentinel = getattr(process, "sentinel", None)
        self.ready = False
        # Tasks sent, in order: the first is the one it runs, a second
        # waits in its pipe (see _PREFETCH_BYTES).
        self.tasks = collections.deque()
        self.deadline = None     # of the first task, if it has a timeout
        self.done = 0
        self.retiring = False    # will exit after its last task (maxtasks)
        self.eof_at = None


# A worker may hold a second task in its pipe while it runs the first, so
# that it need not wait for the handler between tiny tasks.  Only a task
# this small is sent early: it fits the socket buffer, so the send never
# blocks on a worker busy computing (while that worker might be blocked
# sending us a large result).  A worker that dies never started its
# queued task: that one is sent to another worker.
_PREFETCH_BYTES = 16384


class _ProcessDispatcher:
    """Owns the worker processes and the handler thread.  Holds no
    reference to the Pool, so that an unclosed pool can be collected (and
    its finalizer then stops the workers)."""

    def __init__(self, pool_list, cache, ctx, process_factory, processes,
                 initializer, initargs, maxtasks, wrap_exception):
        self.taskqueue = queue.SimpleQueue()
        self._retry = collections.deque()
        self._workers = pool_list            # the Pool's _pool: processes
        self._records = []                   # _Worker, same order
        self._cache = cache
        self._ctx = ctx
        self._process_factory = process_factory
        self._processes = processes
        self._initializer = initializer
        self._initargs = initargs
        self._maxtasks = maxtasks
        self._wrap_exception = wrap_exception
        self._closing = False
        self._terminating = False
        self._broken = None
        self._thread = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._wake_pending = False
        self._fork = _start_method(ctx) == 'fork'
        self._space = threading.Event()
        self._space_low = -1
        self._waitset_dirty = True
        self._timed = False      # some worker has a deadline or lost its pipe

    # -- called from the pool's threads

    def submit(self, result, i, func, args, kwds, timeout):
        if timeout is not None and not timeout > 0:
            raise ValueError('timeout must be a positive number of seconds')
        try:
            data = _dumps_with_header(result._job, i, (func, args, kwds))
        except Exception as e:
            result._set(i, (False, _pickling_hint(e)))
            return
        if self._broken is not None:
            result._set(i, (False, self._broken))
            return
        self.taskqueue.put((result, i, data, timeout))
        self.wake()

    def backlog(self):
        return self.taskqueue.qsize()

    def wait_for_space(self, low):
        # The feeder sleeps until the handler has drained the backlog to
        # `low` tasks (checked after each dispatch), or briefly.
        self._space_low = low
        self._space.clear()
        if self.taskqueue.qsize() > low:
            self._space.wait(0.05)

    def wake(self):
        if not self._wake_pending:
            self._wake_pending = True
            try:
                os.write(self._wake_w, b'\0')
            except (BlockingIOError, OSError):
                pass

    def close(self):
        self._closing = True
        self.wake()

    def terminate(self):
        # Also the pool's finalizer: at exit, or when the pool is collected.
        self._terminating = True
        self.wake()
        self.join()

    def join(self):
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()

    # -- start

    def start(self):
        try:
            for _ in range(self._processes):
                self._start_worker()
        except BaseException:
            self._stop_workers(kill=True)
            self._close_wake()
            raise
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='pool-handler')
        self._thread.start()

    def _start_worker(self):
        from .connection import Pipe
        parent_conn, child_conn = Pipe()
        close_fds = ()
        if self._fork:
            close_fds = [self._wake_r, self._wake_w,
                         parent_conn.fileno()] + [
                r.conn.fileno() for r in self._records if r.conn is not None]
        try:
            w = self._process_factory(
                self._ctx, target=worker,
                args=(child_conn, self._initializer, self._initargs,
                      self._maxtasks, self._wrap_exception, close_fds))
            w.name = w.name.replace('Process', 'PoolWorker')
            w.daemon = True
            w.start()
        except BaseException:
            parent_conn.close()
            child_conn.close()
            raise
        child_conn.close()
        rec = _Worker(w, parent_conn)
        self._records.append(rec)
        self._waitset_dirty = True
        self._workers.append(w)
        util.debug('added worker')
        return rec

    # -- the handler thread

    def _run(self):
        try:
            self._loop()
        except BaseException as e:
            # A bug here must not leave callers waiting forever.
            traceback.print_exc()
            self._broken = WorkerLostError('the pool handler failed: %r' % e)
            self._terminating = True
        finally:
            try:
                self._stop_workers(kill=self._terminating)
            finally:
                self._fail_pending(self._broken or _terminated())
                self._close_wake()

    def _loop(self):
        from .connection import wait
        while not self._terminating:
            self._maintain()
            self._dispatch()
            if self._space_low >= 0 and self.taskqueue.qsize() <= self._space_low:
                self._space_low = -1
                self._space.set()
            if self._closing and self._idle():
                return
            if self._waitset_dirty:
                # Rebuilt only when a worker comes, goes or loses its pipe.
                self._waitset_dirty = False
                objs = {self._wake_r: None}
                for r in self._records:
                    if r.conn is not None and r.eof_at is None:
                        objs[r.conn] = r
                    objs[r.sentinel] = r
                objlist = list(objs)
            timeout = self._next_timeout() if self._timed else None
            ready = wait(objlist, timeout)
            for obj in ready:
                if isinstance(obj, int) and obj == self._wake_r:
                    # Drain, then clear: a wake() in between then writes
                    # again rather than being swallowed.
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    self._wake_pending = False
                    continue
                rec = objs[obj]
                if rec not in self._records:
                    continue
                if obj is rec.conn:
                    self._on_readable(rec)
                else:
                    self._reap(rec)
            if self._timed:
                self._check_deadlines()

    def _idle(self):
        return (not self._retry and self.taskqueue.empty()
                and all(not r.tasks for r in self._records))

    def _next_timeout(self):
        now = time.monotonic()
        nearest = None
        for r in self._records:
            for t in (r.deadline, r.eof_at and r.eof_at + 1.0):
                if t and (nearest is None or t < nearest):
                    nearest = t
        if nearest is None:
            self._timed = False
            return None
        return max(0.0, nearest - now)

    def _check_deadlines(self):
        now = time.monotonic()
        for r in list(self._records):
            if r.deadline is not None and now >= r.deadline and r.tasks:
                result, i, _, timeout = r.tasks.popleft()
                self._requeue(r)
                r.deadline = None
                self._retire(r)          # no more tasks for it
                _kill(r.process)
                util.info('killed worker %s: task over its timeout', r.process.pid)
                result._set(i, (False, TimeoutError(
                    'task exceeded its timeout of %g s; worker process %s '
                    'was killed and replaced' % (timeout, r.process.pid))))
            elif r.eof_at is not None and now >= r.eof_at + 1.0:
                # Its channel is gone but it lives on: useless, stop it.
                _kill(r.process)
                r.eof_at = now + 3600

    def _maintain(self):
        if self._broken is not None or self._terminating:
            return
        if self._closing and self._idle():
            return
        live = sum(1 for r in self._records if not r.retiring)
        for _ in range(self._processes - live):
            self._start_worker()

    def _next_task(self):
        if self._retry:
            return self._retry.popleft()
        try:
            return self.taskqueue.get_nowait()
        except queue.Empty:
            return None

    def _requeue(self, rec):
        # Its queued tasks never started: first in line for other workers.
        while len(rec.tasks) > 0:
            self._retry.appendleft(rec.tasks.pop())

    def _can_take(self, rec, depth):
        if not rec.ready or rec.retiring or rec.conn is None:
            return False
        if len(rec.tasks) >= depth:
            return False
        return (self._maxtasks is None
                or rec.done + len(rec.tasks) < self._maxtasks)

    def _dispatch(self):
        # Idle workers first; then a second, small task for busy ones.
        for depth in (1, 2):
            for r in self._records:
                if self._can_take(r, depth) and not self._feed(r, depth):
                    return

    def _feed(self, rec, depth):
        # Give `rec` one more task; False when there is none left to give.
        while True:
            task = self._next_task()
            if task is None:
                return False
            if rec.tasks and len(task[2]) > _PREFETCH_BYTES:
                self._retry.appendleft(task)
                return depth < 2
            if self._send(rec, task):
                return True

    def _send(self, rec, task):
        # True once `rec` holds a task (or cannot take one any more).
        result, i, data, timeout = task
        if self._broken is not None:
            result._set(i, (False, self._broken))
            return False
        if not result._start(i):
            return False         # cancelled meanwhile (executors)
        try:
            rec.conn.send_bytes(data)
        except OSError:
            # Never delivered, so never started: someone else runs it.
            self._retry.appendleft(task)
            rec.ready = False
            return True
        rec.tasks.append(task)
        if len(rec.tasks) == 1 and timeout is not None:
            rec.deadline = time.monotonic() + timeout
            self._timed = True
        return True

    def _on_readable(self, rec):
        try:
            data = rec.conn.recv_bytes()
        except (EOFError, OSError):
            rec.eof_at = time.monotonic()
            self._waitset_dirty = self._timed = True
            return
        self._on_message(rec, data)
        for depth in (1, 2):
            if self._can_take(rec, depth):
                self._feed(rec, depth)

    def _on_message(self, rec, data):
        job, i = _HEADER.unpack_from(data)
        if job == _READY:
            rec.ready = True
            return
        try:
            obj = reduction.ForkingPickler.loads(memoryview(data)[_HEADER.size:])
        except Exception as e:
            obj = (False, e)
        if job == _INIT_FAILED:
            self._break(obj)
            return
        task = rec.tasks.popleft() if rec.tasks else None
        rec.deadline = None
        if rec.tasks and rec.tasks[0][3] is not None:
            rec.deadline = time.monotonic() + rec.tasks[0][3]
            self._timed = True
        rec.done += 1
        if self._maxtasks is not None and rec.done >= self._maxtasks:
            self._retire(rec)
            self._maintain()     # replaced before the caller hears back
        result = self._cache.get(job)
        if task is not None and task[0]._job == job:
            result = task[0]
        if result is not None:
            result._set(i, obj)

    def _retire(self, rec):
        # It is on its way out: _pool shows its replacement instead.
        rec.retiring = True
        try:
            self._workers.remove(rec.process)
        except ValueError:
            pass

    def _reap(self, rec):
        # Read what it sent before it went, then account for the task.
        while rec.conn is not None and rec.eof_at is None:
            try:
                if not rec.conn.poll(0):
                    break
                data = rec.conn.recv_bytes()
            except (EOFError, OSError):
                break
            self._on_message(rec, data)
        rec.process.join(5)
        exitcode = rec.process.exitcode
        pid = rec.process.pid
        self._records.remove(rec)
        self._waitset_dirty = True
        try:
            self._workers.remove(rec.process)
        except ValueError:
            pass
        if rec.conn is not None:
            rec.conn.close()
            rec.conn = None
        util.debug('worker %s exited with %s', pid, exitcode)
        if rec.tasks:
            result, i = rec.tasks.popleft()[:2]
            self._requeue(rec)
            result._set(i, (False, _lost(pid, exitcode)))
            self._after_loss(pid, exitcode)
        elif not rec.ready and not self._terminating:
            self._break(_lost(pid, exitcode, 'before its initializer finished'))

    def _after_loss(self, pid, exitcode):
        # A worker died holding a task; the pool just replaces it.
        pass

    def _break(self, exc):
        # A worker cannot start: fail everything rather than respawn forever.
        if self._broken is None:
            self._broken = exc
        self._fail_pending(self._broken)

    def _fail_pending(self, exc):
        while True:
            task = self._next_task()
            if task is None:
                break
            task[0]._set(task[1], (False, exc))
        for r in self._records:
            while r.tasks:
                result, i = r.tasks.popleft()[:2]
                result._set(i, (False, exc))
        if self._terminating or self._broken is not None:
            for result in list(self._cache.values()):
                result._abort(exc)

    def _stop_workers(self, kill):
        records = list(self._records)
        for r in records:
            if kill:
                try:
                    r.process.terminate()
                except Exception:
                    pass
            elif r.conn is not None:
                try:
                    r.conn.send_bytes(_STOP)
                except OSError:
                    pass
        deadline = time.monotonic() + (1.0 if kill else 10.0)
        for r in records:
            try:
                left = max(0.0, deadline - time.monotonic())
                r.process.join(left) if left else r.process.join(0)
            except TypeError:
                r.process.join()
            if r.process.is_alive():
                _kill(r.process)
                try:
                    r.process.join(5)
                except TypeError:
                    r.process.join()
            if r.conn is not None:
                r.conn.close()
                r.conn = None
        for r in records:
            while r.tasks:
                result, i = r.tasks.popleft()[:2]
                result._set(i, (False, _terminated()))
        self._records[:] = []

    def _close_wake(self):
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1


def _kill(process):
    try:
        process.kill()
    except (AttributeError, OSError, ValueError):
        try:
            process.terminate()
        except Exception:
            pass


def _start_method(ctx):
    try:
        method = ctx.get_start_method()
    except Exception:
        return None
    return method if isinstance(method, str) else None

# ---------------------------------------------------------- ThreadPool


class ThreadPool(Pool):
    """A Pool whose workers are threads of this process: same API, no
    pickling, exceptions re-raised as they are."""

    _wrap_exception = False

    @staticmethod
    def Process(ctx, *args, **kwds):
        from .dummy import DummyProcess
        return DummyProcess(*args, **kwds)

    def __init__(self, processes=None, initializer=None, initargs=()):
        Pool.__init__(self, processes, initializer, initargs)

    def _make_dispatcher(self):
        return _ThreadDispatcher(self._pool, self._cache, self._processes,
                                 self._initializer, self._initargs)


class _ThreadDispatcher:
    """Worker threads pulling tasks from one queue."""

    def __init__(self, pool_list, cache, processes, initializer, initargs):
        self.taskqueue = queue.SimpleQueue()
        self._workers = pool_list
        self._cache = cache
        self._processes = processes
        self._initializer = initializer
        self._initargs = initargs
        self._terminating = False
        self._closed = False
        self._broken = None
        self._lock = threading.Lock()

    def start(self):
        for n in range(self._processes):
            t = threading.Thread(target=self._run, daemon=True,
                                 name='ThreadPoolWorker-%d' % (n + 1))
            self._workers.append(t)
            t.start()

    def submit(self, result, i, func, args, kwds, timeout):
        if timeout is not None:
            raise ValueError('ThreadPool cannot enforce a per-task timeout: '
                             'a thread cannot be killed; use Pool')
        if self._broken is not None:
            result._set(i, (False, self._broken))
            return
        self.taskqueue.put((result, i, func, args, kwds))

    def backlog(self):
        return self.taskqueue.qsize()

    def wait_for_space(self, low):
        time.sleep(0.001)

    def wake(self):
        pass

    def close(self):
        with self._lock:
            if not self._closed:
                self._closed = True
                for _ in self._workers:
                    self.taskqueue.put(None)

    def terminate(self):
        self._terminating = True
        self.close()
        self._fail_queued()

    def join(self):
        # After terminate(), a thread still inside a task cannot be
        # stopped: it is a daemon and exits after the task; not waited for.
        me = threading.current_thread()
        for t in list(self._workers):
            if t is not me and not self._terminating:
                t.join()
        self._fail_queued()

    def _fail_queued(self):
        if self._terminating or self._broken is not None:
            exc = self._broken or _terminated()
            while True:
                try:
                    task = self.taskqueue.get_nowait()
                except queue.Empty:
                    break
                if task is not None:
                    task[0]._set(task[1], (False, exc))
            for _ in self._workers:
                self.taskqueue.put(None)     # the drain took the stops
            for result in list(self._cache.values()):
                result._abort(exc)

    def _run(self):
        if self._initializer is not None:
            try:
                self._initializer(*self._initargs)
            except BaseException as e:
                if self._broken is None:
                    self._broken = e
                traceback.print_exc()
                self._terminating = True
        while True:
            task = self.taskqueue.get()
            if task is None:
                return
            result, i, func, args, kwds = task
            task = None
            if self._terminating:
                result._set(i, (False, self._broken or _terminated()))
                continue
            try:
                obj = (True, func(*args, **kwds))
            except Exception as e:
                obj = (False, e)
            result._set(i, obj)
            # Hold nothing of the task while waiting for the next one.
            result = obj = func = args = kwds = None
