"""The multiprocessing API over threads: Process is a thread, Pool is a
ThreadPool, queues and locks are the threading ones.  Useful to run code
written for processes in one process (I/O-bound work, debugging).

Threads share memory, so the "shared" types are the plain ones: Value is a
holder, Array an array.array, and Manager() is this module itself (its
Queue, Lock, dict, list ... already make objects every thread sees)."""
import array
import builtins
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
# Manager().dict() and Manager().list(), as with a real manager.
dict = builtins.dict
list = builtins.list


def freeze_support():
    """Nothing to do: no child interpreter is ever started."""


def shutdown():
    """Nothing to shut down: Manager() started no server."""


def Manager():
    """The module itself: its factories already make shared objects."""
    return sys.modules[__name__]


def Pipe(duplex=True):
    """Two connected Connection objects over queues."""
    return connection.Pipe(duplex)


def Pool(processes=None, initializer=None, initargs=()):
    """A ThreadPool of `processes` threads."""
    from ..pool import ThreadPool
    return ThreadPool(processes, initializer, initargs)


def Array(typecode, sequence, lock=True):
    """An array.array: threads share memory already."""
    return array.array(typecode, sequence)


class Value:
    """A plain holder with the .value attribute of sharedctypes.Value."""

    def __init__(self, typecode, value, lock=True):
        self._typecode = typecode
        self.value = value

    def __repr__(self):
        return '<%s(%r, %r)>' % (type(self).__name__, self._typecode,
                                 self.value)


class Namespace:
    """An object whose attributes are given as keywords."""

    def __init__(self, **kwds):
        self.__dict__.update(kwds)

    def __repr__(self):
        shown = ['%s=%r' % kv for kv in sorted(self.__dict__.items())
                 if not kv[0].startswith('_')]
        return '%s(%s)' % (type(self).__name__, ', '.join(shown))


# -- "processes" --------------------------------------------------------
#
# Each thread remembers, weakly, the DummyProcess threads it started; the
# main thread's table is made on first use like any other's.

def _started_by(thread):
    table = thread.__dict__.get('_children')
    if table is None:
        table = thread._children = weakref.WeakKeyDictionary()
    return table


def active_children():
    """The DummyProcess threads this thread started that are still alive."""
    table = _started_by(current_process())
    for finished in [t for t in table.keys() if not t.is_alive()]:
        table.pop(finished, None)
    return builtins.list(table)


class DummyProcess(threading.Thread):
    """A thread with the Process API (start, join, is_alive, exitcode)."""

    def __init__(self, group=None, target=None, name=None, args=(),
                 kwargs={}):
        self._parent = current_process()
        self._pid = None
        super().__init__(group, target, name, args, kwargs)
        self._children = weakref.WeakKeyDictionary()

    def start(self):
        starter = current_process()
        if starter is not self._parent:
            raise RuntimeError(
                'Parent is {0!r} but current_process is {1!r}'.format(
                    self._parent, starter))
        _started_by(starter)[self] = None
        super().start()

    @property
    def exitcode(self):
        """0 once the thread has finished, None before (or unstarted)."""
        if self.ident is None or self.is_alive():
            return None
        return 0


Process = DummyProcess
