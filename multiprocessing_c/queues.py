"""Queues shared between processes: Queue, JoinableQueue and SimpleQueue.

A queue is a pipe plus shared semaphores.  Frames use the stdlib's
connection format (a 4-byte big-endian length, or -1 and an 8-byte length
for frames of 2 GiB and more), so a queue's ends (Connection objects) can
be read and written directly too, as pool-style code does.

Data path of Queue.put (DESIGN.md: "a put that has returned should be
delivered, or fail in the caller"): the object is pickled in the caller,
so a pickling error is known at once, and one C call
(_mpcore.queue_send) takes the cross-process write lock and writes the
frame straight into the pipe with one non-blocking write (plain data is
pickled in C too: _mpcore.dumps).  get() is one C call
(_mpcore.queue_get): read lock, wait with the GIL released, the whole
frame, the size counter, then the unpickling.  Only when a put cannot
complete (the pipe is full, or another process is writing) do the
remaining bytes go to a per-queue buffer drained by a feeder thread,
which keeps puts non-blocking as the stdlib's are; later puts of this
process queue up behind it, so objects arrive in order.  At normal exit
the feeder is joined (unless cancel_join_thread() was called), so nothing
put before close() is lost.
"""

import collections
import os
import select
import struct
import sys
import threading
import types
import weakref

from queue import Empty, Full

from . import _mpcore, context
from . import reduction  # noqa: F401 (registers the full pickler)
from ._mpcore import queue_get as _queue_get, queue_send as _queue_send
from .util import Finalize, debug, info, is_exiting, register_after_fork

__all__ = ['Queue', 'SimpleQueue', 'JoinableQueue']

# ForkingPickler's bytes; plain data is pickled in C without a Pickler.
_dumps = _mpcore.dumps

_SEM_VALUE_MAX = _mpcore.SemLock.SEM_VALUE_MAX
_HEADER = struct.Struct('!i')
_BIG_HEADER = struct.Struct('!iQ')
_BIG = 0x7fffffff
# Frames below this size are joined with their header into one buffer
# (one copy, one write); bigger ones go out with writev.
_JOIN_LIMIT = 1 << 16


def _frame_parts(data):
    """The pieces of one frame holding `data` (a bytes-like object)."""
    n = len(data)
    if n < _BIG:
        if n < _JOIN_LIMIT:
            return [_HEADER.pack(n) + bytes(data)]
        return [_HEADER.pack(n), data]
    return [_BIG_HEADER.pack(-1, n), data]


def _skip(parts, n):
    """`parts` without its first `n` bytes, as a list of memoryviews."""
    rest = []
    for p in parts:
        m = memoryview(p).cast('B')
        if n >= len(m):
            n -= len(m)
            continue
        rest.append(m[n:])
        n = 0
    return rest


def _write_all(fd, parts):
    """Write every byte of `parts` to `fd`, waiting for room if the fd is
    non-blocking.  Called with the write lock held."""
    while parts:
        try:
            n = os.writev(fd, parts)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        parts = _skip(parts, n)


def _poll_fd(fd, timeout):
    """Whether fd is readable (data or EOF) within `timeout` seconds."""
    r, _, _ = select.select([fd], [], [], max(timeout, 0))
    return bool(r)


def _pipe():
    """A one-way pipe: (reader, writer) Connection objects."""
    from .connection import Pipe
    return Pipe(duplex=False)


_STOP = object()


def _wake_feeder(buffer, notempty, item):
    with notempty:
        buffer.append(item)
        notempty.notify()


class _FeedState(object):
    """Shared by a queue's putters and its feeder thread, under _tlock."""
    __slots__ = ('busy', 'holding')

    def __init__(self):
        self.busy = False       # the feeder is writing a batch
        self.holding = False    # a put left _wlock held mid-frame for it


def _close_ends(*ends):
    for end in ends:
        try:
            end.close()
        except OSError:
            pass


def _fileno_or_none(end):
    try:
        return end.fileno()
    except OSError:     # closed before a fork
        return None


class Queue(object):
    """A FIFO shared between processes (see the module docstring)."""

    def __init__(self, maxsize=0, *, ctx=None):
        if ctx is None:
            ctx = context._default_context.get_context()
        if maxsize <= 0:
            maxsize = _SEM_VALUE_MAX
        self._maxsize = maxsize
        self._reader, self._writer = _pipe()
        self._rlock = ctx.Lock()
        self._wlock = ctx.Lock()
        self._sem = ctx.BoundedSemaphore(maxsize)
        self._opid = os.getpid()
        # Writes must never block the caller: see the module docstring.
        os.set_blocking(self._writer.fileno(), False)
        self._ignore_epipe = False
        self._reset()
        register_after_fork(self, Queue._after_fork)

    # What a child gets when the queue is passed at process creation: the
    # shared parts only; per-process state is made afresh by _reset().
    _SHARED_STATE = ('_ignore_epipe', '_maxsize', '_reader', '_writer',
                     '_rlock', '_wlock', '_sem', '_opid')

    def __getstate__(self):
        context.assert_spawning(self)
        return {name: getattr(self, name) for name in self._SHARED_STATE}

    def __setstate__(self, state):
        if isinstance(state, tuple):    # a pickle made by an older version
            state = dict(zip(self._SHARED_STATE, state))
        # setattr keeps the instance's attributes in the interpreter's
        # fast layout (touching __dict__ would give that up).
        for name, value in state.items():
            setattr(self, name, value)
        self._reset()

    def _after_fork(self):
        # The feeder thread and buffer were the parent's; the pipe and
        # locks are shared and stay.
        self._reset(after_fork=True)

    def _reset(self, after_fork=False):
        # Per-process state: what this process has put but not yet written.
        self._tlock = threading.Lock()
        self._notempty = threading.Condition(self._tlock)
        self._buffer = collections.deque()
        self._feedstate = _FeedState()
        self._thread = None
        self._jointhread = None
        self._joincancelled = False
        self._used = False      # this process put something
        if not after_fork:
            self._closed = False
        self._close = None
        self._reader_fd = _fileno_or_none(self._reader)
        self._writer_fd = _fileno_or_none(self._writer)
        # The C objects under the locks, for the one-call data path.
        self._rsl = self._rlock._semlock
        self._wsl = self._wlock._semlock
        self._ssl = self._sem._semlock
        self._sem_acquire = self._ssl.acquire
        self._sem_release = self._ssl.release
        # JoinableQueue counts each item put as a task.
        self._tasks = getattr(self, '_unfinished_tasks', None)

    # ---------------------------------------------------------------- put

    def put(self, obj, block=True, timeout=None):
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        if not self._sem_acquire(block, timeout):
            raise Full
        try:
            data = _dumps(obj)
        except Exception as e:
            # Reported as the stdlib's feeder thread reports it, but here,
            # while the caller's frame is still on the stack.
            self._sem_release()
            self._on_queue_feeder_error(e, obj)
            return
        tasks = self._tasks
        if tasks is not None:
            # Counted before it is visible, so a consumer's task_done()
            # for it can never run first.
            tasks.release()
        self._used = True
        try:
            with self._tlock:
                # Straight into the pipe unless earlier frames of this
                # process are still waiting for the feeder.
                if self._buffer or self._feedstate.busy:
                    self._enqueue(data, -1)
                else:
                    n = _queue_send(self._writer_fd, self._wsl, data, False)
                    if n is not None:
                        self._enqueue(data, n)
        except BrokenPipeError:
            if not self._ignore_epipe:
                self._undo_put(tasks)
                raise
        except BaseException:
            self._undo_put(tasks)
            raise

    def _undo_put(self, tasks):
        if tasks is not None:
            tasks.acquire(False)
        self._sem_release()

    def put_nowait(self, obj):
        return self.put(obj, False)

    def _enqueue(self, data, sent):
        """Hand a frame to the feeder thread (called with _tlock held).
        `sent` is what queue_send() returned for it: -1 or 0 if nothing
        went out, else the count of bytes written, with _wlock left held
        so that no other writer splits the frame."""
        parts = _frame_parts(data)
        if sent > 0:
            self._feedstate.holding = True
            parts = _skip(parts, sent)
        # The feeder only sleeps on an empty buffer: wake it then only.
        wake = not self._buffer
        self._buffer.append(parts)
        if self._thread is None:
            self._start_thread()
        elif wake:
            self._notempty.notify()

    def _start_thread(self):
        # Called with _tlock held.
        debug('Queue._start_thread()')
        self._thread = threading.Thread(
            target=Queue._feed,
            args=(self._buffer, self._notempty, self._feedstate,
                  self._writer_fd, self._wlock, self._reader, self._writer,
                  self._ignore_epipe),
            name='QueueFeederThread', daemon=True)
        self._thread.start()
        if not self._joincancelled:
            self._jointhread = Finalize(
                self._thread, Queue._finalize_join,
                [weakref.ref(self._thread)], exitpriority=-5)
        # Drain at exit once everything earlier has been flushed.
        self._close = Finalize(
            self, Queue._finalize_close, [self._buffer, self._notempty],
            exitpriority=10)

    @staticmethod
    def _feed(buffer, notempty, state, fd, wlock, reader, writer, ignore_epipe):
        """Feeder thread: write buffered frames in order, each batch in one
        write while holding the write lock once."""
        stop = False
        while not stop:
            with notempty:
                while not buffer:
                    notempty.wait()
                batch = list(buffer)
                buffer.clear()
                # Puts arriving while we write must queue behind the batch.
                state.busy = True
                holding, state.holding = state.holding, False
            if any(b is _STOP for b in batch):
                stop = True
                batch = [b for b in batch if b is not _STOP]
            try:
                if batch:
                    blob = b''.join([p for parts in batch for p in parts])
                    if not holding:
                        wlock.acquire()
                        holding = True
                    _write_all(fd, [blob])
            except Exception as e:
                if ignore_epipe and isinstance(e, BrokenPipeError):
                    pass
                elif is_exiting():
                    info('error in queue thread: %s', e)
                else:
                    import traceback
                    traceback.print_exc()
            finally:
                if holding:
                    wlock.release()
                    holding = False
                with notempty:
                    state.busy = False
        # close() was called and everything before it is written.
        debug('feeder thread got sentinel -- exiting')
        _close_ends(writer, reader)

    # The two exit hooks _start_thread registers (as Finalize callbacks, so
    # they hold no reference to the queue).

    @staticmethod
    def _finalize_close(buffer, notempty):
        """Put the feeder's stop marker behind everything buffered."""
        _wake_feeder(buffer, notempty, _STOP)

    @staticmethod
    def _finalize_join(thread_ref):
        """Wait for the feeder to have written everything."""
        feeder = thread_ref()
        if feeder is None:
            debug('queue feeder already gone')
            return
        debug('waiting for the queue feeder')
        feeder.join()

    @staticmethod
    def _on_queue_feeder_error(e, obj):
        """Report an object put() could not pickle.

        Called inside the except clause; subclasses may override (the
        stdlib's hook, with the same signature)."""
        import traceback
        traceback.print_exc()

    # ---------------------------------------------------------------- get

    def get(self, block=True, timeout=None):
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        # One C call: read lock, wait (GIL released), whole frame, size
        # counter, read lock again, then the unpickling (Empty on timeout).
        return _queue_get(self._reader_fd, self._rsl, self._ssl,
                          timeout if block else 0, Empty)

    def get_nowait(self):
        return self.get(False)

    # ---------------------------------------------------------------- state

    def qsize(self):
        return self._maxsize - self._sem._semlock._get_value()

    def empty(self):
        if self._reader.closed:     # by close() after this process put
            raise OSError('handle is closed')
        return not _poll_fd(self._reader_fd, 0)

    def full(self):
        return self._sem._semlock._is_zero()

    def close(self):
        """No more puts or gets from this process; buffered data is still
        flushed by the feeder thread, which then closes the pipe ends.  On
        a queue this process never put to, the pipe ends stay open until
        the queue is collected (empty() still answers), as the stdlib's."""
        self._closed = True
        with self._tlock:
            feeding = self._thread is not None
            stop, self._close = self._close, None
        if not feeding:
            # Nothing was ever buffered: close both ends now, unless this
            # process never put (then they stay open, as the stdlib's).
            if self._used:
                _close_ends(self._reader, self._writer)
        elif stop is not None:
            stop()

    def join_thread(self):
        """Wait until the feeder has written everything (after close())."""
        debug('Queue.join_thread()')
        assert self._closed, f"Queue {self!r} not closed"
        joiner = self._jointhread
        if joiner is not None:
            joiner()

    def cancel_join_thread(self):
        """Do not wait for the feeder thread at exit (buffered data may
        then be lost)."""
        debug('Queue.cancel_join_thread()')
        self._joincancelled = True
        joiner, self._jointhread = self._jointhread, None
        if joiner is not None:
            joiner.cancel()


class JoinableQueue(Queue):
    """A Queue whose consumers report task_done(), so producers can join()."""

    def __init__(self, maxsize=0, *, ctx=None):
        if ctx is None:
            ctx = context._default_context.get_context()
        Queue.__init__(self, maxsize, ctx=ctx)
        self._unfinished_tasks = self._tasks = ctx.Semaphore(0)
        self._cond = ctx.Condition()

    _SHARED_STATE = Queue._SHARED_STATE + ('_cond', '_unfinished_tasks')

    def task_done(self):
        """Count one item taken by get() as processed."""
        with self._cond:
            unfinished = self._unfinished_tasks
            if not unfinished.acquire(False):
                raise ValueError('task_done() called too many times')
            if unfinished._semlock._is_zero():
                self._cond.notify_all()     # the last one wakes every join()

    def join(self):
        """Block until every item put has been counted by task_done()."""
        with self._cond:
            self._cond.wait_for(self._unfinished_tasks._semlock._is_zero)


class SimpleQueue(object):
    """A queue with no size limit and no feeder thread: put() writes the
    frame itself (blocking while the pipe is full), get() reads one."""

    def __init__(self, *, ctx=None):
        if ctx is None:
            ctx = context._default_context.get_context()
        if 'concurrent.futures.process' in sys.modules:
            # The stdlib's ProcessPoolExecutor makes its result queue here.
            from .futures import _check_stdlib_executor
            _check_stdlib_executor(ctx, sys._getframe(1))
        self._reader, self._writer = _pipe()
        self._rlock, self._wlock = ctx.Lock(), ctx.Lock()
        self._reset()

    def get(self):
        return _queue_get(self._reader.fileno(), self._rsl, None, None, None)

    def put(self, obj):
        # Pickled outside the lock; an unpicklable object raises here.
        _queue_send(self._writer.fileno(), self._wsl, _dumps(obj), True)

    def empty(self):
        return not self._reader.poll()

    def close(self):
        _close_ends(self._reader, self._writer)

    # A child gets the pipe and the locks; the rest is per process.
    _SHARED_STATE = ('_reader', '_writer', '_rlock', '_wlock')

    def __getstate__(self):
        context.assert_spawning(self)
        return {name: getattr(self, name) for name in self._SHARED_STATE}

    def __setstate__(self, state):
        for name, value in state.items():
            setattr(self, name, value)
        self._reset()

    def _reset(self):
        # The C objects under the locks, for the one-call data path.
        self._rsl = self._rlock._semlock
        self._wsl = self._wlock._semlock

    __class_getitem__ = classmethod(types.GenericAlias)
