"""Queues shared between processes: Queue, JoinableQueue and SimpleQueue.

A queue is a pipe plus shared semaphores.  Frames use the stdlib's
connection format (a 4-byte big-endian length, or -1 and an 8-byte length
for frames of 2 GiB and more), so a queue's ends can be read and written
as connection objects too.

Data path of Queue.put (DESIGN.md: "a put that has returned should be
delivered, or fail in the caller"): the object is pickled in the caller,
so a pickling error is known at once, and the frame is written straight
into the pipe with one non-blocking write while the caller holds the
cross-process write lock.  Only when that cannot complete (the pipe is
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
import time
import types
import weakref

from queue import Empty, Full

from . import _mpcore, context, util
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


def _read_exact(fd, n):
    """Read exactly `n` bytes from the blocking fd (EOFError at EOF)."""
    chunk = os.read(fd, n)
    if len(chunk) == n:
        return chunk
    if not chunk:
        raise EOFError
    buf = bytearray(n)
    view = memoryview(buf)
    view[:len(chunk)] = chunk
    got = len(chunk)
    while got < n:
        r = os.readv(fd, [view[got:]])
        if r == 0:
            raise EOFError
        got += r
    return buf


def _read_frame(fd):
    """Read one frame's payload.  Called with the read lock held."""
    (n,) = _HEADER.unpack(_read_exact(fd, 4))
    if n == -1:
        (n,) = struct.unpack('!Q', _read_exact(fd, 8))
    elif n < 0:
        raise OSError('corrupt frame header on queue pipe')
    if n == 0:
        return b''
    return _read_exact(fd, n)


def _poll_fd(fd, timeout):
    """Whether fd is readable (data or EOF) within `timeout` seconds."""
    if timeout is not None and timeout < 0:
        timeout = 0
    r, _, _ = select.select([fd], [], [], timeout)
    return bool(r)


class _PipeEnd(object):
    """One end of a pipe with the connection methods queues and their
    users need (fileno, close, send_bytes, recv_bytes, send, recv, poll).

    Stands in until multiprocessing_c.connection is available; the framing
    is the connection format, so either can read what the other wrote."""

    def __init__(self, fd, readable, writable):
        self._fd = fd
        self.readable = readable
        self.writable = writable

    def __del__(self):
        if getattr(self, '_fd', None) is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass

    def __getstate__(self):
        popen = context.get_spawning_popen()
        if popen is None:
            raise RuntimeError('%s objects should only be shared between '
                               'processes through inheritance'
                               % type(self).__name__)
        return (popen.duplicate_for_child(self._check()),
                self.readable, self.writable)

    def __setstate__(self, state):
        fd, self.readable, self.writable = state
        if hasattr(fd, 'detach'):
            fd = fd.detach()
        self._fd = fd

    def _check(self):
        if self._fd is None:
            raise OSError('handle is closed')
        return self._fd

    @property
    def closed(self):
        return self._fd is None

    def fileno(self):
        return self._check()

    def close(self):
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def send_bytes(self, buf, offset=0, size=None):
        m = memoryview(buf).cast('B')
        if size is None:
            size = len(m) - offset
        _write_all(self._check(), _frame_parts(m[offset:offset + size]))

    def recv_bytes(self, maxlength=None):
        data = _read_frame(self._check())
        if maxlength is not None and len(data) > maxlength:
            raise OSError('bad message length')
        return bytes(data)

    def send(self, obj):
        self.send_bytes(_ForkingPickler.dumps(obj))

    def recv(self):
        return _ForkingPickler.loads(_read_frame(self._check()))

    def poll(self, timeout=0.0):
        return _poll_fd(self._check(), timeout)


def _pipe():
    """A one-way pipe: (reader, writer) connection objects."""
    try:
        from .connection import Pipe
    except ImportError:
        r, w = os.pipe2(os.O_CLOEXEC)
        return _PipeEnd(r, True, False), _PipeEnd(w, False, True)
    return Pipe(duplex=False)


_STOP = object()


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

    def __getstate__(self):
        context.assert_spawning(self)
        return (self._ignore_epipe, self._maxsize, self._reader, self._writer,
                self._rlock, self._wlock, self._sem, self._opid)

    def __setstate__(self, state):
        (self._ignore_epipe, self._maxsize, self._reader, self._writer,
         self._rlock, self._wlock, self._sem, self._opid) = state
        self._reset()

    def _after_fork(self):
        debug('Queue._after_fork()')
        self._reset(after_fork=True)

    def _reset(self, after_fork=False):
        # Per-process state: what this process has put but not yet written.
        self._tlock = threading.Lock()
        self._notempty = threading.Condition(self._tlock)
        self._buffer = collections.deque()
        # True while the feeder owns a _wlock acquired by a put that could
        # write only part of its frame.
        self._holding_wlock = False
        self._thread = None
        self._jointhread = None
        self._joincancelled = False
        if not after_fork:
            self._closed = False
        self._close = None
        self._reader_fd = _fileno_or_none(self._reader)
        self._writer_fd = _fileno_or_none(self._writer)

    # ---------------------------------------------------------------- put

    def put(self, obj, block=True, timeout=None):
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        if not self._sem.acquire(block, timeout):
            raise Full
        try:
            data = _ForkingPickler.dumps(obj)
        except Exception as e:
            # Reported as the stdlib's feeder thread reports it, but here,
            # while the caller's frame is still on the stack.
            self._sem.release()
            self._on_queue_feeder_error(e, obj)
            return
        try:
            self._send(_frame_parts(data))
        except BaseException:
            self._sem.release()
            raise

    def put_nowait(self, obj):
        return self.put(obj, False)

    def _send(self, parts):
        """Write one frame now, or queue it behind earlier ones."""
        with self._tlock:
            if not self._buffer and self._wlock.acquire(False):
                try:
                    n = os.writev(self._writer_fd, parts)
                except BlockingIOError:
                    n = 0
                except BrokenPipeError:
                    self._wlock.release()
                    if self._ignore_epipe:
                        return
                    raise
                except BaseException:
                    self._wlock.release()
                    raise
                rest = _skip(parts, n)
                if not rest:
                    self._wlock.release()
                    return
                if n:
                    # Part of the frame is in the pipe: keep the write lock
                    # so no other writer splits it, and let the feeder
                    # finish the frame and release the lock.
                    self._holding_wlock = True
                else:
                    self._wlock.release()
                parts = rest
            self._buffer.append(parts)
            if self._thread is None:
                self._start_thread()
            self._notempty.notify()

    def _start_thread(self):
        # Called with _tlock held.
        debug('Queue._start_thread()')
        self._thread = threading.Thread(
            target=Queue._feed, args=(weakref.ref(self),),
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
    def _feed(queue_ref):
        """Feeder thread: write buffered frames in order."""
        q = queue_ref()
        if q is None:
            return
        buffer, notempty, fd, wlock = q._buffer, q._notempty, q._writer_fd, q._wlock
        writer, reader = q._writer, q._reader
        ignore_epipe = q._ignore_epipe
        del q
        while True:
            with notempty:
                while not buffer:
                    notempty.wait()
                parts = buffer[0]
                if parts is _STOP:
                    buffer.popleft()
                    break
                q = queue_ref()
                holding = q is not None and q._holding_wlock
                del q
            try:
                if not holding:
                    wlock.acquire()
                try:
                    _write_all(fd, parts)
                finally:
                    with notempty:
                        q = queue_ref()
                        if q is not None:
                            q._holding_wlock = False
                        del q
                    wlock.release()
            except Exception as e:
                if ignore_epipe and isinstance(e, BrokenPipeError):
                    pass
                elif is_exiting():
                    info('error in queue thread: %s', e)
                else:
                    import traceback
                    traceback.print_exc()
            with notempty:
                buffer.popleft()
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
        if block and timeout is None:
            with self._rlock:
                data = _read_frame(self._reader_fd)
                self._sem.release()
        else:
            if block:
                deadline = time.monotonic() + timeout
            if not self._rlock.acquire(block, timeout):
                raise Empty
            try:
                if block:
                    if not _poll_fd(self._reader_fd, deadline - time.monotonic()):
                        raise Empty
                elif not _poll_fd(self._reader_fd, 0):
                    raise Empty
                data = _read_frame(self._reader_fd)
                self._sem.release()
            finally:
                self._rlock.release()
        return _ForkingPickler.loads(data)

    def get_nowait(self):
        return self.get(False)

    # ---------------------------------------------------------------- state

    def qsize(self):
        return self._maxsize - self._sem._semlock._get_value()

    def empty(self):
        return not _poll_fd(self._reader_fd, 0)

    def full(self):
        return self._sem._semlock._is_zero()

    def close(self):
        """No more puts or gets from this process; buffered data is still
        flushed by the feeder thread, which then closes the pipe ends."""
        self._closed = True
        with self._tlock:
            if self._thread is None:
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

    def __getstate__(self):
        return Queue.__getstate__(self) + (self._cond, self._unfinished_tasks)

    def __setstate__(self, state):
        Queue.__setstate__(self, state[:-2])
        self._cond, self._unfinished_tasks = state[-2:]

    def put(self, obj, block=True, timeout=None):
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        if not self._sem.acquire(block, timeout):
            raise Full
        try:
            data = _ForkingPickler.dumps(obj)
        except Exception as e:
            self._sem.release()
            self._on_queue_feeder_error(e, obj)
            return
        # Counted before it is visible, so a consumer's task_done() for it
        # can never run first.
        self._unfinished_tasks.release()
        try:
            self._send(_frame_parts(data))
        except BaseException:
            self._unfinished_tasks.acquire(False)
            self._sem.release()
            raise

    def task_done(self):
        with self._cond:
            if not self._unfinished_tasks.acquire(False):
                raise ValueError('task_done() called too many times')
            if self._unfinished_tasks._semlock._is_zero():
                self._cond.notify_all()

    def join(self):
        with self._cond:
            if not self._unfinished_tasks._semlock._is_zero():
                self._cond.wait()


class SimpleQueue(object):
    """A queue with no size limit and no feeder thread: put() writes the
    frame itself (blocking while the pipe is full), get() reads one."""

    def __init__(self, *, ctx=None):
        if ctx is None:
            ctx = context._default_context.get_context()
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
        return (self._reader, self._writer, self._rlock, self._wlock)

    def __setstate__(self, state):
        (self._reader, self._writer, self._rlock, self._wlock) = state
        self._poll = self._reader.poll

    def get(self):
        with self._rlock:
            data = _read_frame(self._reader.fileno())
        return _ForkingPickler.loads(data)

    def put(self, obj):
        # Pickled outside the lock; an unpicklable object raises here.
        parts = _frame_parts(_ForkingPickler.dumps(obj))
        with self._wlock:
            _write_all(self._writer.fileno(), parts)

    __class_getitem__ = classmethod(types.GenericAlias)
