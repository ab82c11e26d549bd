"""Queues shared between processes: Queue, JoinableQueue and SimpleQueue.

A queue is a pipe plus shared semaphores.  Frames use the stdlib's
connection format (a 4-byte big-endian length, or -1 and an 8-byte length
for frames of 2 GiB and more), so a queue's ends (Connection objects) can
be read and written directly too, as pool-style code does.

Data path of Queue.put (DESIGN.md: "a put that has returned should be
delivered, or fail in the caller"): the object is pickled in the caller,
so a pickling error is known at once, and one C call
(_mpcore.queue_send) takes the cross-process write lock and writes the
frame straight into the pipe with one non-blocking write.  get() is one
C call too (_mpcore.queue_recv): read lock, wait with the GIL released,
the whole frame, the size counter.  Only when that cannot complete (the pipe is
full, or another process is writing) do the remaining bytes go to a
per-queue buffer drained by a feeder thread, which keeps puts
non-blocking as the stdlib's are; later puts of this process queue up
behind it, so objects arrive in order.  At normal exit the feeder is
joined (unless cancel_join_thread() was called), so nothing put before
close() is lost.
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
from ._mpcore import queue_recv as _queue_recv, queue_send as _queue_send
from .util import Finalize, debug, info, is_exiting, register_after_fork

try:
    from .reduction import ForkingPickler as _ForkingPickler
except ImportError:  # pragma: no cover - the foundation provides it
    import pickle as _pickle

    class _ForkingPickler(object):
        @staticmethod
        def dumps(obj, protocol=None):
            return _pickle.dumps(obj, protocol)

        loads = staticmethod(_pickle.loads)

__all__ = ['Queue', 'SimpleQueue', 'JoinableQueue']

import pickle as _pickle

# Objects of these exact types never reach a pickler's dispatch table
# (the C pickler writes them itself), so plain pickle.dumps gives the same
# bytes as ForkingPickler.dumps without building a pickler per item.
_ATOMIC_TYPES = frozenset([int, float, str, bytes, bool, type(None)])


def _dumps(obj, _atomic=_ATOMIC_TYPES, _plain=_pickle.dumps):
    if type(obj) in _atomic:
        return _plain(obj)
    return _ForkingPickler.dumps(obj)

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


class _FeedState(object):
    """Shared by a queue's putters and its feeder thread, under _tlock."""
    __slots__ = ('busy', 'holding')

    def __init__(self):
        self.busy = False       # the feeder is writing a batch
        self.holding = False    # a put left _wlock held mid-frame for it


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
        self.__dict__.update(state)
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

    # ---------------------------------------------------------------- put

    def put(self, obj, block=True, timeout=None):
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        if not self._sem.acquire(block, timeout):
            raise Full
        try:
            data = _dumps(obj)
        except Exception as e:
            # Reported as the stdlib's feeder thread reports it, but here,
            # while the caller's frame is still on the stack.
            self._sem.release()
            self._on_queue_feeder_error(e, obj)
            return
        try:
            self._send(data)
        except BaseException:
            self._sem.release()
            raise

    def put_nowait(self, obj):
        return self.put(obj, False)

    def _send(self, data):
        """Write one frame now, or queue it behind earlier ones."""
        self._used = True
        state = self._feedstate
        with self._tlock:
            if not self._buffer and not state.busy:
                try:
                    n = _queue_send(self._writer_fd, self._wsl, data, False)
                except BrokenPipeError:
                    if self._ignore_epipe:
                        return
                    raise
                if n is None:
                    return          # the whole frame is in the pipe
                parts = _frame_parts(data)
                if n > 0:
                    # Part of the frame is in the pipe and _wlock is still
                    # held, so no other writer splits it; the feeder
                    # finishes the frame and releases the lock.
                    state.holding = True
                    parts = _skip(parts, n)
            else:
                parts = _frame_parts(data)
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
        for end in (writer, reader):
            try:
                end.close()
            except OSError:
                pass

    @staticmethod
    def _finalize_close(buffer, notempty):
        debug('telling queue thread to quit')
        with notempty:
            buffer.append(_STOP)
            notempty.notify()

    @staticmethod
    def _finalize_join(twr):
        debug('joining queue thread')
        thread = twr()
        if thread is not None:
            thread.join()
            debug('... queue thread joined')
        else:
            debug('... queue thread already dead')

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
        # counter, read lock again.
        data = _queue_recv(self._reader_fd, self._rsl, self._ssl,
                           timeout if block else 0)
        if data is None:
            raise Empty
        return _ForkingPickler.loads(data)

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
            if self._thread is None:
                if not self._used:
                    return
                # Nothing buffered: close both ends now.
                for end in (self._reader, self._writer):
                    try:
                        end.close()
                    except OSError:
                        pass
                return
        close = self._close
        if close:
            self._close = None
            close()

    def join_thread(self):
        debug('Queue.join_thread()')
        assert self._closed, "Queue {0!r} not closed".format(self)
        if self._jointhread:
            self._jointhread()

    def cancel_join_thread(self):
        """Do not wait for the feeder thread at exit (buffered data may
        then be lost)."""
        debug('Queue.cancel_join_thread()')
        self._joincancelled = True
        try:
            self._jointhread.cancel()
        except AttributeError:
            pass


class JoinableQueue(Queue):
    """A Queue whose consumers report task_done(), so producers can join()."""

    def __init__(self, maxsize=0, *, ctx=None):
        if ctx is None:
            ctx = context._default_context.get_context()
        Queue.__init__(self, maxsize, ctx=ctx)
        self._unfinished_tasks = ctx.Semaphore(0)
        self._cond = ctx.Condition()

    _SHARED_STATE = Queue._SHARED_STATE + ('_cond', '_unfinished_tasks')

    def put(self, obj, block=True, timeout=None):
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        if not self._sem.acquire(block, timeout):
            raise Full
        try:
            data = _dumps(obj)
        except Exception as e:
            self._sem.release()
            self._on_queue_feeder_error(e, obj)
            return
        # Counted before it is visible, so a consumer's task_done() for it
        # can never run first.
        self._unfinished_tasks.release()
        try:
            self._send(data)
        except BaseException:
            self._unfinished_tasks.acquire(False)
            self._sem.release()
            raise

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
        self._rlock = ctx.Lock()
        self._wlock = ctx.Lock()
        self._poll = self._reader.poll

    def close(self):
        self._reader.close()
        self._writer.close()

    def empty(self):
        return not self._poll()

    def __getstate__(self):
        context.assert_spawning(self)
        return {'_reader': self._reader, '_writer': self._writer,
                '_rlock': self._rlock, '_wlock': self._wlock}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._poll = self._reader.poll

    def get(self):
        data = _queue_recv(self._reader.fileno(), self._rlock._semlock,
                           None, None)
        return _ForkingPickler.loads(data)

    def put(self, obj):
        # Pickled outside the lock; an unpicklable object raises here.
        _queue_send(self._writer.fileno(), self._wlock._semlock, _dumps(obj),
                    True)

    __class_getitem__ = classmethod(types.GenericAlias)
