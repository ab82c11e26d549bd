"""multiprocessing_c: a drop-in replacement for `multiprocessing` with its
core in C.  Use it as ``import multiprocessing_c as multiprocessing``, or run
an unchanged program with ``python -m multiprocessing_c script.py``.

The module-level functions are those of the default context; see
`get_context()` for contexts of a given start method.
"""
from . import context

__version__ = '0.1.0'

__all__ = [
    'Array', 'AuthenticationError', 'Barrier', 'BoundedSemaphore',
    'BufferTooShort', 'Condition', 'Event', 'JoinableQueue', 'Lock',
    'Manager', 'Pipe', 'Pool', 'Process', 'ProcessError', 'Queue', 'RLock',
    'RawArray', 'RawValue', 'Semaphore', 'SimpleQueue', 'TimeoutError',
    'Value', 'active_children', 'allow_connection_pickling', 'cpu_count',
    'current_process', 'freeze_support', 'get_all_start_methods',
    'get_context', 'get_logger', 'get_start_method', 'log_to_stderr',
    'parent_process', 'reducer', 'set_executable', 'set_forkserver_preload',
    'set_start_method',
]

# Bound to the default context, so that set_start_method() applies to them.
globals().update((name, getattr(context._default_context, name))
                 for name in __all__)

# Logging levels of multiprocessing_c.util, as the stdlib exports them.
SUBDEBUG = 5
SUBWARNING = 25
