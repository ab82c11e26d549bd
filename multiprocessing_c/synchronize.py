"""Locks, semaphores, conditions, events and barriers shared between processes.

Everything here stands on one C primitive, ``_mpcore.SemLock`` (a POSIX
named semaphore).  This module only shapes the documented API around it:
naming and unlinking the semaphores, pickling them for process creation,
and building Condition, Event and Barrier out of several of them.
"""

import os
import sys
import threading
import time

from . import _mpcore, context, process, util

__all__ = [
    'Lock', 'RLock', 'Semaphore', 'BoundedSemaphore', 'Condition', 'Event',
    'Barrier',
]

try:
    # The resource tracker unlinks what a crashed process leaves behind.
    # It is optional: without it a named semaphore is still unlinked when
    # its creator collects it or exits normally.
    from . import resource_tracker as _resource_tracker
except ImportError:
    _resource_tracker = None

RECURSIVE_MUTEX = _mpcore.RECURSIVE_MUTEX
SEMAPHORE = _mpcore.SEMAPHORE
SEM_VALUE_MAX = _mpcore.SemLock.SEM_VALUE_MAX
sem_unlink = _mpcore.sem_unlink

_NAME_ATTEMPTS = 100

_FORK_MIX_MESSAGE = (
    "A SemLock created in a fork context is being shared with a process "
    "started by another start method; this is not supported.  Create the "
    "lock (or queue, ...) from the same context as the Process, e.g. "
    "ctx = get_context('spawn'); ctx.Lock(); ctx.Process(...)."
)


def _default_ctx(ctx):
    if ctx is None:
        ctx = context._default_context.get_context()
    return ctx


def _unlink_semaphore(name, creator_pid):
    # Runs as a Finalize callback in the creating process only: children
    # (forked ones included) never remove a name their creator may still
    # hand to later children.
    if os.getpid() != creator_pid:
        return
    try:
        sem_unlink(name)
    except FileNotFoundError:
        pass
    finally:
        if _resource_tracker is not None:
            _resource_tracker.unregister(name, "semaphore")


def _semlock_after_fork(obj):
    obj._semlock._after_fork()


class SemLock(object):
    """Base of the semaphore-backed primitives: owns one _mpcore.SemLock."""

    def __init__(self, kind, value, maxvalue, *, ctx=None):
        ctx = _default_ctx(ctx)
        # Under fork every child inherits the semaphore itself, so the name
        # can go at once and nothing is ever left in /dev/shm.  Other start
        # methods re-open it by name in the child, so it lives until the
        # creator drops it (and the resource tracker covers a crash).
        self._is_fork_ctx = ctx.get_start_method() == 'fork'
        for _ in range(_NAME_ATTEMPTS):
            name = self._make_name()
            try:
                sl = _mpcore.SemLock(kind, value, maxvalue, name,
                                     self._is_fork_ctx)
            except FileExistsError:
                continue
            break
        else:
            raise FileExistsError('no free name found for a semaphore')
        self._semlock = sl
        util.debug('created semlock with handle %s' % sl.handle)
        self._make_methods()
        util.register_after_fork(self, _semlock_after_fork)
        if sl.name is not None:
            if _resource_tracker is not None:
                _resource_tracker.register(sl.name, "semaphore")
            util.Finalize(self, _unlink_semaphore, (sl.name, os.getpid()),
                          exitpriority=0)

    @staticmethod
    def _make_name():
        prefix = process.current_process()._config.get('semprefix', '/mp')
        return '%s-%s' % (prefix, os.urandom(6).hex())

    def _make_methods(self):
        # Bound C methods: acquire/release cost one C call, no Python frame.
        self.acquire = self._semlock.acquire
        self.release = self._semlock.release

    def __enter__(self):
        return self._semlock.__enter__()

    def __exit__(self, *args):
        return self._semlock.__exit__(*args)

    def __getstate__(self):
        context.assert_spawning(self)
        sl = self._semlock
        if self._is_fork_ctx:
            raise RuntimeError(_FORK_MIX_MESSAGE)
        return (sl.handle, sl.kind, sl.maxvalue, sl.name)

    def __setstate__(self, state):
        self._semlock = _mpcore.SemLock._rebuild(*state)
        self._is_fork_ctx = False
        util.debug('recreated blocker with handle %r' % state[0])
        self._make_methods()


class Semaphore(SemLock):
    """A counting semaphore (no upper bound but SEM_VALUE_MAX)."""

    def __init__(self, value=1, *, ctx=None):
        SemLock.__init__(self, SEMAPHORE, value, SEM_VALUE_MAX, ctx=ctx)

    def get_value(self):
        return self._semlock._get_value()

    def __repr__(self):
        try:
            value = self._semlock._get_value()
        except Exception:
            value = 'unknown'
        return '<%s(value=%s)>' % (type(self).__name__, value)


class BoundedSemaphore(Semaphore):
    """A semaphore whose release() past its initial value raises ValueError."""

    def __init__(self, value=1, *, ctx=None):
        SemLock.__init__(self, SEMAPHORE, value, value, ctx=ctx)

    def __repr__(self):
        try:
            value = self._semlock._get_value()
        except Exception:
            value = 'unknown'
        return '<%s(value=%s, maxvalue=%s)>' % (
            type(self).__name__, value, self._semlock.maxvalue)


def _holder_name():
    # "Process" or "Process|Thread" for the caller, as the stdlib reports.
    name = process.current_process().name
    thread = threading.current_thread().name
    if thread != 'MainThread':
        name = '%s|%s' % (name, thread)
    return name


class Lock(SemLock):
    """A non-recursive lock: any thread or process may release it."""

    def __init__(self, *, ctx=None):
        SemLock.__init__(self, SEMAPHORE, 1, 1, ctx=ctx)

    def __repr__(self):
        try:
            sl = self._semlock
            if sl._is_mine():
                owner = _holder_name()
            elif sl._get_value() == 1:
                owner = 'None'
            elif sl._count() > 0:
                owner = 'SomeOtherThread'
            else:
                owner = 'SomeOtherProcess'
        except Exception:
            owner = 'unknown'
        return '<%s(owner=%s)>' % (type(self).__name__, owner)


class RLock(SemLock):
    """A recursive lock owned by one thread of one process at a time."""

    def __init__(self, *, ctx=None):
        SemLock.__init__(self, RECURSIVE_MUTEX, 1, 1, ctx=ctx)

    def __repr__(self):
        try:
            sl = self._semlock
            if sl._is_mine():
                owner, count = _holder_name(), sl._count()
            elif sl._get_value() == 1:
                owner, count = 'None', 0
            elif sl._count() > 0:
                owner, count = 'SomeOtherThread', 'nonzero'
            else:
                owner, count = 'SomeOtherProcess', 'nonzero'
        except Exception:
            owner, count = 'unknown', 'unknown'
        return '<%s(%s, %s)>' % (type(self).__name__, owner, count)


class Condition(object):
    """A condition variable over a shared lock (an RLock by default).

    Three semaphores carry the protocol: a waiter posts `_sleeping` before
    it lets go of the lock and `_woken` once its wait ends (signalled or
    timed out); a notifier posts `_wait_semaphore` once per waiter it
    wakes and then waits for those waiters' `_woken` posts, so a notify
    has taken effect when it returns.
    """

    # Seconds notify() waits for the waiters it woke to leave wait().
    _notify_grace = 10.0

    def __init__(self, lock=None, *, ctx=None):
        ctx = _default_ctx(ctx)
        self._lock = lock or ctx.RLock()
        self._sleeping_count = ctx.Semaphore(0)
        self._woken_count = ctx.Semaphore(0)
        self._wait_semaphore = ctx.Semaphore(0)
        self._make_methods()

    # The semaphores are the condition; a child gets them all.
    _PARTS = ('_lock', '_sleeping_count', '_woken_count', '_wait_semaphore')

    def __getstate__(self):
        context.assert_spawning(self)
        return tuple(getattr(self, name) for name in self._PARTS)

    def __setstate__(self, state):
        for name, part in zip(self._PARTS, state):
            setattr(self, name, part)
        self._make_methods()

    def _make_methods(self):
        # The lock's methods, bound once: they are the condition's.
        self.acquire, self.release = self._lock.acquire, self._lock.release

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()

    def __repr__(self):
        value = lambda sem: sem._semlock._get_value()
        try:
            waiting = value(self._sleeping_count) - value(self._woken_count)
        except Exception:
            waiting = 'unknown'
        return '<%s(%s, %s)>' % (type(self).__name__, self._lock, waiting)

    def wait(self, timeout=None):
        """Release the lock, wait for a notify (or the timeout), re-acquire.

        Returns False if the timeout expired, True otherwise."""
        lock = self._lock._semlock
        assert lock._is_mine(), 'must acquire() condition before using wait()'
        self._sleeping_count.release()
        # An RLock may be held several times over: let go of all of them.
        depth = lock._count()
        for _ in range(depth):
            lock.release()
        try:
            return self._wait_semaphore.acquire(True, timeout)
        finally:
            self._woken_count.release()
            for _ in range(depth):
                lock.acquire()

    def notify(self, n=1):
        """Wake up to `n` processes or threads waiting on this condition."""
        assert self._lock._semlock._is_mine(), 'lock is not owned'
        sleeping = self._sleeping_count._semlock
        woken = self._woken_count._semlock
        signal = self._wait_semaphore._semlock
        # Waiters that already left (timed out) posted both counters:
        # settle them first so only waiters still inside wait() count.
        while woken.acquire(False):
            sleeping.acquire(False)
        woke = 0
        while woke < n and sleeping.acquire(False):
            signal.release()
            woke += 1
        if woke:
            # Each of them posts `_woken` as it leaves wait(), whether our
            # signal or its own timeout ended the wait.  A waiter killed
            # inside wait() never will (DESIGN.md: processes die holding
            # things): after a grace period stop waiting for the rest, so
            # notify() stalls once instead of hanging forever.  Its sleeper
            # token is gone now, so later notifies do not wait for it.
            grace = time.monotonic() + self._notify_grace
            for _ in range(woke):
                if not woken.acquire(True, max(grace - time.monotonic(), 0)):
                    break
            # A waiter that timed out left its signal unconsumed; drop it so
            # no later wait() returns spuriously.
            while signal.acquire(False):
                pass

    def notify_all(self):
        self.notify(n=sys.maxsize)

    def wait_for(self, predicate, timeout=None):
        """Wait until predicate() is true or the timeout expires; returns
        the predicate's last value."""
        result = predicate()
        if result:
            return result
        deadline = None if timeout is None else time.monotonic() + timeout
        while not result:
            if deadline is None:
                remaining = None
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
            self.wait(remaining)
            result = predicate()
        return result


class Event(object):
    """A flag processes can set, clear and wait for."""

    def __init__(self, *, ctx=None):
        ctx = _default_ctx(ctx)
        self._cond = ctx.Condition(ctx.Lock())
        self._flag = ctx.Semaphore(0)   # value 1 while set

    def __getstate__(self):
        context.assert_spawning(self)
        return (self._cond, self._flag)

    def __setstate__(self, state):
        self._cond, self._flag = state

    def _peek(self):
        # Called with the condition held.
        if self._flag.acquire(False):
            self._flag.release()
            return True
        return False

    def is_set(self):
        with self._cond:
            return self._peek()

    def set(self):
        with self._cond:
            self._flag.acquire(False)
            self._flag.release()
            self._cond.notify_all()

    def clear(self):
        with self._cond:
            self._flag.acquire(False)

    def wait(self, timeout=None):
        """Block until the flag is set or the timeout expires; returns the
        flag."""
        with self._cond:
            if self._peek():
                return True
            self._cond.wait(timeout)
            return self._peek()

    def __repr__(self):
        state = 'set' if self.is_set() else 'unset'
        return '<%s at %#x %s>' % (type(self).__name__, id(self), state)


class _SharedInt(object):
    """A small non-negative integer shared between processes, kept as the
    value of a semaphore.  Only read or written with the owning condition
    held, so the acquire/release steps of an update never interleave."""

    def __init__(self, value, ctx):
        self._sem = ctx.Semaphore(value)

    def __getstate__(self):
        context.assert_spawning(self)
        return self._sem

    def __setstate__(self, state):
        self._sem = state

    def get(self):
        return self._sem._semlock._get_value()

    def set(self, value):
        sl = self._sem._semlock
        current = sl._get_value()
        while current > value:
            sl.acquire(False)
            current -= 1
        while current < value:
            sl.release()
            current += 1


class Barrier(threading.Barrier):
    """threading.Barrier across processes: its state and count live in
    shared semaphores and its condition is a multiprocessing Condition."""

    # threading.Barrier's states run from -2 (broken) to 1 (draining);
    # a semaphore holds state + _STATE_BIAS.
    _STATE_BIAS = 2

    def __init__(self, parties, action=None, timeout=None, *, ctx=None):
        ctx = _default_ctx(ctx)
        self._shared_state = _SharedInt(self._STATE_BIAS, ctx)
        self._shared_count = _SharedInt(0, ctx)
        threading.Barrier.__init__(self, parties, action, timeout)
        self._cond = ctx.Condition()

    def __getstate__(self):
        context.assert_spawning(self)
        return (self._parties, self._action, self._timeout, self._cond,
                self._shared_state, self._shared_count)

    def __setstate__(self, state):
        (self._parties, self._action, self._timeout, self._cond,
         self._shared_state, self._shared_count) = state

    @property
    def _state(self):
        return self._shared_state.get() - self._STATE_BIAS

    @_state.setter
    def _state(self, value):
        self._shared_state.set(value + self._STATE_BIAS)

    @property
    def _count(self):
        return self._shared_count.get()

    @_count.setter
    def _count(self, value):
        self._shared_count.set(value)
