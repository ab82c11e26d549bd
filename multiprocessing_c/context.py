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
    """The base of the package's own exceptions."""


class BufferTooShort(ProcessError):
    """recv_bytes_into() got a message larger than the buffer; the message
    is args[0]."""


class TimeoutError(ProcessError):
    """A method with a timeout ran out of time (AsyncResult.get())."""


class AuthenticationError(ProcessError):
    """The other end of a connection failed the authkey challenge."""


class _Factory:
    """A context attribute that, when called, imports ``module`` and calls
    its ``name`` with the context passed as keyword ``ctx_arg`` (if any).

    The context is resolved at call time, so the default context's start
    method is not fixed just by looking the factory up; the import happens
    on first call, so a part that is missing fails naming itself."""

    def __init__(self, module, ctx_arg='ctx', doc=None):
        self.module = module
        self.ctx_arg = ctx_arg
        self.doc = doc
        self.name = None
        self.target = None

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, ctx, owner=None):
        return self if ctx is None else _BoundFactory(self, ctx)

    def resolve(self):
        if self.target is None:
            import importlib
            module = importlib.import_module('.' + self.module, __package__)
            self.target = getattr(module, self.name)
        return self.target


class _BoundFactory:
    """A factory bound to one context: what ``ctx.Lock`` evaluates to."""

    def __init__(self, factory, ctx):
        self._factory = factory
        self._ctx = ctx
        self.__name__ = self.__qualname__ = factory.name
        self.__doc__ = factory.doc

    def __call__(self, *args, **kwargs):
        f = self._factory
        if f.ctx_arg is not None:
            kwargs[f.ctx_arg] = self._ctx.get_context()
        return f.resolve()(*args, **kwargs)

    @property
    def __signature__(self):
        import inspect
        sig = inspect.signature(self._factory.resolve())
        return sig.replace(parameters=[
            p for name, p in sig.parameters.items()
            if name != self._factory.ctx_arg])

    def __repr__(self):
        return '<%s factory of %r>' % (self.__name__, self._ctx)


class BaseContext:
    """The factories and functions of the package, bound to a start method."""

    # The exceptions and the process functions, from any context.
    ProcessError, BufferTooShort, TimeoutError, AuthenticationError = (
        ProcessError, BufferTooShort, TimeoutError, AuthenticationError)
    current_process, parent_process, active_children = map(staticmethod, (
        process.current_process, process.parent_process,
        process.active_children))

    # Shared objects: each is the submodule's class or function, called
    # with this context.
    Pipe = _Factory('connection', None,
                    'Return two Connection objects joined by a pipe.')
    Lock = _Factory('synchronize', doc='Return a non-recursive lock.')
    RLock = _Factory('synchronize', doc='Return a recursive lock.')
    Condition = _Factory('synchronize', doc='Return a condition variable.')
    Semaphore = _Factory('synchronize', doc='Return a semaphore.')
    BoundedSemaphore = _Factory('synchronize',
                                doc='Return a bounded semaphore.')
    Event = _Factory('synchronize', doc='Return an event.')
    Barrier = _Factory('synchronize', doc='Return a barrier.')
    Queue = _Factory('queues', doc='Return a queue.')
    JoinableQueue = _Factory('queues',
                             doc='Return a queue with task_done() and join().')
    SimpleQueue = _Factory('queues', doc='Return a minimal queue.')
    Pool = _Factory('pool', 'context', 'Return a pool of worker processes.')
    RawValue = _Factory('sharedctypes', None,
                        'Return a ctypes object in shared memory.')
    RawArray = _Factory('sharedctypes', None,
                        'Return a ctypes array in shared memory.')
    Value = _Factory('sharedctypes',
                     doc='Return a ctypes object in shared memory with a lock.')
    Array = _Factory('sharedctypes',
                     doc='Return a ctypes array in shared memory with a lock.')

    # Settings and logging: the submodules' functions, whatever the context.
    get_logger = _Factory('util', None, "Return the package's logger.")
    log_to_stderr = _Factory('util', None,
                             "Send the package's log records to stderr.")
    set_executable = _Factory(
        'spawn', None, 'Set the interpreter that spawned children run.')
    set_forkserver_preload = _Factory(
        'forkserver', None,
        'Name modules for the fork server to import before forking.')

    def cpu_count(self):
        """Return the number of CPUs in the system."""
        count = os.cpu_count()
        if count is not None:
            return count
        raise NotImplementedError('cannot determine number of cpus')

    def Manager(self):
        """Return a started SyncManager serving shared objects."""
        from .managers import SyncManager
        manager = SyncManager(ctx=self.get_context())
        manager.start()
        return manager

    def freeze_support(self):
        """Run the child's code if this frozen Windows executable was started
        as a child; a no-op elsewhere."""
        if sys.platform == 'win32' and getattr(sys, 'frozen', False):
            from .spawn import freeze_support
            freeze_support()

    def allow_connection_pickling(self):
        """Make Connections and sockets picklable for other processes."""
        # Importing the module registers the reducers.
        from . import connection  # noqa: F401

    def get_context(self, method=None):
        """Return the context of start method `method` (or this one)."""
        if method is None:
            return self
        ctx = _concrete_contexts.get(method)
        if ctx is None:
            raise ValueError('cannot find context for %r' % method)
        ctx._check_available()      # ValueError if it cannot work here
        return ctx

    def _check_available(self):
        """Raise ValueError if this start method cannot work here."""

    def _set_reducer(self, module):
        _reducer[0] = module

    reducer = property(
        lambda self: _reducer[0], _set_reducer,
        doc='The reduction module used to pickle objects for other processes.')

    # A concrete context's start method is what it is.
    def set_start_method(self, method, force=False):
        raise ValueError('cannot set start method of concrete context')

    def get_start_method(self, allow_none=False):
        return self._name


def _chosen_process_class():
    return _default_context.get_context().Process


class Process(process.BaseProcess):
    """A process started by the default context's start method, as it is
    when the process starts."""

    _start_method = None
    _Popen = staticmethod(
        lambda process_obj: _chosen_process_class()._Popen(process_obj))
    _after_fork = staticmethod(
        lambda: _chosen_process_class()._after_fork())


class DefaultContext(BaseContext):
    """The context behind the module-level functions: its start method is
    fixed on first use, or by set_start_method()."""

    def __init__(self, context):
        # What applies if nobody chooses, and what was chosen (None: not
        # yet).
        self._default_context, self._actual_context = context, None

    Process = Process

    def _chosen(self):
        # The first use without an explicit choice fixes the default.
        if self._actual_context is None:
            self._actual_context = self._default_context
        return self._actual_context

    def get_context(self, method=None):
        if method is not None:
            return super().get_context(method)
        return self._chosen()

    def set_start_method(self, method, force=False):
        """Set the start method; only once unless `force` is true.  With
        `force`, None forgets the choice (the default applies again)."""
        if not force and self._actual_context is not None:
            raise RuntimeError('context has already been set')
        forget = force and method is None
        self._actual_context = None if forget else self.get_context(method)

    def get_start_method(self, allow_none=False):
        """Return the start method, fixing the default one unless
        `allow_none` is true and none was chosen yet."""
        if allow_none and self._actual_context is None:
            return None
        return self._chosen()._name

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


def _forkserver_available(self):
    import importlib.util
    if importlib.util.find_spec(__package__ + '.forkserver') is None:
        raise ValueError('forkserver start method not available: '
                         'multiprocessing_c has no fork server yet')


def _no_after_fork():
    # A spawned child starts as a fresh interpreter: there is no inherited
    # state for the after-fork hooks to reset.  A fork server's child has
    # reset the server's state before unpickling its Process (forkserver.py),
    # and clearing now would drop finalizers that unpickling registered.
    pass


def _define_start_method(method, process_name, context_name, popen_module,
                         after_fork=None, check_available=None):
    """Create the Process class and the context of one start method; the
    Process class starts its children with ``<popen_module>.Popen``."""
    def _Popen(process_obj):
        import importlib
        module = importlib.import_module('.' + popen_module, __package__)
        return module.Popen(process_obj)

    proc_ns = {'__module__': __name__, '_start_method': method,
               '_Popen': staticmethod(_Popen),
               '__doc__': 'A process started with the %r start method.' % method}
    if after_fork is not None:
        proc_ns['_after_fork'] = staticmethod(after_fork)
    proc_cls = type(process_name, (process.BaseProcess,), proc_ns)

    ctx_ns = {'__module__': __name__, '_name': method, 'Process': proc_cls,
              '__doc__': 'The context of the %r start method.' % method}
    if check_available is not None:
        ctx_ns['_check_available'] = check_available
    ctx_cls = type(context_name, (BaseContext,), ctx_ns)
    globals()[process_name] = proc_cls
    globals()[context_name] = ctx_cls
    return ctx_cls()


# One reducer for the whole program, whichever context sets it.
_reducer = [reduction]

_concrete_contexts = {
    'fork': _define_start_method('fork', 'ForkProcess', 'ForkContext',
                                 'popen_fork'),
    'spawn': _define_start_method('spawn', 'SpawnProcess', 'SpawnContext',
                                  'popen_spawn_posix',
                                  after_fork=_no_after_fork),
    'forkserver': _define_start_method('forkserver', 'ForkServerProcess',
                                       'ForkServerContext', 'popen_forkserver',
                                       after_fork=_no_after_fork,
                                       check_available=_forkserver_available),
}

# Linux default of Python 3.9-3.13.
_default_context = DefaultContext(_concrete_contexts['fork'])


def _force_start_method(method):
    # A child takes its parent's start method, whatever it was set to.
    _default_context._actual_context = _concrete_contexts[method]

# -------------------------------------------------- the spawning Popen


class _Spawning(threading.local):
    # Per thread: the Popen whose child's data is being pickled, if any.
    popen = None


_spawning = _Spawning()


def get_spawning_popen():
    """The Popen pickling a new process's data in this thread, or None."""
    return _spawning.popen


def set_spawning_popen(popen):
    _spawning.popen = popen


def assert_spawning(obj):
    """Refuse to pickle `obj` except while starting a process."""
    if get_spawning_popen() is not None:
        return
    raise RuntimeError('%s objects should only be shared between processes '
                       'through inheritance' % type(obj).__name__)
