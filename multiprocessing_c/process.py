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

__all__ = ['BaseProcess', 'current_process', 'active_children',
           'parent_process']

try:
    ORIGINAL_DIR = os.path.abspath(os.getcwd())
except OSError:
    ORIGINAL_DIR = None


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
    # Poll every child so that finished ones are reaped and forgotten.
    for child in list(_children):
        popen = child._popen
        if popen is not None and popen.poll() is not None:
            _children.discard(child)


class AuthenticationString(bytes):
    """Bytes that refuse to be pickled except while spawning a child, so an
    authkey cannot leak into an ordinary message by accident."""

    def __reduce__(self):
        from .context import get_spawning_popen
        if get_spawning_popen() is None:
            raise TypeError('Pickling an AuthenticationString object is '
                            'disallowed for security reasons')
        return AuthenticationString, (bytes(self),)


class BaseProcess:
    """A process-shaped object; concrete classes supply `_Popen`."""

    def _Popen(self, process_obj):
        raise NotImplementedError

    def _check_closed(self):
        if self._closed:
            raise ValueError("process object is closed")

    def __init__(self, group=None, target=None, name=None, args=(),
                 kwargs={}, *, daemon=None):
        if group is not None:
            raise AssertionError('group argument must be None for now')
        me = _current_process
        self._identity = me._identity + (next(_process_counter),)
        self._config = dict(me._config)
        self._parent_pid = os.getpid()
        self._parent_name = me.name
        self._popen = None
        self._closed = False
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs)
        if name is None:
            name = '%s-%s' % (type(self).__name__,
                              ':'.join(str(i) for i in self._identity))
        self._name = name
        if daemon is not None:
            self.daemon = daemon
        _dangling.add(self)

    def run(self):
        """The code the child runs; by default calls target(*args, **kwargs)."""
        if self._target:
            self._target(*self._args, **self._kwargs)

    def start(self):
        """Start the child process."""
        self._check_closed()
        if self._popen is not None:
            raise AssertionError('cannot start a process twice')
        if self._parent_pid != os.getpid():
            raise AssertionError(
                'can only start a process object created by current process')
        if _current_process._config.get('daemon'):
            raise AssertionError(
                'daemonic processes are not allowed to have children')
        _cleanup()
        self._popen = self._Popen(self)
        self._sentinel = self._popen.sentinel
        # The child has its own copy now; drop ours so the target and its
        # arguments can be collected while the child runs.
        del self._target, self._args, self._kwargs
        _children.add(self)

    def _check_started_here(self, what):
        if self._parent_pid != os.getpid():
            raise AssertionError('can only %s a child process' % what)

    def terminate(self):
        """Send SIGTERM to the child."""
        self._check_closed()
        if self._popen is not None:
            self._popen.terminate()

    def kill(self):
        """Send SIGKILL to the child."""
        self._check_closed()
        if self._popen is not None:
            self._popen.kill()

    def join(self, timeout=None):
        """Wait until the child ends, or until `timeout` seconds passed."""
        self._check_closed()
        self._check_started_here('join')
        if self._popen is None:
            raise AssertionError('can only join a started process')
        if self._popen.wait(timeout) is not None:
            _children.discard(self)

    def is_alive(self):
        """Whether the process has started and not yet ended."""
        self._check_closed()
        if self is _current_process:
            return True
        self._check_started_here('test')
        if self._popen is None:
            return False
        if self._popen.poll() is None:
            return True
        _children.discard(self)
        return False

    def close(self):
        """Release the resources of an ended process object."""
        popen = self._popen
        if popen is not None:
            if popen.poll() is None:
                raise ValueError("Cannot close a process while it is still "
                                 "running. You should first call join() or "
                                 "terminate().")
            popen.close()
            self._popen = None
            del self._sentinel
            _children.discard(self)
        self._closed = True

    @property
    def name(self):
        return self._name

    @name.setter
    def name(self, name):
        if not isinstance(name, str):
            raise AssertionError('name must be a string')
        self._name = name

    @property
    def daemon(self):
        """Whether the child is terminated when its parent exits."""
        return self._config.get('daemon', False)

    @daemon.setter
    def daemon(self, daemonic):
        if self._popen is not None:
            raise AssertionError('process has already started')
        self._config['daemon'] = daemonic

    @property
    def authkey(self):
        return self._config['authkey']

    @authkey.setter
    def authkey(self, authkey):
        self._config['authkey'] = AuthenticationString(authkey)

    @property
    def exitcode(self):
        """The exit code: None while running, -N if killed by signal N."""
        self._check_closed()
        if self._popen is None:
            return None
        return self._popen.poll()

    @property
    def ident(self):
        """The process id (None before start)."""
        self._check_closed()
        if self is _current_process:
            return os.getpid()
        return self._popen and self._popen.pid

    pid = ident

    @property
    def sentinel(self):
        """A file descriptor that becomes ready when the process ends."""
        self._check_closed()
        try:
            return self._sentinel
        except AttributeError:
            raise ValueError("process not started") from None

    def __repr__(self):
        code = None
        if self is _current_process:
            state = 'started'
        elif self._closed:
            state = 'closed'
        elif self._parent_pid != os.getpid():
            state = 'unknown'
        elif self._popen is None:
            state = 'initial'
        else:
            code = self._popen.poll()
            state = 'started' if code is None else 'stopped'
        parts = [type(self).__name__, 'name=%r' % self._name]
        if self._popen is not None:
            parts.append('pid=%s' % self._popen.pid)
        parts.append('parent=%s' % self._parent_pid)
        parts.append(state)
        if code is not None:
            parts.append('exitcode=%s' % _exitcode_to_name.get(code, code))
        if self.daemon:
            parts.append('daemon')
        return '<%s>' % ' '.join(parts)

    def _bootstrap(self, parent_sentinel=None):
        """Run in the new child: become the current process, run, and
        return the exit code (the Popen exits with it)."""
        global _current_process, _parent_process, _process_counter, _children
        from . import util
        try:
            if self._start_method is not None:
                from . import context
                context._force_start_method(self._start_method)
            _process_counter = itertools.count(1)
            _children = set()
            util._close_stdin()
            old_process = _current_process
            _current_process = self
            _parent_process = _ParentProcess(
                self._parent_name, self._parent_pid, parent_sentinel)
            if threading._HAVE_THREAD_NATIVE_ID:
                threading.main_thread()._set_native_id()
            try:
                self._after_fork()
            finally:
                # Break the reference cycle through the old main Process.
                del old_process
            util.info('child process calling self.run()')
            try:
                self.run()
                exitcode = 0
            finally:
                if not util._EXIT_THROUGH_ATEXIT:
                    util._exit_function()
        except SystemExit as e:
            exitcode = _exit_status_from(e.code)
        except BaseException:
            exitcode = 1
            import traceback
            sys.stderr.write('Process %s:\n' % self.name)
            traceback.print_exc()
        finally:
            threading._shutdown()
            util.info('process exiting with exitcode %d' % exitcode)
            util._flush_std_streams()
        return exitcode

    @staticmethod
    def _after_fork():
        from . import util
        util._finalizer_registry.clear()
        util._run_after_forkers()

    # Set by the context's Process class; the child forces it on start-up.
    _start_method = None


def _sentinel_ready(fd, timeout):
    """Wait up to `timeout` seconds (None: forever) for `fd` to become
    readable or hung up; return whether it did."""
    import select
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if timeout is None:
        ms = None
    else:
        ms = max(0, int(timeout * 1000 + 0.999))
    return bool(poller.poll(ms))


def _exit_status_from(code):
    # sys.exit() semantics: None is success, an int is the status, anything
    # else is printed and means failure.
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(str(code) + '\n')
    return 1


class _ParentProcess(BaseProcess):
    """The parent as seen from a child: its name and pid, and liveness read
    from a sentinel that becomes ready when the parent goes away."""

    def __init__(self, name, pid, sentinel):
        self._identity = ()
        self._name = name
        self._pid = pid
        self._parent_pid = None
        self._popen = None
        self._closed = False
        self._sentinel = sentinel
        self._config = {}

    def is_alive(self):
        return not _sentinel_ready(self._sentinel, 0)

    @property
    def ident(self):
        return self._pid

    pid = ident

    def join(self, timeout=None):
        """Wait until the parent process ends."""
        _sentinel_ready(self._sentinel, timeout)


class _MainProcess(BaseProcess):
    """The process the program started in."""

    def __init__(self):
        self._identity = ()
        self._name = 'MainProcess'
        self._parent_pid = None
        self._popen = None
        self._closed = False
        self._config = {'authkey': AuthenticationString(os.urandom(32)),
                        'semprefix': '/mp'}

    def close(self):
        pass


_parent_process = None
_current_process = _MainProcess()
_process_counter = itertools.count(1)
_children = set()
_dangling = WeakSet()

# repr() shows a signal death as its name: exitcode=-SIGTERM.
_exitcode_to_name = {-sig.value: '-' + sig.name for sig in signal.Signals}
