"""Helpers shared by the package: logging, finalizers that run at exit or
when an object dies, hooks run in a child after fork, a per-process
temporary directory, and small fd utilities."""
import atexit
import contextlib
import itertools
import os
import sys
import threading
import weakref

from . import process

__all__ = [
    'Finalize', 'ForkAwareLocal', 'ForkAwareThreadLock', 'SUBDEBUG',
    'SUBWARNING', 'close_all_fds_except', 'debug', 'get_logger',
    'get_temp_dir', 'info', 'is_exiting', 'log_to_stderr',
    'register_after_fork', 'sub_debug', 'sub_warning',
]

# ---------------------------------------------------------------- logging

# logging's numbers, plus two levels of the package's own around them.
NOTSET, SUBDEBUG, DEBUG, INFO, SUBWARNING = 0, 5, 10, 20, 25

_logger = None
_log_to_stderr = False

LOGGER_NAME = 'multiprocessing'
DEFAULT_LOGGING_FORMAT = '[%(levelname)s/%(processName)s] %(message)s'


def _log(level, msg, args):
    # Logging stays free until someone asks for the logger.
    if _logger:
        _logger.log(level, msg, *args, stacklevel=3)


def sub_debug(msg, *args):
    _log(SUBDEBUG, msg, args)


def debug(msg, *args):
    _log(DEBUG, msg, args)


def info(msg, *args):
    _log(INFO, msg, args)


def sub_warning(msg, *args):
    _log(SUBWARNING, msg, args)


def get_logger():
    """Return the package's logger ('multiprocessing'), creating it with the
    SUBDEBUG and SUBWARNING level names on first use."""
    global _logger
    import logging
    with logging._lock if hasattr(logging, '_lock') else _nolock():
        if not _logger:
            _logger = logging.getLogger(LOGGER_NAME)
            _logger.propagate = False
            # logging names the process from the stdlib module, which may
            # not be the one in use: name it from ours.
            _logger.addFilter(_ProcessNameFilter())
            logging.addLevelName(SUBDEBUG, 'SUBDEBUG')
            logging.addLevelName(SUBWARNING, 'SUBWARNING')
            # Flush the handlers at exit, before our own finalizers log.
            atexit.unregister(_exit_function)
            atexit.register(_exit_function)
    return _logger


class _ProcessNameFilter:
    def filter(self, record):
        record.processName = process.current_process().name
        return True


class _nolock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def log_to_stderr(level=None):
    """Send the package's log records to stderr, optionally at `level`."""
    global _log_to_stderr
    import logging
    to_stderr = logging.StreamHandler()
    to_stderr.setFormatter(logging.Formatter(DEFAULT_LOGGING_FORMAT))
    logger = get_logger()
    logger.addHandler(to_stderr)
    _log_to_stderr = True
    if level:
        logger.setLevel(level)
    return logger


# ------------------------------------------------ abstract socket namespace

def _platform_supports_abstract_sockets():
    return sys.platform in ("linux", "android")


abstract_sockets_supported = _platform_supports_abstract_sockets()

# An abstract AF_UNIX name starts with a NUL, whichever type spells it.
_ABSTRACT_PREFIX = ((bytes, 0), (str, "\0"))


def is_abstract_socket_namespace(address):
    """Whether `address` names a Linux abstract AF_UNIX socket."""
    if not address:
        return False
    for kind, nul in _ABSTRACT_PREFIX:
        if isinstance(address, kind):
            return address[0] == nul
    raise TypeError(f'address type of {address!r} unrecognized')


# ------------------------------------------------------------ temp dir

def get_temp_dir():
    """Return a private directory for this process tree's sockets and
    files, created on first use and removed at exit."""
    config = process.current_process()._config
    if config.get('tempdir') is None:
        config['tempdir'] = _make_temp_dir()
    return config['tempdir']


def _make_temp_dir():
    import shutil
    import tempfile
    path = tempfile.mkdtemp(prefix='pymp-')
    # Late in the exit order, so that sockets inside are closed first;
    # rmtree is bound now because shutil may be torn down by then.
    Finalize(None, _remove_temp_dir, args=(shutil.rmtree, path),
             exitpriority=-100)
    info('created temp directory %s', path)
    return path


def _remove_temp_dir(rmtree, tempdir):
    rmtree(tempdir)
    current = process.current_process()
    if current is not None and current._config.get('tempdir') == tempdir:
        current._config['tempdir'] = None

# ----------------------------------------------------- after-fork hooks

# (sequence number, id(obj), func) -> obj; the number keeps the order.
_afterfork_registry = weakref.WeakValueDictionary()
_afterfork_counter = itertools.count()


def register_after_fork(obj, func):
    """Call func(obj) in every child created by fork while obj is alive."""
    _afterfork_registry[next(_afterfork_counter), id(obj), func] = obj


def _run_after_forkers():
    # In registration order; a failing hook is reported, not fatal.
    hooks = sorted(_afterfork_registry.items(), key=lambda item: item[0][0])
    for key, obj in hooks:
        func = key[2]
        try:
            func(obj)
        except Exception as exc:
            info('after forker raised exception %s', exc)

# ------------------------------------------------------------ finalizers

# (exitpriority, sequence number) -> Finalize, for the ones still to run.
_finalizer_registry = {}
_finalizer_counter = itertools.count()


class Finalize:
    """Run callback(*args, **kwargs) once: when `obj` is collected, when
    called, or at exit if `exitpriority` is not None (higher priorities
    first; among equals, the most recently created first)."""

    def __init__(self, obj, callback, args=(), kwargs=None, exitpriority=None):
        if not (exitpriority is None or isinstance(exitpriority, int)):
            raise TypeError(
                "Exitpriority ({0!r}) must be None or int, not {1!s}".format(
                    exitpriority, type(exitpriority)))
        if obj is None and exitpriority is None:
            raise ValueError("Without object, exitpriority cannot be None")
        self._weakref = None if obj is None else weakref.ref(obj, self)
        self._callback, self._args = callback, args
        self._kwargs = kwargs or {}
        self._pid = os.getpid()
        self._key = key = (exitpriority, next(_finalizer_counter))
        _finalizer_registry[key] = self

    def _forget(self):
        # Drop the references so that nothing is kept alive after the run.
        self._weakref = self._callback = self._args = None
        self._kwargs = self._key = None

    def __call__(self, wr=None,
                 # Bound now: module globals may be gone at interpreter exit.
                 _registry=_finalizer_registry, _sub_debug=sub_debug,
                 _getpid=os.getpid):
        """Run the callback if it has not run yet; return its result."""
        if _registry.pop(self._key, None) is None:
            _sub_debug('finalizer no longer registered')
            return None
        result = None
        if self._pid == _getpid():
            _sub_debug('finalizer calling %s with args %s and kwargs %s',
                       self._callback, self._args, self._kwargs)
            result = self._callback(*self._args, **self._kwargs)
        else:
            # Inherited through fork: the resource is the parent's.
            _sub_debug('finalizer ignored because different process')
        self._forget()
        return result

    def cancel(self):
        """Forget the finalizer without running it."""
        if _finalizer_registry.pop(self._key, None) is not None:
            self._forget()

    def still_active(self):
        """Whether the callback is still to run."""
        return self._key in _finalizer_registry

    def __repr__(self):
        ref = self._weakref
        if ref is None or ref() is None:
            return '<%s object, dead>' % type(self).__name__
        priority = self._key[0]
        shown = [('callback', getattr(self._callback, '__name__',
                                      self._callback), True),
                 ('args', self._args, self._args),
                 ('kwargs', self._kwargs, self._kwargs),
                 ('exitpriority', priority, priority is not None)]
        return '<%s object, %s>' % (type(self).__name__, ', '.join(
            '%s=%s' % (label, value) for label, value, show in shown if show))


def _run_finalizers(minpriority=None):
    """Run the finalizers whose exit priority is at least `minpriority`
    (all with a priority if None), highest priority first."""
    registry = _finalizer_registry
    if registry is None:
        return      # called after the module's globals were cleared
    # Snapshot the keys: callbacks may create or cancel finalizers, and the
    # garbage collector may run one from another thread meanwhile.
    due = sorted((key for key in list(registry)
                  if key[0] is not None
                  and (minpriority is None or key[0] >= minpriority)),
                 reverse=True)
    for finalizer in map(registry.get, due):
        if finalizer is not None:
            _run_one_finalizer(finalizer)
    if minpriority is None:
        registry.clear()


def _run_one_finalizer(finalizer):
    sub_debug('calling %s', finalizer)
    try:
        finalizer()
    except Exception as exc:
        # Reported, and the remaining finalizers still run.
        _print_exception(exc)


def _print_exception(exc):
    import traceback
    traceback.print_exception(type(exc), exc, exc.__traceback__)

# ------------------------------------------------------------ exit handling


def is_exiting():
    """Whether the process is running its exit handlers."""
    return _exiting


_exiting = False


def _make_exit_function(note, detail, run_finalizers, children_of_this_process,
                        this_process):
    # What the exit function calls is bound here, because atexit may call
    # it after this module's globals were cleared.
    def _exit_function():
        # Registered with atexit and called at the end of every child.
        global _exiting
        if _exiting:
            return
        _exiting = True
        note('process shutting down')
        detail('running all "atexit" finalizers with priority >= 0')
        run_finalizers(0)
        # this_process() is None only if the process module was torn down.
        children = [] if this_process() is None else children_of_this_process()
        # Daemonic children die with us; then every child is waited for.
        for daemon in filter(lambda child: child.daemon, children):
            note('calling terminate() for daemon %s', daemon.name)
            daemon._popen.terminate()
        for child in children:
            note('calling join() for process %s', child.name)
            child.join()
        detail('running the remaining "atexit" finalizers')
        run_finalizers()
    return _exit_function


_exit_function = _make_exit_function(info, debug, _run_finalizers,
                                     process.active_children,
                                     process.current_process)


atexit.register(_exit_function)

# How many workers Pool and ProcessPoolExecutor start by default: from
# Python 3.13 the CPUs this process may run on, before that all of them.
_default_worker_count = getattr(os, 'process_cpu_count', os.cpu_count)

# From Python 3.13 a child ends through atexit whatever its start method:
# a forked one drops the handlers it inherited, registers _exit_function
# and runs what is registered once Process._bootstrap returns, so handlers
# the child registered run (before _exit_function).  Earlier versions call
# _exit_function at the end of _bootstrap and a forked child runs no
# atexit handler.
_EXIT_THROUGH_ATEXIT = sys.version_info >= (3, 13)


def _forked_child_starts():
    if _EXIT_THROUGH_ATEXIT:
        atexit._clear()
        atexit.register(_exit_function)


def _forked_child_ends():
    if _EXIT_THROUGH_ATEXIT:
        atexit._run_exitfuncs()

# ------------------------------------------------ fork-aware thread objects


# Objects renewed in a forked child.  One os.register_at_fork hook serves
# them all, so creating one never grows the after-fork registry (a child
# that starts children of its own would otherwise double it each time).
_renewed_in_child = weakref.WeakSet()


def _renew_in_child():
    for obj in list(_renewed_in_child):
        obj._renew()


os.register_at_fork(after_in_child=_renew_in_child)


class ForkAwareThreadLock:
    """A threading.Lock that a forked child gets afresh, unlocked, so that a
    lock another thread held at fork time cannot wedge the child."""

    def __init__(self):
        self._renew()
        _renewed_in_child.add(self)

    def _renew(self):
        self._lock = threading.Lock()

    def acquire(self, blocking=True, timeout=-1):
        return self._lock.acquire(blocking, timeout)

    def release(self):
        self._lock.release()

    __enter__ = acquire

    def __exit__(self, *exc_info):
        self.release()


class ForkAwareLocal(threading.local):
    """A threading.local whose attributes a forked child does not inherit."""

    def __init__(self):
        _renewed_in_child.add(self)

    def _renew(self):
        vars(self).clear()

    def __reduce__(self):
        return type(self), ()

# ------------------------------------------------------------ fd helpers


def _fd_limit():
    # The highest fd number plus one; 256 where sysconf cannot tell.
    with contextlib.suppress(Exception):
        return os.sysconf("SC_OPEN_MAX")
    return 256


MAXFD = _fd_limit()


def close_all_fds_except(fds):
    """Close every file descriptor except those in `fds`."""
    keep = sorted(set(fds) | {-1})
    keep.append(MAXFD)
    for lo, hi in zip(keep, keep[1:]):
        if lo + 1 < hi:
            os.closerange(lo + 1, hi)


def close_fds(*fds):
    """Close the given file descriptors."""
    for fd in fds:
        os.close(fd)


def _close_stdin():
    # A child must not compete with its parent for the terminal's input:
    # its stdin becomes /dev/null (reads see EOF), fd 0 included, so that
    # the child's own subprocesses inherit the same.
    old = sys.stdin
    if old is None:
        return
    with contextlib.suppress(OSError, ValueError):
        old.close()
    with contextlib.suppress(OSError, ValueError):
        _devnull_onto(0)
        sys.stdin = open(0, encoding="utf-8", closefd=False)


def _devnull_onto(target_fd):
    fd = os.open(os.devnull, os.O_RDONLY)
    if fd != target_fd:
        os.dup2(fd, target_fd)
        os.close(fd)


def _flush_std_streams():
    # Flush before fork and at child exit so no output is lost or doubled;
    # a stream may be None or already closed.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.flush()


def spawnv_passfds(path, args, passfds):
    """Start `path` with `args`, keeping only `passfds` open; return the pid."""
    from ._mpcore import spawnv_passfds as _spawn
    return _spawn(path, args, sorted(set(passfds)))


def _args_from_interpreter_flags():
    import subprocess
    return subprocess._args_from_interpreter_flags()


def _cleanup_tests():
    """Tidy up the package's global state after a test suite ran."""
    from . import process as _p
    _p._cleanup()
    _run_finalizers()
    for name in ('forkserver', 'resource_tracker'):
        mod = sys.modules.get(__package__ + '.' + name)
        if mod is None:
            continue
        stop = getattr(getattr(mod, '_' + name, None), '_stop', None)
        if stop is not None:
            stop()
