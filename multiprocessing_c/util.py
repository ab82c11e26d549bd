"""Helpers shared by the package: logging, finalizers that run at exit or
when an object dies, hooks run in a child after fork, a per-process
temporary directory, and small fd utilities."""
import atexit
import itertools
import os
import sys
import threading
import weakref

from . import process

__all__ = [
    'sub_debug', 'debug', 'info', 'sub_warning', 'get_logger',
    'log_to_stderr', 'get_temp_dir', 'register_after_fork',
    'is_exiting', 'Finalize', 'ForkAwareThreadLock', 'ForkAwareLocal',
    'close_all_fds_except', 'SUBDEBUG', 'SUBWARNING',
]

# ---------------------------------------------------------------- logging

NOTSET = 0
SUBDEBUG = 5
DEBUG = 10
INFO = 20
SUBWARNING = 25

LOGGER_NAME = 'multiprocessing'
DEFAULT_LOGGING_FORMAT = '[%(levelname)s/%(processName)s] %(message)s'

_logger = None
_log_to_stderr = False


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
    logger = get_logger()
    formatter = logging.Formatter(DEFAULT_LOGGING_FORMAT)
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    if level:
        logger.setLevel(level)
    _log_to_stderr = True
    return _logger


# ------------------------------------------------ abstract socket namespace

def _platform_supports_abstract_sockets():
    return sys.platform in ("linux", "android")


def is_abstract_socket_namespace(address):
    """Whether `address` names a Linux abstract AF_UNIX socket."""
    if not address:
        return False
    if isinstance(address, bytes):
        return address[0] == 0
    if isinstance(address, str):
        return address[0] == "\0"
    raise TypeError(f'address type of {address!r} unrecognized')


abstract_sockets_supported = _platform_supports_abstract_sockets()

# ------------------------------------------------------------ temp dir


def _remove_temp_dir(rmtree, tempdir):
    rmtree(tempdir)
    current = process.current_process()
    if current is not None and current._config.get('tempdir') == tempdir:
        current._config['tempdir'] = None


def get_temp_dir():
    """Return a private directory for this process tree's sockets and
    files, created on first use and removed at exit."""
    tempdir = process.current_process()._config.get('tempdir')
    if tempdir is None:
        import shutil
        import tempfile
        tempdir = tempfile.mkdtemp(prefix='pymp-')
        info('created temp directory %s', tempdir)
        # Late in the exit order, so that sockets inside are closed first.
        Finalize(None, _remove_temp_dir, args=(shutil.rmtree, tempdir),
                 exitpriority=-100)
        process.current_process()._config['tempdir'] = tempdir
    return tempdir

# ----------------------------------------------------- after-fork hooks

_afterfork_registry = weakref.WeakValueDictionary()
_afterfork_counter = itertools.count()


def _run_after_forkers():
    # In registration order; a failing hook is reported, not fatal.
    for (_, ident, func), obj in sorted(_afterfork_registry.items(),
                                        key=lambda kv: kv[0][0]):
        try:
            func(obj)
        except Exception as e:
            info('after forker raised exception %s', e)


def register_after_fork(obj, func):
    """Call func(obj) in every child created by fork while obj is alive."""
    key = (next(_afterfork_counter), id(obj), func)
    _afterfork_registry[key] = obj

# ------------------------------------------------------------ finalizers

_finalizer_registry = {}
_finalizer_counter = itertools.count()


class Finalize:
    """Run callback(*args, **kwargs) once: when `obj` is collected, when
    called, or at exit if `exitpriority` is not None (higher priorities
    first; among equals, the most recently created first)."""

    def __init__(self, obj, callback, args=(), kwargs=None, exitpriority=None):
        if exitpriority is not None and not isinstance(exitpriority, int):
            raise TypeError(
                "Exitpriority ({0!r}) must be None or int, not {1!s}".format(
                    exitpriority, type(exitpriority)))
        if obj is None and exitpriority is None:
            raise TypeError("Without object, exitpriority cannot be None")
        if obj is not None:
            self._weakref = weakref.ref(obj, self)
        else:
            self._weakref = None
        self._callback = callback
        self._args = args
        self._kwargs = kwargs or {}
        self._key = (exitpriority, next(_finalizer_counter))
        self._pid = os.getpid()
        _finalizer_registry[self._key] = self

    def __call__(self, wr=None,
                 # Bound now: module globals may be gone at interpreter exit.
                 _registry=_finalizer_registry, _sub_debug=sub_debug,
                 _getpid=os.getpid):
        """Run the callback if it has not run yet; return its result."""
        try:
            del _registry[self._key]
        except KeyError:
            _sub_debug('finalizer no longer registered')
            return None
        if self._pid != _getpid():
            # Inherited through fork: the resource is the parent's.
            _sub_debug('finalizer ignored because different process')
            res = None
        else:
            _sub_debug('finalizer calling %s with args %s and kwargs %s',
                       self._callback, self._args, self._kwargs)
            res = self._callback(*self._args, **self._kwargs)
        self._weakref = self._callback = self._args = \
            self._kwargs = self._key = None
        return res

    def cancel(self):
        """Forget the finalizer without running it."""
        try:
            del _finalizer_registry[self._key]
        except KeyError:
            pass
        else:
            self._weakref = self._callback = self._args = \
                self._kwargs = self._key = None

    def still_active(self):
        """Whether the callback is still to run."""
        return self._key in _finalizer_registry

    def __repr__(self):
        try:
            obj = self._weakref()
        except (AttributeError, TypeError):
            obj = None
        if obj is None:
            return '<%s object, dead>' % type(self).__name__
        x = '<%s object, callback=%s' % (
            type(self).__name__,
            getattr(self._callback, '__name__', self._callback))
        if self._args:
            x += ', args=' + str(self._args)
        if self._kwargs:
            x += ', kwargs=' + str(self._kwargs)
        if self._key[0] is not None:
            x += ', exitpriority=' + str(self._key[0])
        return x + '>'


def _run_finalizers(minpriority=None):
    """Run the finalizers whose exit priority is at least `minpriority`
    (all with a priority if None), highest priority first."""
    if _finalizer_registry is None:
        return
    if minpriority is None:
        def wanted(key):
            return key[0] is not None
    else:
        def wanted(key):
            return key[0] is not None and key[0] >= minpriority
    # Snapshot the keys: callbacks may create or cancel finalizers, and the
    # garbage collector may run one from another thread meanwhile.
    keys = [k for k in list(_finalizer_registry) if wanted(k)]
    keys.sort(reverse=True)
    for key in keys:
        finalizer = _finalizer_registry.get(key)
        if finalizer is None:
            continue
        sub_debug('calling %s', finalizer)
        try:
            finalizer()
        except Exception:
            import traceback
            traceback.print_exc()
    if minpriority is None:
        _finalizer_registry.clear()

# ------------------------------------------------------------ exit handling


def is_exiting():
    """Whether the process is running its exit handlers."""
    return _exiting


_exiting = False


def _exit_function(info=info, debug=debug, _run_finalizers=_run_finalizers,
                   active_children=process.active_children,
                   current_process=process.current_process):
    # Registered with atexit and called at the end of every child: run the
    # high-priority finalizers, stop daemonic children, join the others,
    # then run the rest of the finalizers.
    global _exiting
    if _exiting:
        return
    _exiting = True
    info('process shutting down')
    debug('running all "atexit" finalizers with priority >= 0')
    _run_finalizers(0)
    # current_process is None only if this module was torn down already.
    children = active_children() if current_process() is not None else []
    # Daemonic children die with us; the others are waited for.
    for child in children:
        if child.daemon:
            info('calling terminate() for daemon %s', child.name)
            child._popen.terminate()
    for child in children:
        info('calling join() for process %s', child.name)
        child.join()
    debug('running the remaining "atexit" finalizers')
    _run_finalizers()


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

    def __enter__(self):
        return self._lock.acquire()

    def __exit__(self, *exc_info):
        self._lock.release()


class ForkAwareLocal(threading.local):
    """A threading.local whose attributes a forked child does not inherit."""

    def __init__(self):
        _renewed_in_child.add(self)

    def _renew(self):
        vars(self).clear()

    def __reduce__(self):
        return type(self), ()

# ------------------------------------------------------------ fd helpers


try:
    MAXFD = os.sysconf("SC_OPEN_MAX")
except Exception:
    MAXFD = 256


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
    if sys.stdin is None:
        return
    try:
        sys.stdin.close()
    except (OSError, ValueError):
        pass
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
        if fd != 0:
            os.dup2(fd, 0)
            os.close(fd)
        sys.stdin = open(0, encoding="utf-8", closefd=False)
    except (OSError, ValueError):
        pass


def _flush_std_streams():
    # Flush before fork and at child exit so no output is lost or doubled.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError):
            pass


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
