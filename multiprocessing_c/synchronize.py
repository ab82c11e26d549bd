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


def _rebuild_semlock(cls, state):
    # The unpickling half of SemLock.__reduce__, in a child being started.
    obj = cls._rebuild(*state)
    obj._is_fork_ctx = False
    util.debug('recreated blocker with handle %r' % state[0])
    return obj


class SemLock(_mpcore.SemLock):
    """Base of the semaphore-backed primitives.

    Each object *is* an ``_mpcore.SemLock``: acquire(), release(),
    __enter__ and __exit__ are the C type's own methods, so taking and
    dropping a lock runs no Python frame at all, with or without ``with``.
    ``_semlock`` (the stdlib's name for the wrapped C object) is the object
    itself.  A recursive lock's owner and count live in C as well; a
    forked child forgets what its parent held through a pthread_atfork
    hook in C, so nothing is registered with util per lock.
    """

    def __init__(self, kind, value, maxvalue, *, ctx=None):
        # Under fork every child inherits the semaphore itself, so it gets
        # no name at all and nothing can be left in /dev/shm.  Children of
        # the other start methods re-open it by name, so it lives until
        # the creator drops it (and the resource tracker covers a crash).
        forked = _default_ctx(ctx).get_start_method() == 'fork'
        self._is_fork_ctx = forked
        attempts = _NAME_ATTEMPTS
        while True:
            try:
                _mpcore.SemLock.__init__(self, kind, value, maxvalue,
                                         self._make_name(), forked)
                break
            except FileExistsError:
                attempts -= 1
                if not attempts:
                    raise FileExistsError('no free name found for a semaphore')
        util.debug('created semlock with handle %s' % self.handle)
        if not forked:
            name = self.name
            if _resource_tracker is not None:
                _resource_tracker.register(name, "semaphore")
            util.Finalize(self, _unlink_semaphore, (name, os.getpid()),
                          exitpriority=0)

    @staticmethod
    def _make_name():
        prefix = process.current_process()._config.get('semprefix', '/mp')
        return '%s-%s' % (prefix, os.urandom(6).hex())

    @property
    def _semlock(self):
        return self

    def __getstate__(self):
        context.assert_spawning(self)
        if self._is_fork_ctx:
            raise RuntimeError(_FORK_MIX_MESSAGE)
        return (self.handle, self.kind, self.maxvalue, self.name)

    def __reduce__(self):
        # Pickled only for a child being started (__getstate__ checks),
        # which re-opens the semaphore by name as an object of this class.
        return _rebuild_semlock, (type(self), self.__getstate__())


class Semaphore(SemLock):
    """A counting semaphore (no upper bound but SEM_VALUE_MAX)."""

    def __init__(self, value=1, *, ctx=None):
        SemLock.__init__(self, SEMAPHORE, value, SEM_VALUE_MAX, ctx=ctx)

    def get_value(self):
        return self._get_value()

    def _repr_fields(self):
        return 'value=%s' % (self._get_value(),)

    def __repr__(self):
        try:
            fields = self._repr_fields()
        except Exception:
            fields = 'value=unknown'
        return '<%s(%s)>' % (type(self).__name__, fields)


class BoundedSemaphore(Semaphore):
    """A semaphore whose release() past its initial value raises ValueError."""

    def __init__(self, value=1, *, ctx=None):
        SemLock.__init__(self, SEMAPHORE, value, value, ctx=ctx)

    def _repr_fields(self):
        return 'value=%s, maxvalue=%s' % (self._get_value(), self.maxvalue)


def _holder_name():
    # "Process" or "Process|Thread" for the caller, as the stdlib reports.
    name = process.current_process().name
    thread = threading.current_thread().name
    if thread != 'MainThread':
        name = '%s|%s' % (name, thread)
    return name


def _owner_of(lock):
    """Who holds `lock`, as the reprs name it: the caller's name when it
    does, None when nobody does, else which kind of stranger."""
    if lock._is_mine():
        return _holder_name()
    if lock._get_value() == 1:
        return None
    return 'SomeOtherThread' if lock._count() > 0 else 'SomeOtherProcess'


class Lock(SemLock):
    """A non-recursive lock: any thread or process may release it."""

    def __init__(self, *, ctx=None):
        SemLock.__init__(self, SEMAPHORE, 1, 1, ctx=ctx)

    def __repr__(self):
        try:
            owner = _owner_of(self)
        except Exception:
            owner = 'unknown'
        return '<%s(owner=%s)>' % (type(self).__name__, owner)


class RLock(SemLock):
    """A recursive lock owned by one thread of one process at a time."""

    def __init__(self, *, ctx=None):
        SemLock.__init__(self, RECURSIVE_MUTEX, 1, 1, ctx=ctx)

    def __repr__(self):
        try:
            owner = _owner_of(self)
            depth = (0 if owner is None else
                     self._count() if self._is_mine() else 'nonzero')
        except Exception:
            owner = depth = 'unknown'
        return '<%s(%s, %s)>' % (type(self).__name__, owner, depth)


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
        value = lambda sem: sem._get_value()
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
        sleeping = self._sleeping_count
        woken = self._woken_count
        signal = self._wait_semaphore
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
        deadline = None if timeout is None else time.monotonic() + timeout
        result = predicate()
        while not result and not _expired(deadline):
            self.wait(_seconds_left(deadline))
            result = predicate()
        return result


def _expired(deadline):
    return deadline is not None and time.monotonic() >= deadline


def _seconds_left(deadline):
    # None (no limit) stays None; a deadline passed meanwhile gives 0.
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 0.0)


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

    def _is_up(self):
        # Asked with the condition held, so nobody moves the flag meanwhile.
        return self._flag._get_value() > 0

    def is_set(self):
        with self._cond:
            return self._is_up()

    def _put(self, up):
        with self._cond:
            if not up:
                self._flag.acquire(False)
                return
            if not self._is_up():
                self._flag.release()
            self._cond.notify_all()

    def set(self):
        self._put(True)

    def clear(self):
        self._put(False)

    def wait(self, timeout=None):
        """Block until the flag is set or the timeout expires; returns the
        flag."""
        with self._cond:
            if not self._is_up():
                self._cond.wait(timeout)
            return self._is_up()

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
        return self._sem._get_value()

    def set(self, value):
        sl = self._sem
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
