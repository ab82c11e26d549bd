"""Contexts: one object per start method carrying every factory of the
package, plus the default context behind the module-level functions.

Factories import their submodule on first call, so `import
multiprocessing_c` stays cheap and a missing part fails with an
ImportError that names it.
"""
import os
import sys
import threading

from . import process
from . import reduction

__all__ = ()


class ProcessError(Exception):
    pass


class BufferTooShort(ProcessError):
    pass


class TimeoutError(ProcessError):
    pass


class AuthenticationError(ProcessError):
    pass


class BaseContext:
    """The factories and functions of the package, bound to a start method."""

    ProcessError = ProcessError
    BufferTooShort = BufferTooShort
    TimeoutError = TimeoutError
    AuthenticationError = AuthenticationError

    current_process = staticmethod(process.current_process)
    parent_process = staticmethod(process.parent_process)
    active_children = staticmethod(process.active_children)

    def cpu_count(self):
        """Return the number of CPUs in the system."""
        num = os.cpu_count()
        if num is None:
            raise NotImplementedError('cannot determine number of cpus')
        return num

    def Manager(self):
        """Return a started SyncManager serving shared objects."""
        from .managers import SyncManager
        m = SyncManager(ctx=self.get_context())
        m.start()
        return m

    def Pipe(self, duplex=True):
        """Return two Connection objects joined by a pipe."""
        from .connection import Pipe
        return Pipe(duplex)

    def Lock(self):
        """Return a non-recursive lock shared between processes."""
        from .synchronize import Lock
        return Lock(ctx=self.get_context())

    def RLock(self):
        """Return a recursive lock shared between processes."""
        from .synchronize import RLock
        return RLock(ctx=self.get_context())

    def Condition(self, lock=None):
        """Return a condition variable shared between processes."""
        from .synchronize import Condition
        return Condition(lock, ctx=self.get_context())

    def Semaphore(self, value=1):
        """Return a semaphore shared between processes."""
        from .synchronize import Semaphore
        return Semaphore(value, ctx=self.get_context())

    def BoundedSemaphore(self, value=1):
        """Return a bounded semaphore shared between processes."""
        from .synchronize import BoundedSemaphore
        return BoundedSemaphore(value, ctx=self.get_context())

    def Event(self):
        """Return an event shared between processes."""
        from .synchronize import Event
        return Event(ctx=self.get_context())

    def Barrier(self, parties, action=None, timeout=None):
        """Return a barrier shared between processes."""
        from .synchronize import Barrier
        return Barrier(parties, action, timeout, ctx=self.get_context())

    def Queue(self, maxsize=0):
        """Return a queue shared between processes."""
        from .queues import Queue
        return Queue(maxsize, ctx=self.get_context())

    def JoinableQueue(self, maxsize=0):
        """Return a queue with task_done() and join()."""
        from .queues import JoinableQueue
        return JoinableQueue(maxsize, ctx=self.get_context())

    def SimpleQueue(self):
        """Return a minimal queue shared between processes."""
        from .queues import SimpleQueue
        return SimpleQueue(ctx=self.get_context())

    def Pool(self, processes=None, initializer=None, initargs=(),
             maxtasksperchild=None):
        """Return a pool of worker processes."""
        from .pool import Pool
        return Pool(processes, initializer, initargs, maxtasksperchild,
                    context=self.get_context())

    def RawValue(self, typecode_or_type, *args):
        """Return a ctypes object in shared memory, without a lock."""
        from .sharedctypes import RawValue
        return RawValue(typecode_or_type, *args)

    def RawArray(self, typecode_or_type, size_or_initializer):
        """Return a ctypes array in shared memory, without a lock."""
        from .sharedctypes import RawArray
        return RawArray(typecode_or_type, size_or_initializer)

    def Value(self, typecode_or_type, *args, lock=True):
        """Return a ctypes object in shared memory, with a lock."""
        from .sharedctypes import Value
        return Value(typecode_or_type, *args, lock=lock,
                     ctx=self.get_context())

    def Array(self, typecode_or_type, size_or_initializer, *, lock=True):
        """Return a ctypes array in shared memory, with a lock."""
        from .sharedctypes import Array
        return Array(typecode_or_type, size_or_initializer, lock=lock,
                     ctx=self.get_context())

    def freeze_support(self):
        """Run the child's code if this frozen Windows executable was started
        as a child; a no-op elsewhere."""
        if sys.platform == 'win32' and getattr(sys, 'frozen', False):
            from .spawn import freeze_support
            freeze_support()

    def get_logger(self):
        """Return the package's logger."""
        from .util import get_logger
        return get_logger()

    def log_to_stderr(self, level=None):
        """Send the package's log records to stderr."""
        from .util import log_to_stderr
        return log_to_stderr(level)

    def allow_connection_pickling(self):
        """Make Connections and sockets picklable for other processes."""
        # Importing the module registers the reducers.
        from . import connection  # noqa: F401

    def set_executable(self, executable):
        """Set the interpreter that spawned children run."""
        from .spawn import set_executable
        set_executable(executable)

    def set_forkserver_preload(self, module_names):
        """Name modules for the fork server to import before forking."""
        from .forkserver import set_forkserver_preload
        set_forkserver_preload(module_names)

    def get_context(self, method=None):
        """Return the context of start method `method` (or this one)."""
        if method is None:
            return self
        try:
            ctx = _concrete_contexts[method]
        except KeyError:
            raise ValueError('cannot find context for %r' % method) from None
        ctx._check_available()
        return ctx

    def get_start_method(self, allow_none=False):
        return self._name

    def set_start_method(self, method, force=False):
        raise ValueError('cannot set start method of concrete context')

    @property
    def reducer(self):
        """The reduction module used to pickle objects for other processes."""
        return _reducer[0]

    @reducer.setter
    def reducer(self, module):
        _reducer[0] = module

    def _check_available(self):
        pass


class Process(process.BaseProcess):
    """A process started by the default context's start method."""

    _start_method = None

    @staticmethod
    def _Popen(process_obj):
        return _default_context.get_context().Process._Popen(process_obj)

    @staticmethod
    def _after_fork():
        return _default_context.get_context().Process._after_fork()


class DefaultContext(BaseContext):
    """The context behind the module-level functions: its start method is
    fixed on first use, or by set_start_method()."""

    Process = Process

    def __init__(self, context):
        self._default_context = context
        self._actual_context = None

    def get_context(self, method=None):
        if method is None:
            if self._actual_context is None:
                self._actual_context = self._default_context
            return self._actual_context
        return super().get_context(method)

    def set_start_method(self, method, force=False):
        """Set the start method; only once unless `force` is true."""
        if self._actual_context is not None and not force:
            raise RuntimeError('context has already been set')
        if method is None and force:
            self._actual_context = None
            return
        self._actual_context = self.get_context(method)

    def get_start_method(self, allow_none=False):
        """Return the start method, fixing the default one unless
        `allow_none` is true and none was chosen yet."""
        if self._actual_context is None:
            if allow_none:
                return None
            self._actual_context = self._default_context
        return self._actual_context._name

    def get_all_start_methods(self):
        """Return the start methods available here, the default first."""
        default = self._default_context._name
        methods = [default] + [m for m in _concrete_contexts if m != default]
        return [m for m in methods if _method_available(m)]


def _method_available(method):
    try:
        _concrete_contexts[method]._check_available()
    except ValueError:
        return False
    return True


class ForkProcess(process.BaseProcess):
    _start_method = 'fork'

    @staticmethod
    def _Popen(process_obj):
        from .popen_fork import Popen
        return Popen(process_obj)


class SpawnProcess(process.BaseProcess):
    _start_method = 'spawn'

    @staticmethod
    def _Popen(process_obj):
        from .popen_spawn_posix import Popen
        return Popen(process_obj)

    @staticmethod
    def _after_fork():
        # A spawned child starts from scratch: nothing to run after fork.
        pass


class ForkServerProcess(process.BaseProcess):
    _start_method = 'forkserver'

    @staticmethod
    def _Popen(process_obj):
        from .popen_forkserver import Popen
        return Popen(process_obj)


class ForkContext(BaseContext):
    _name = 'fork'
    Process = ForkProcess


class SpawnContext(BaseContext):
    _name = 'spawn'
    Process = SpawnProcess


class ForkServerContext(BaseContext):
    _name = 'forkserver'
    Process = ForkServerProcess

    def _check_available(self):
        import importlib.util
        if importlib.util.find_spec(__package__ + '.forkserver') is None:
            raise ValueError('forkserver start method not available: '
                             'multiprocessing_c has no fork server yet')


# One reducer for the whole program, whichever context sets it.
_reducer = [reduction]

_concrete_contexts = {
    'fork': ForkContext(),
    'spawn': SpawnContext(),
    'forkserver': ForkServerContext(),
}

# Linux default of Python 3.9-3.13.
_default_context = DefaultContext(_concrete_contexts['fork'])


def _force_start_method(method):
    _default_context._actual_context = _concrete_contexts[method]

# -------------------------------------------------- the spawning Popen

_tls = threading.local()


def get_spawning_popen():
    """The Popen pickling a new process's data in this thread, or None."""
    return getattr(_tls, 'spawning_popen', None)


def set_spawning_popen(popen):
    _tls.spawning_popen = popen


def assert_spawning(obj):
    """Refuse to pickle `obj` except while starting a process."""
    if get_spawning_popen() is None:
        raise RuntimeError(
            '%s objects should only be shared between processes'
            ' through inheritance' % type(obj).__name__)
