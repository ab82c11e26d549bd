"""Process objects: the documented `Process` API and the per-process
bookkeeping (current process, parent process, live children).

The start-method-specific work (fork, exec, the fork server) lives in the
``popen_*`` modules; a context chooses one through ``_Popen``.
"""
import itertools
import os
import signal
import sys
import threading
from weakref import WeakSet

__all__ = ['active_children', 'current_process', 'parent_process',
           'BaseProcess']


def _startup_directory():
    # Spawned children chdir back here; the directory may already be gone.
    try:
        return os.path.abspath(os.getcwd())
    except OSError:
        return None


ORIGINAL_DIR = _startup_directory()


def current_process():
    """Return the Process object of the running process."""
    return _current_process


def parent_process():
    """Return the Process object of the parent, or None in the main process."""
    return _parent_process


def active_children():
    """Return the children of this process that are still alive.

    Calling it reaps children that have ended, as the docs promise."""
    _cleanup()
    return list(_children)


def _cleanup():
    # poll() reaps; forget every child that has an exit code by now.
    # A snapshot: other threads start and reap children meanwhile.
    ended = {child for child in tuple(_children)
             if child._popen is not None and child._popen.poll() is not None}
    _children.difference_update(ended)


class AuthenticationString(bytes):
    """Bytes that refuse to be pickled except while spawning a child, so an
    authkey cannot leak into an ordinary message by accident."""

    def __reduce__(self):
        from .context import get_spawning_popen
        if get_spawning_popen() is not None:
            return AuthenticationString, (bytes(self),)
        raise TypeError('Pickling an AuthenticationString object is '
                        'disallowed for security reasons')


_UNSET = object()

# __repr__'s state words that need no poll, tried in this order.
_SETTLED_STATES = (
    ('started', lambda proc: proc is _current_process),
    ('closed', lambda proc: proc._closed),
    ('unknown', lambda proc: proc._parent_pid != os.getpid()),
    ('initial', lambda proc: proc._popen is None),
)


class BaseProcess:
    """A process-shaped object; concrete classes supply `_Popen`."""

    # Set by the context's Process class; the child forces it on start-up.
    _start_method = None

    def _Popen(self, process_obj):
        raise NotImplementedError

    def __init__(self, group=None, target=None, name=None, args=(),
                 kwargs={}, *, daemon=None):
        if group is not None:
            raise AssertionError('group argument must be None for now')
        creator = _current_process
        self._popen = None
        self._closed = False
        self._parent_pid = os.getpid()
        self._parent_name = creator.name
        self._config = dict(creator._config)
        self._identity = (*creator._identity, next(_process_counter))
        self._target, self._args, self._kwargs = target, tuple(args), dict(kwargs)
        # An empty name gets the default too, as in the stdlib.
        self._name = name or (type(self).__name__ + '-'
                              + ':'.join(map(str, self._identity)))
        _dangling.add(self)
        if daemon is not None:
            self.daemon = daemon

    # -- guards ---------------------------------------------------------

    def _check_started_here(self, what):
        if self._parent_pid != os.getpid():
            raise AssertionError('can only %s a child process' % what)

    def _check_closed(self):
        if self._closed:
            raise ValueError("process object is closed")

    def _note_exit(self, code):
        # Every path that learns the exit code drops the child from the set.
        if code is not None:
            _children.discard(self)
        return code

    # -- the documented methods -----------------------------------------

    def run(self):
        """The code the child runs; by default calls target(*args, **kwargs)."""
        if self._target:
            self._target(*self._args, **self._kwargs)

    def start(self):
        """Start the child process."""
        self._check_closed()
        refusals = (
            (self._popen is not None, 'cannot start a process twice'),
            (self._parent_pid != os.getpid(),
             'can only start a process object created by current process'),
            (_current_process._config.get('daemon'),
             'daemonic processes are not allowed to have children'),
        )
        for refused, why in refusals:
            if refused:
                raise AssertionError(why)
        _cleanup()
        self._popen = self._Popen(self)
        self._sentinel = self._popen.sentinel
        # The child has its own copy now; drop ours so the target and its
        # arguments can be collected while the child runs.
        for attr in ('_target', '_args', '_kwargs'):
            delattr(self, attr)
        _children.add(self)

    def _signal_child(self, how):
        self._check_closed()
        if self._popen is not None:
            getattr(self._popen, how)()

    def terminate(self):
        """Send SIGTERM to the child."""
        self._signal_child('terminate')

    def kill(self):
        """Send SIGKILL to the child."""
        self._signal_child('kill')

    def join(self, timeout=None):
        """Wait until the child ends, or until `timeout` seconds passed."""
        self._check_closed()
        self._check_started_here('join')
        if self._popen is None:
            raise AssertionError('can only join a started process')
        self._note_exit(self._popen.wait(timeout))

    def is_alive(self):
        """Whether the process has started and not yet ended."""
        self._check_closed()
        if self is _current_process:
            return True
        self._check_started_here('test')
        popen = self._popen
        return popen is not None and self._note_exit(popen.poll()) is None

    def close(self):
        """Release the resources of an ended process object."""
        popen = self._popen
        if popen is not None and popen.poll() is None:
            raise ValueError("Cannot close a process while it is still "
                             "running. You should first call join() or "
                             "terminate().")
        if popen is not None:
            _children.discard(self)
            popen.close()
            self.__dict__.pop('_sentinel', None)
        self._popen = None
        self._closed = True

    # -- attributes -----------------------------------------------------

    def _set_name(self, name):
        if not isinstance(name, str):
            raise AssertionError('name must be a string')
        self._name = name

    def _set_daemon(self, daemonic):
        if self._popen is not None:
            raise AssertionError('process has already started')
        self._config['daemon'] = daemonic

    def _set_authkey(self, authkey):
        self._config['authkey'] = AuthenticationString(authkey)

    # daemon and authkey live in _config because children inherit it.
    name = property(lambda self: self._name, _set_name)
    daemon = property(lambda self: self._config.get('daemon', False),
                      _set_daemon,
                      doc='Whether the child is terminated when its parent exits.')
    authkey = property(lambda self: self._config['authkey'], _set_authkey)

    @property
    def exitcode(self):
        """The exit code: None while running, -N if killed by signal N."""
        self._check_closed()
        return None if self._popen is None else self._popen.poll()

    @property
    def ident(self):
        """The process id (None before start)."""
        self._check_closed()
        if self is _current_process:
            return os.getpid()
        return None if self._popen is None else self._popen.pid

    pid = ident

    @property
    def sentinel(self):
        """A file descriptor that becomes ready when the process ends."""
        self._check_closed()
        fd = getattr(self, '_sentinel', _UNSET)
        if fd is _UNSET:
            raise ValueError("process not started")
        return fd

    def __repr__(self):
        exitcode = None
        for state, applies in _SETTLED_STATES:
            if applies(self):
                break
        else:
            exitcode = self._popen.poll()
            state = 'started' if exitcode is None else 'stopped'
        popen = self._popen
        words = (
            type(self).__name__,
            'name=%r' % self._name,
            popen is not None and 'pid=%s' % popen.pid,
            'parent=%s' % self._parent_pid,
            state,
            exitcode is not None
            and 'exitcode=%s' % _exitcode_to_name.get(exitcode, exitcode),
            self.daemon and 'daemon',
        )
        return '<%s>' % ' '.join(word for word in words if word)

    # -- the child's side -----------------------------------------------

    def _bootstrap(self, parent_sentinel=None):
        """Run in the new child: become the current process, run, and
        return the exit code (the Popen exits with it)."""
        try:
            exitcode = self._child_main(parent_sentinel)
        except SystemExit as exc:
            exitcode = _exit_status_from(exc.code)
        except BaseException:
            exitcode = _report_crash(self.name)
        finally:
            _wind_down(exitcode)
        return exitcode

    def _child_main(self, parent_sentinel):
        from . import util
        if self._start_method is not None:
            from . import context
            context._force_start_method(self._start_method)
        _become_current(self, parent_sentinel)
        util.info('child process calling self.run()')
        try:
            self.run()
        finally:
            # From 3.13 the child's atexit run calls it (util).
            if not util._EXIT_THROUGH_ATEXIT:
                util._exit_function()
        return 0

    @staticmethod
    def _after_fork():
        # Finalizers belong to the parent; after-fork hooks re-arm our own.
        from .util import _finalizer_registry, _run_after_forkers
        _finalizer_registry.clear()
        _run_after_forkers()


def _become_current(proc, parent_sentinel):
    """Make `proc` this (child) process's current process, with fresh
    numbering and no children, then run the after-fork hooks."""
    global _current_process, _parent_process, _process_counter
    from . import util
    _process_counter = itertools.count(1)
    _children.clear()
    util._close_stdin()
    if threading._HAVE_THREAD_NATIVE_ID:
        threading.main_thread()._set_native_id()
    _parent_process = _ParentProcess(
        proc._parent_name, proc._parent_pid, parent_sentinel)
    # Held until the hooks ran, so the old main object is finalized after
    # them and not in the middle of the switch.
    inherited, _current_process = _current_process, proc
    proc._after_fork()
    del inherited


def _exit_status_from(code):
    # sys.exit() semantics: None is success, an int is the status, anything
    # else is printed and means failure.
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(str(code) + '\n')
    return 1


def _wind_down(exitcode):
    # Non-daemon threads first: they may still log or write output.
    from . import util
    threading._shutdown()
    util.info('process exiting with exitcode %d' % exitcode)
    util._flush_std_streams()


def _report_crash(name):
    import traceback
    sys.stderr.write('Process %s:\n' % name)
    traceback.print_exc()
    return 1


def _sentinel_ready(fd, timeout):
    """Wait up to `timeout` seconds (None: forever) for `fd` to become
    readable or hung up; return whether it did."""
    import select
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    return bool(poller.poll(ms))


def _init_root(proc, name, config, **extra):
    # The processes nobody started here: no identity numbers, no popen.
    proc.__dict__.update(_identity=(), _name=name, _parent_pid=None,
                         _popen=None, _closed=False, _config=config, **extra)


class _ParentProcess(BaseProcess):
    """The parent as seen from a child: its name and pid, and liveness read
    from a sentinel that becomes ready when the parent goes away."""

    def __init__(self, name, pid, sentinel):
        _init_root(self, name, {}, _pid=pid, _sentinel=sentinel)

    def is_alive(self):
        return not _sentinel_ready(self._sentinel, 0)

    def join(self, timeout=None):
        """Wait until the parent process ends."""
        _sentinel_ready(self._sentinel, timeout)

    ident = pid = property(lambda self: self._pid)


class _MainProcess(BaseProcess):
    """The process the program started in."""

    def __init__(self):
        _init_root(self, 'MainProcess',
                   {'authkey': AuthenticationString(os.urandom(32)),
                    'semprefix': '/mp'})

    def close(self):
        """A no-op: the program's own process object stays usable."""


# Per-process state; _become_current resets it in a new child.
_children = set()
_dangling = WeakSet()     # every Process ever made, for leak checks in tests
_process_counter = itertools.count(1)
_current_process = _MainProcess()
_parent_process = None

# repr() shows a signal death as its name: exitcode=-SIGTERM.
_exitcode_to_name = {-sig.value: '-' + sig.name for sig in signal.Signals}
