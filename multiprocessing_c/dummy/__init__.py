"""The multiprocessing API over threads: Process is a thread, Pool is a
ThreadPool, queues and locks are the threading ones.  Useful to run code
written for processes in one process (I/O-bound work, debugging)."""
import array
import queue
import sys
import threading
import weakref

from threading import (Barrier, BoundedSemaphore, Condition, Event, Lock,
                       RLock, Semaphore)
from threading import current_thread as current_process
from queue import Queue

# `multiprocessing.dummy.connection` is reachable as an attribute, as with
# the stdlib (CPython's suite reads it right after `import ...dummy`).
from . import connection  # noqa: E402

__all__ = [
    'Process', 'current_process', 'active_children', 'freeze_support',
    'Lock', 'RLock', 'Semaphore', 'BoundedSemaphore', 'Condition',
    'Event', 'Barrier', 'Queue', 'Manager', 'Pipe', 'Pool', 'JoinableQueue',
]

JoinableQueue = Queue


def _children_of(thread):
    # Each thread keeps the "processes" it started, weakly.
    children = getattr(thread, '_children', None)
    if children is None:
        children = weakref.WeakKeyDictionary()
        thread._children = children
    return children


class DummyProcess(threading.Thread):
    """A thread with the Process API (start, join, is_alive, exitcode)."""

    def __init__(self, group=None, target=None, name=None, args=(),
                 kwargs={}):
        threading.Thread.__init__(self, group, target, name, args, kwargs)
        self._pid = None
        self._children = weakref.WeakKeyDictionary()
        self._start_called = False
        self._parent = current_process()

    def start(self):
        if self._parent is not current_process():
            raise RuntimeError(
                'Parent is {0!r} but current_process is {1!r}'.format(
                    self._parent, current_process()))
        self._start_called = True
        _children_of(self._parent)[self] = None
        threading.Thread.start(self)

    @property
    def exitcode(self):
        """0 once the thread has finished, None before."""
        if self._start_called and not self.is_alive():
            return 0
        return None


Process = DummyProcess


def active_children():
    """The DummyProcess threads this thread started that are still alive."""
    children = _children_of(current_process())
    for p in list(children):
        if not p.is_alive():
            children.pop(p, None)
    return list(children)


def freeze_support():
    pass


class Namespace:
    """An object whose attributes are given as keywords."""

    def __init__(self, **kwds):
        self.__dict__.update(kwds)

    def __repr__(self):
        shown = ['%s=%r' % (k, v) for k, v in sorted(self.__dict__.items())
                 if not k.startswith('_')]
        return '%s(%s)' % (type(self).__name__, ', '.join(shown))


class Value:
    """A plain holder with the .value attribute of sharedctypes.Value."""

    def __init__(self, typecode, value, lock=True):
        self._typecode = typecode
        self._value = value

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        self._value = value

    def __repr__(self):
        return '<%s(%r, %r)>' % (type(self).__name__, self._typecode,
                                 self._value)


def Array(typecode, sequence, lock=True):
    """An array.array: threads share memory already."""
    return array.array(typecode, sequence)


def Manager():
    """The module itself: its factories already make shared objects."""
    return sys.modules[__name__]


def shutdown():
    pass


def Pool(processes=None, initializer=None, initargs=()):
    """A ThreadPool of `processes` threads."""
    from ..pool import ThreadPool
    return ThreadPool(processes, initializer, initargs)


def Pipe(duplex=True):
    """Two connected Connection objects over queues."""
    from .connection import Pipe as _pipe
    return _pipe(duplex)
