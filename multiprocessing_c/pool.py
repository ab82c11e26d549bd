"""Pools of workers: Pool (processes) and ThreadPool (threads).

The process pool never shares a lock with its workers.  Each worker has a
duplex pipe of its own: the parent sends tasks on it, in order, and reads
the results back on it in the same order.  So the parent always knows
which tasks each worker holds and which one it is running, and a worker
that dies (os._exit, a segfault, SIGKILL) fails exactly that task with
WorkerLostError (the tasks queued behind it go to other workers), is
replaced, and the pool keeps serving.  A handler thread waits on every
worker's pipe and sentinel at once with connection.wait; a thread that
submits a task while a worker is free sends it itself.

Tasks are pickled once in the submitting thread (so pickling errors land
where the task was submitted) and travel as bytes behind a 24-byte header
(job id, chunk index; for results, how long the task ran), which lets the
worker report a task whose arguments fail to unpickle.  map() batches
items into chunks.
"""
import collections
import itertools
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import warnings

from . import _mpcore
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

# Frame header of tasks and results: job id, chunk index, and (results)
# how many seconds the task took to run.
_HEADER = struct.Struct('<qqd')
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


def rebuild_exc(exc, tb):
    """Unpickles an ExceptionWithTraceback: `exc`, caused by the worker's
    traceback `tb`."""
    cause = RemoteTraceback(tb)
    exc.__cause__ = cause
    return exc


class ExceptionWithTraceback:
    """An exception and its traceback text, pickled together; unpickles to
    the exception with a RemoteTraceback as its cause."""

    def __init__(self, exc, tb):
        text = ''.join(traceback.format_exception(type(exc), exc, tb))
        self.exc, self.tb = exc, '\n"""\n' + text + '"""'

    def __reduce__(self):
        return (rebuild_exc, (self.exc, self.tb))


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


def _pack(job, i, obj, took=0.0):
    """Return one message: the (job, i, took) header, then `obj` pickled
    (plain data in C, the rest by reduction's pooled pickler)."""
    return _HEADER.pack(job, i, took) + _mpcore.dumps(obj)


def _decode(message):
    """The object of a message made by _pack; a failure to unpickle it is
    returned as the outcome (False, exception)."""
    try:
        return _mpcore.loads(memoryview(message)[_HEADER.size:])
    except Exception as e:
        return (False, e)


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
                conn.send_bytes(_pack(
                    _INIT_FAILED, 0, ExceptionWithTraceback(e, e.__traceback__)))
            except Exception:
                pass
            raise
    conn.send_bytes(_HEADER.pack(_READY, 0, 0.0))
    loads = _mpcore.loads
    clock = time.perf_counter
    done = 0
    while maxtasks is None or done < maxtasks:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            break
        if not data:
            break
        job, i, _ = _HEADER.unpack_from(data)
        started = clock()
        try:
            try:
                func, args, kwds = loads(memoryview(data)[_HEADER.size:])
            except Exception as e:
                raise _unpickling_hint(e)
            result = (True, func(*args, **kwds))
        except Exception as e:
            result = (False, _wrap(e, wrap_exception))
        del data
        took = clock() - started
        try:
            out = _pack(job, i, result, took)
        except Exception as e:
            err = MaybeEncodingError(e, result[1])
            out = _pack(job, i, (False, _wrap(err, wrap_exception)), took)
        result = None
        conn.send_bytes(out)
        out = None
        done += 1
    conn.close()

# --------------------------------------------------------------- results


class ApplyResult:
    """The result of apply_async(): get(), wait(), ready(), successful()."""

    def __init__(self, pool, callback, error_callback):
        self._callback, self._error_callback = callback, error_callback
        self._success = self._value = None
        self._event = threading.Event()
        self._pool = pool
        self._cache = _enlist(self, pool._cache)

    def ready(self):
        """Whether the call has completed."""
        return self._event.is_set()

    def successful(self):
        """Whether the call completed without raising; ValueError if it has
        not completed yet."""
        if self._event.is_set():
            return self._success
        raise ValueError('%r not ready' % (self,))

    def wait(self, timeout=None):
        """Wait until the result is available or `timeout` seconds pass."""
        self._event.wait(timeout)

    def get(self, timeout=None):
        """Return the result, or raise the call's exception; TimeoutError
        if it is not ready within `timeout` seconds."""
        self.wait(timeout)
        if not self._event.is_set():
            raise TimeoutError
        if not self._success:
            raise self._value
        return self._value

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


def _enlist(result, cache):
    # Give `result` its job id and file it in the pool's cache.
    result._job = job = next(job_counter)
    cache[job] = result
    return cache


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

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None, *, backend=None):
        # __del__ and __repr__ read these, whatever fails further down.
        self._state, self._pool, self._cache, self._feeder = INIT, [], {}, None
        self._ctx = context if context is not None else _get_default_context()
        self._processes = _pool_size(processes)
        self._maxtasksperchild = _task_limit(maxtasksperchild)
        if not (initializer is None or callable(initializer)):
            raise TypeError('initializer must be a callable')
        self._initializer, self._initargs = initializer, initargs
        dispatcher = self._dispatcher = self._make_dispatcher()
        self._taskqueue = dispatcher.taskqueue
        dispatcher.start()
        self._terminate = util.Finalize(self, dispatcher.terminate,
                                        exitpriority=15)
        self._state = RUN

    # Workers get exceptions to the caller with their traceback as text.
    _wrap_exception = True

    @staticmethod
    def Process(ctx, *args, **kwds):
        return ctx.Process(*args, **kwds)

    def __new__(cls, *args, backend=None, **kwds):
        # backend="ray"/"dask" (or MULTIPROCESSING_C_POOL_BACKEND): the
        # engine's Pool subclass, from multiprocessing_c.backends.
        if cls is Pool:
            backend = backend or os.environ.get(
                'MULTIPROCESSING_C_POOL_BACKEND')
            if backend:
                from .backends import pool_class
                cls = pool_class(backend)
        return object.__new__(cls)

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

    # `with Pool() as pool:` terminates the pool on the way out.
    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, *exc_info):
        self.terminate()

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
        # A range stays one: its slices are ranges, which cost nothing to
        # make and a few bytes to pickle, however many items they hold.
        if not isinstance(iterable, (list, tuple, range)):
            iterable = list(iterable)
        total = len(iterable)
        if not total:
            chunksize = 0
        elif chunksize is None:
            # About four chunks per worker, as the stdlib cuts them.
            chunksize = -(-total // (4 * self._processes))
        result = MapResult(self, chunksize, total, callback, error_callback)
        submit = self._dispatcher.submit
        step = chunksize or 1
        for i, start in enumerate(range(0, total, step)):
            if result.ready():
                break
            submit(result, i, mapper, ((func, iterable[start:start + step]),),
                   {}, timeout)
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
        state = self._state
        if state not in (CLOSE, TERMINATE):
            raise ValueError('Pool is still running' if state == RUN
                             else 'In unknown state')
        if self._feeder is not None:
            self._feeder.join()
        self._dispatcher.join()


def _pool_size(processes):
    if processes is None:
        return util._default_worker_count() or 1
    if processes >= 1:
        return processes
    raise ValueError('Number of processes must be at least 1')


def _task_limit(maxtasks):
    ok = maxtasks is None or (type(maxtasks) is not bool
                              and isinstance(maxtasks, int) and maxtasks > 0)
    if not ok:
        raise ValueError('maxtasksperchild must be a positive int or None')
    return maxtasks


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
        n = 0                    # tasks submitted so far
        try:
            for runner, args in _tasks_of(func, iterable, chunksize):
                if self._stopping:
                    return
                while disp.backlog() >= self._limit and not self._stopping:
                    disp.wait_for_space(self._limit // 2)
                disp.submit(result, n, runner, args, {}, None)
                n += 1
                if disp._broken is not None:
                    break        # every further chunk would fail alike
        except Exception as e:
            # The iterable raised: that is the result after the last chunk.
            result._set(n, (False, e))
            result._set_length(n + 1)
        else:
            result._set_length(n)


def _tasks_of(func, iterable, chunksize):
    # (runner, args) for each task of imap(func, iterable, chunksize).
    items = iter(iterable)
    if chunksize == 1:
        # No chunk to unpack in the worker: one call per item.
        for item in items:
            yield _one, ((func, item),)
        return
    while True:
        chunk = list(itertools.islice(items, chunksize))
        if not chunk:
            return
        yield mapstar, ((func, chunk),)


def _one(args):
    func, item = args
    return [func(item)]

# ------------------------------------------------- the process dispatcher


class _Worker:
    """The parent's record of one worker process."""

    __slots__ = ('process', 'conn', 'sentinel', 'ready', 'tasks', 'waiting',
                 'depth', 'pace', 'deadline', 'done', 'retiring', 'eof_at')

    def __init__(self, process, conn):
        self.process = process
        self.conn = conn
        self.sentinel = getattr(process, "sentinel", None)
        self.ready = False
        # Tasks sent, in order: the first is the one it runs, the others
        # wait in its pipe (see _LINE_MIN).
        self.tasks = collections.deque()
        self.waiting = 0         # bytes of the tasks behind the first
        self.depth = _LINE_MIN   # how many tasks it may hold now
        self.pace = None         # seconds its recent tasks took to run
        self.deadline = None     # of the first task, if it has a timeout
        self.done = 0
        self.retiring = False    # will exit after its last task (maxtasks)
        self.eof_at = None


# A worker holds more than the task it runs: the next ones wait in its
# pipe, so that it never waits for the parent between tasks, and tiny
# tasks stream through it as through the stdlib's shared queue.  It holds
# _LINE_MIN tasks, or as many (up to _LINE_MAX) as its recent tasks would
# run in _LINE_WAIT seconds: so a task waits in a worker's line about that
# long at most, while another worker might have been free.  (Workers say
# how long each task ran.)  A worker that dies never started the tasks
# waiting in its pipe: those go to other workers.
#
# Sending to a busy worker must never block: it might be blocked sending
# us a large result meanwhile, with nobody reading.  So the tasks waiting
# behind its first one may add up to half its pipe's send buffer at most:
# once it has read its first task (which it does before anything else),
# all the rest fit.
_LINE_MIN, _LINE_MAX = 2, 64
_LINE_WAIT = 0.005
_send_room_cache = []


def _send_room(conn):
    """How many bytes of tasks may wait in a busy worker's `conn`."""
    if not _send_room_cache:
        try:
            with socket.fromfd(conn.fileno(), socket.AF_UNIX,
                               socket.SOCK_STREAM) as s:
                size = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        except OSError:
            size = 0
        _send_room_cache.append(max(0, size) // 2)
    return _send_room_cache[0]


class _HandlerDispatcher:
    """What a dispatcher run by one handler thread (self._thread) does for
    the pool's threads: the feeder's flow control and the lifecycle.  The
    handler drains the backlog, sets self._space once it is down to
    self._space_low, and stops on _closing (once idle) or _terminating; a
    subclass provides backlog() and wake().  The process dispatcher and
    the remote engines' (backends/_common.py) share it."""

    def wait_for_space(self, low):
        # The feeder sleeps until the handler has drained the backlog to
        # `low` tasks (checked after each dispatch), or briefly.
        self._space_low = low
        self._space.clear()
        if self.backlog() > low:
            self._space.wait(0.05)

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


class _ProcessDispatcher(_HandlerDispatcher):
    """Owns the worker processes and the handler thread.  Holds no
    reference to the Pool, so that an unclosed pool can be collected (and
    its finalizer then stops the workers).

    Workers' state is guarded by one lock.  The handler thread holds it
    except while it sleeps in wait(); a submitting thread that gets it
    without waiting sends its task straight to a worker that can take it,
    so a pool with room costs no handler wake-up per task."""

    # How many tasks a worker may hold at most (see _LINE_MAX).
    _line_max = _LINE_MAX

    def __init__(self, pool_list, cache, ctx, process_factory, processes,
                 initializer, initargs, maxtasks, wrap_exception):
        # What workers are made of, and what they are told at start.
        self._ctx, self._process_factory = ctx, process_factory
        self._fork = _start_method(ctx) == 'fork'
        self._processes, self._maxtasks = processes, maxtasks
        self._initializer, self._initargs = initializer, initargs
        self._wrap_exception = wrap_exception
        # Shared with the Pool: its _pool (the live worker processes), its
        # _cache (pending results by job id) and its _taskqueue.
        self._workers, self._cache = pool_list, cache
        self.taskqueue = queue.SimpleQueue()
        # Under the lock (an RLock: callbacks run under it may submit).
        self._lock = threading.RLock()
        self._records = []       # a _Worker per process in _workers, + retiring
        self._retry = collections.deque()    # taken back from a worker
        self._prefetch = 0       # see _send_room
        self._waitset_dirty, self._timed = True, False
        # State changes, and waking the handler out of its wait().
        self._closing = self._terminating = False
        self._broken = self._thread = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._wake_pending = False
        # The feeder's flow control (wait_for_space).
        self._space, self._space_low = threading.Event(), -1

    # -- called from the pool's threads

    def submit(self, result, i, func, args, kwds, timeout):
        if timeout is not None and not timeout > 0:
            raise ValueError('timeout must be a positive number of seconds')
        try:
            data = _pack(result._job, i, (func, args, kwds))
        except Exception as e:
            result._set(i, (False, _pickling_hint(e)))
            return
        if self._broken is not None:
            result._set(i, (False, self._broken))
            return
        task = (result, i, data, timeout)
        if self._lock.acquire(False):
            try:
                if self._hand_over(task):
                    return
            finally:
                self._lock.release()
        self.taskqueue.put(task)
        # The handler hands out queued tasks after each result, so it need
        # not be woken while a worker holds one (checked after the put).
        if timeout is not None or not self._result_due():
            self.wake()

    def _hand_over(self, task):
        # With the lock, nothing queued ahead: send `task` to a worker that
        # can take it.  False: it goes in the queue.
        if self._retry or self._terminating or not self.taskqueue.empty():
            return False
        taker = None             # the one with the shortest line
        for r in self._records:
            if taker is None or len(r.tasks) < len(taker.tasks):
                if self._can_take(r, len(r.tasks) + 1, task):
                    taker = r
        if taker is None:
            return False
        if not self._send(taker, task) or task[3] is not None:
            self.wake()          # to hand it out again, or to time it
        return True

    def _result_due(self):
        # Whether some worker holds a task (so the handler will wake).
        for rec in self._records:
            if rec.tasks:
                return True
        return False

    def backlog(self):
        return self.taskqueue.qsize()

    def wake(self):
        if not self._wake_pending:
            self._wake_pending = True
            try:
                os.write(self._wake_w, b'\0')
            except (BlockingIOError, OSError):
                pass

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
        self._prefetch = _send_room(parent_conn)
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
            with self._lock:
                try:
                    self._stop_workers(kill=self._terminating)
                finally:
                    self._fail_pending(self._broken or _terminated())
                    self._close_wake()

    def _loop(self):
        from .connection import wait
        lock = self._lock
        waitset = {}
        while True:
            with lock:
                if not self._prepare_wait():
                    return
                if self._waitset_dirty:
                    # Rebuilt only when a worker comes, goes or loses its pipe.
                    self._waitset_dirty = False
                    waitset = self._waitset()
                    objlist = list(waitset)
                timeout = self._next_timeout() if self._timed else None
            ready = wait(objlist, timeout)
            with lock:
                for obj in ready:
                    rec = waitset[obj]
                    if rec is None:
                        self._drain_wake()
                    elif rec in self._records:
                        if obj is rec.conn:
                            self._on_readable(rec)
                        else:
                            self._reap(rec)
                if self._timed:
                    self._check_deadlines()

    def _prepare_wait(self):
        # Before each sleep: keep the pool at size, hand out what is
        # queued, let the feeder go on.  False: time to stop.
        if self._terminating:
            return False
        if len(self._workers) < self._processes:
            self._maintain()
        if self._retry or not self.taskqueue.empty():
            self._dispatch()
        if 0 <= self._space_low and self.taskqueue.qsize() <= self._space_low:
            self._space_low = -1
            self._space.set()
        return not (self._closing and self._idle())

    def _waitset(self):
        # What the handler sleeps on, each mapped to its worker's record.
        objs = {self._wake_r: None}
        for r in self._records:
            if r.conn is not None and r.eof_at is None:
                objs[r.conn] = r
            objs[r.sentinel] = r
        return objs

    def _drain_wake(self):
        # Drain, then clear: a wake() in between then writes again rather
        # than being swallowed.
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        self._wake_pending = False

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
        rec.waiting = 0

    def _can_take(self, rec, depth, task=None):
        # Whether `rec` may hold `depth` tasks (with `task` as the last).
        held = len(rec.tasks)
        if held >= depth or depth > rec.depth:
            return False
        if not rec.ready or rec.retiring or rec.eof_at is not None:
            return False
        if held and task is not None:
            if rec.waiting + len(task[2]) > self._prefetch:
                return False
        return (self._maxtasks is None
                or rec.done + held < self._maxtasks)

    def _dispatch(self):
        # Level by level, so that lines grow evenly: a task for each idle
        # worker first, then one more for each worker with one, and so on.
        records = self._records
        if not records:
            return
        low = min([len(r.tasks) for r in records]) + 1
        for depth in range(low, max([r.depth for r in records]) + 1):
            for r in records:
                if self._can_take(r, depth) and not self._feed(r, depth):
                    return

    def _fill(self, rec):
        # Top `rec` up to its depth; False when nothing is left to give.
        if not self._retry and self.taskqueue.empty():
            return False
        for depth in range(len(rec.tasks) + 1, rec.depth + 1):
            if not self._can_take(rec, depth):
                break
            if not self._feed(rec, depth):
                return False
        return True

    def _feed(self, rec, depth):
        # Give `rec` one more task; False when there is none left to give.
        while True:
            task = self._next_task()
            if task is None:
                return False
            if not self._can_take(rec, depth, task):
                self._retry.appendleft(task)     # too large to wait in line
                return depth < 2
            if self._send(rec, task):
                return True

    def _send(self, rec, task):
        # True once `rec` holds the task; False when it went elsewhere:
        # failed (broken pool), cancelled (executors), or back in line.
        result, i, data, timeout = task
        if self._broken is not None:
            result._set(i, (False, self._broken))
            return False
        if not result._start(i):
            return False
        try:
            rec.conn.send_bytes(data)
        except OSError:
            # Never delivered, so never started: someone else runs it.
            self._retry.appendleft(task)
            rec.ready = False
            return False
        if rec.tasks:
            rec.waiting += len(data)
        elif timeout is not None:
            rec.deadline = time.monotonic() + timeout
            self._timed = True
        rec.tasks.append(task)
        return True

    def _on_readable(self, rec):
        # Read what it sent (a few messages, when they stream in), send it
        # more work, then unpickle and hand out the results.
        replies = []
        conn = rec.conn
        for _ in range(_LINE_MAX):
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                rec.eof_at = time.monotonic()
                self._waitset_dirty = self._timed = True
                break
            reply = self._account(rec, data)
            if reply is not None:
                replies.append(reply)
            if not rec.tasks or not conn.poll(0):
                break
        self._fill(rec)
        for reply in replies:
            self._deliver(*reply)

    def _account(self, rec, data):
        # Book a message from `rec`; return (result, i, data) to deliver.
        job, i, took = _HEADER.unpack_from(data)
        if job == _READY:
            rec.ready = True
            return None
        if job == _INIT_FAILED:
            self._break(_decode(data))
            return None
        task = rec.tasks.popleft() if rec.tasks else None
        rec.deadline = None
        if rec.tasks:
            rec.waiting -= len(rec.tasks[0][2])      # now running
            if rec.tasks[0][3] is not None:
                rec.deadline = time.monotonic() + rec.tasks[0][3]
                self._timed = True
        pace = took if rec.pace is None else (rec.pace + took) / 2
        rec.pace, most = pace, self._line_max
        rec.depth = (most if pace * most <= _LINE_WAIT else
                     max(_LINE_MIN, min(most, int(_LINE_WAIT / pace))))
        rec.done += 1
        if self._maxtasks is not None and rec.done >= self._maxtasks:
            self._retire(rec)
            self._maintain()     # replaced before the caller hears back
        if task is not None and task[0]._job == job:
            return task[0], i, data
        result = self._cache.get(job)
        return None if result is None else (result, i, data)

    @staticmethod
    def _deliver(result, i, data):
        result._set(i, _decode(data))

    def _retire(self, rec):
        # It is on its way out: _pool shows its replacement instead.
        rec.retiring = True
        try:
            self._workers.remove(rec.process)
        except ValueError:
            pass

    def _reap(self, rec):
        # Read what it sent before it went, then account for the task.
        rec.retiring = True      # callbacks run meanwhile send it nothing
        while rec.conn is not None and rec.eof_at is None:
            try:
                if not rec.conn.poll(0):
                    break
                data = rec.conn.recv_bytes()
            except (EOFError, OSError):
                break
            reply = self._account(rec, data)
            if reply is not None:
                self._deliver(*reply)
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
            r.waiting = 0
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

    def __init__(self, processes=None, initializer=None, initargs=()):
        Pool.__init__(self, processes, initializer, initargs)

    _wrap_exception = False      # same process: exceptions as they are

    @staticmethod
    def Process(ctx, *args, **kwds):
        from .dummy import DummyProcess
        return DummyProcess(*args, **kwds)

    def _make_dispatcher(self):
        return _ThreadDispatcher(self._pool, self._cache, self._processes,
                                 self._initializer, self._initargs)


class _ThreadDispatcher:
    """Worker threads pulling tasks from one queue."""

    def __init__(self, pool_list, cache, processes, initializer, initargs):
        self._workers, self._cache = pool_list, cache
        self._processes = processes
        self._initializer, self._initargs = initializer, initargs
        self.taskqueue = queue.SimpleQueue()
        self._terminating = self._closed = False
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
