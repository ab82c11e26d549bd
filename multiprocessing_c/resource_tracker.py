"""The resource tracker: one process per program that remembers the named
semaphores and shared memory segments the program's processes created,
and unlinks whatever is still registered when the program is over.

Every process of the program (forked children inherit it, spawned children
are handed it) writes one-line messages to the tracker's pipe:

    REGISTER:<rtype>:<pid>:<name>      a process made the resource
    UNREGISTER:<rtype>:<pid>:<name>    a process unlinked it / stops tracking
    PROBE:noop:<pid>:                  is the tracker still there?

Each line is at most PIPE_BUF bytes, so writes from many processes never
interleave.  The tracker counts registrations per process.  When the last
write end closes (every process of the program is gone, however it ended),
each resource still registered is unlinked with a warning naming it and
the processes that leaked it -- unless a process that registered it is
still alive (one that closed its copy of the pipe but runs on), in which
case the resource is left alone.
"""

import contextlib
import os
import signal
import sys
import threading
import time
import warnings

from . import _mpcore

__all__ = ['ensure_running', 'register', 'unregister']

_HAVE_SIGMASK = hasattr(signal, 'pthread_sigmask')
_IGNORED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Messages must fit one atomic pipe write.
_MAX_MSG = 512


def _sem_unlink(name):
    unlink = getattr(_mpcore, 'sem_unlink', None)
    if unlink is not None:
        return unlink(name)
    # glibc keeps named semaphores as /dev/shm/sem.<name without '/'>.
    os.unlink('/dev/shm/sem.' + name.lstrip('/'))


def _sem_exists(name):
    return os.path.exists('/dev/shm/sem.' + name.lstrip('/'))


def _shm_exists(name):
    return os.path.exists('/dev/shm/' + name.lstrip('/'))


def cleanup_noop(name):
    # 'noop' only carries PROBE messages; nothing of that type is registered.
    raise RuntimeError('a noop resource cannot be registered: %r' % (name,))


_CLEANUP_FUNCS = {
    'noop': cleanup_noop,
    'semaphore': _sem_unlink,
    'shared_memory': _mpcore.shm_unlink,
}

_EXISTS_FUNCS = {
    'noop': lambda name: False,
    'semaphore': _sem_exists,
    'shared_memory': _shm_exists,
}

if sys.version_info >= (3, 13):
    # For tests: left registered, it makes the tracker exit with 1 but is
    # neither unlinked nor warned about.  Only from 3.13, whose suite knows
    # it: earlier suites try every type of _CLEANUP_FUNCS but 'noop' for
    # real resources.
    _CLEANUP_FUNCS['dummy'] = lambda name: None
    _EXISTS_FUNCS['dummy'] = lambda name: True

# The tracker's exit status (ResourceTracker._exitcode once stopped).
_EXIT_CLEAN, _EXIT_LEFT_REGISTERED, _EXIT_CLEANUP_FAILED, _EXIT_BAD_MESSAGE = 0, 1, 2, 3


def _spawn_ignoring_signals(spawnv_passfds, exe, args, fd):
    """Start the tracker with SIGINT and SIGTERM ignored from its first
    instruction: an ignored disposition survives exec (the signal mask does
    not, spawnv_passfds clears it), so ^C in a terminal or a kill of the
    process group cannot hit the tracker before main() runs.  Only the main
    thread may change handlers; elsewhere the tracker is started plainly."""
    if threading.current_thread() is not threading.main_thread():
        return spawnv_passfds(exe, args, [fd])
    # Blocked while ignored: a signal meant for us stays pending instead of
    # being dropped, and is delivered once our handlers are back.
    if _HAVE_SIGMASK:
        signal.pthread_sigmask(signal.SIG_BLOCK, _IGNORED_SIGNALS)
    saved = {}
    try:
        for signum in _IGNORED_SIGNALS:
            saved[signum] = signal.signal(signum, signal.SIG_IGN)
        return spawnv_passfds(exe, args, [fd])
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        if _HAVE_SIGMASK:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _IGNORED_SIGNALS)


class ReentrantCallError(RuntimeError):
    """A tracker call made from inside another one on the same thread (a
    signal handler or a finalizer that ran in the middle of it)."""


def _start_tracker(read_fd):
    """Start a tracker process reading `read_fd`; return its pid."""
    from . import spawn, util
    # The package may not be on the child's path (a script run from
    # elsewhere): put the directory holding it first.
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    prog = ('import sys; sys.path.insert(0, %r); '
            'from %s.resource_tracker import main; main(%d)'
            % (package_dir, __package__, read_fd))
    exe = spawn.get_executable()
    args = [exe, *util._args_from_interpreter_flags(), '-c', prog]
    return _spawn_ignoring_signals(util.spawnv_passfds, exe, args, read_fd)


def _command(cmd, doc):
    # register() and unregister(): one message each.
    def send(self, name, rtype):
        self._send(cmd, name, rtype)
    send.__name__ = send.__qualname__ = cmd.lower()
    send.__doc__ = doc
    return send


class ResourceTracker(object):
    """This process's end of the tracker: the write end of the pipe (`_fd`)
    and, if this process started the tracker, its pid (`_pid`)."""

    def __init__(self):
        self._fd = self._pid = None
        # The tracker's exit status, known once _stop() reaped it.
        self._exitcode = None
        self._lock = threading.RLock()

    def _reentrant_call_error(self):
        # A signal handler or a finalizer run from inside a tracker call.
        raise ReentrantCallError(
            'Reentrant call into the multiprocessing resource tracker')

    def _forget_tracker(self):
        # With the lock held.  Our write end closed, a tracker we started
        # exits once no other process holds one: reap it then.
        fd, pid = self._fd, self._pid
        self._fd = self._pid = None
        os.close(fd)
        if pid is not None:
            with contextlib.suppress(ChildProcessError):
                self._exitcode = os.waitstatus_to_exitcode(
                    os.waitpid(pid, 0)[1])

    def _stop(self):
        with self._lock:
            if self._fd is not None:
                self._forget_tracker()

    def ensure_running(self):
        """Make sure the tracker process runs; start it (again) if not.

        A process forked from a program with a tracker, or spawned by one,
        shares that tracker instead of starting its own."""
        with self._lock:
            if self._fd is None:
                self._launch()
            elif not self._check_alive():
                # The tracker died: what it knew is lost.
                self._forget_tracker()
                warnings.warn('resource_tracker: process died unexpectedly, '
                              'relaunching.  Some resources might leak.')
                self._launch()

    def _launch(self):
        read_end, write_end = os.pipe()
        try:
            self._pid = _start_tracker(read_end)
            self._fd, write_end = write_end, None
            self._exitcode = None
        finally:
            # The tracker holds its own copy of the read end; the write end
            # is ours only if the tracker started.
            os.close(read_end)
            if write_end is not None:
                os.close(write_end)

    def getfd(self):
        """The write end of the tracker's pipe, for a child to inherit."""
        self.ensure_running()
        return self._fd

    def _check_alive(self):
        """Whether the tracker still reads its pipe (writing to a pipe that
        has no reader fails)."""
        try:
            return os.write(self._fd, b'PROBE:noop:0:\n') > 0
        except OSError:
            return False

    register = _command(
        'REGISTER', 'Register `name` of type `rtype` for cleanup at the end.')
    unregister = _command(
        'UNREGISTER', 'Tell the tracker `name` was unlinked (or needs no '
        'cleanup).')

    def _send(self, cmd, name, rtype):
        if rtype not in _CLEANUP_FUNCS:
            raise ValueError('unknown resource type %r' % (rtype,))
        if '\n' in name or '\0' in name:
            raise ValueError('resource name %r contains a newline or NUL'
                             % (name,))
        msg = ('%s:%s:%d:%s\n' % (cmd, rtype, os.getpid(), name)).encode(
            'utf-8', 'surrogateescape')
        if len(msg) > _MAX_MSG:
            raise ValueError('msg too long: a resource name must keep the '
                             'message under %d bytes' % _MAX_MSG)
        if self._lock._is_owned():
            self._reentrant_call_error()
        self.ensure_running()
        nbytes = os.write(self._fd, msg)
        assert nbytes == len(msg), 'short write to the resource tracker'


# The module's functions are the bound methods of this process's tracker.
_resource_tracker = ResourceTracker()
ensure_running, register, unregister, getfd = (
    _resource_tracker.ensure_running, _resource_tracker.register,
    _resource_tracker.unregister, _resource_tracker.getfd)
# A spawned child shares its parent's tracker: spawn_main() noted the pipe's
# fd, and this module is imported only once the child needs it.
_resource_tracker._fd = getattr(sys.modules.get(__package__ + '.spawn'),
                                '_inherited_tracker_fd', None)


def _after_fork_in_child():
    # Another thread may have held the lock at fork(): never inherit that.
    _resource_tracker._lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------
# The tracker process


def _proc_stat(pid):
    """(state, start time) of `pid` from /proc, or None if it is gone."""
    try:
        with open('/proc/%d/stat' % pid, 'rb') as f:
            stat = f.read()
    except OSError:
        return None
    # Fields after the parenthesised command name: state is the first,
    # the start time (in clock ticks since boot) the 20th.
    fields = stat[stat.rfind(b')') + 2:].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid, started=None):
    """Whether `pid` runs (a zombie or a missing process does not), and is
    the process that started at `started` (pids get reused)."""
    st = _proc_stat(pid)
    if st is None or st[0] in (b'Z', b'X'):
        return False
    return started is None or st[1] == started


def _still_running(pids, started, grace=1.0):
    """The pids that still run after waiting up to `grace` seconds (a
    process that just closed the pipe may be in the middle of exiting)."""
    deadline = time.monotonic() + grace
    alive = {p for p in pids if p > 0 and p != os.getpid()
             and _pid_alive(p, started.get(p))}
    while alive and time.monotonic() < deadline:
        time.sleep(0.01)
        alive = {p for p in alive if _pid_alive(p, started.get(p))}
    return alive


def _handle(registry, started, line):
    cmd, rtype, pid, name = line.decode('utf-8', 'surrogateescape').rstrip(
        '\n').split(':', 3)
    pid = int(pid)
    if rtype not in _CLEANUP_FUNCS:
        raise ValueError('unknown resource type %r' % rtype)
    users = registry[rtype]
    if cmd == 'PROBE':
        return
    if cmd == 'REGISTER':
        # The sender is alive as it registers (unless it already exited):
        # note which process holds the pid now.
        st = _proc_stat(pid)
        if st is not None:
            started[pid] = st[1]
        else:
            started.setdefault(pid, None)
        counts = users.setdefault(name, {})
        counts[pid] = counts.get(pid, 0) + 1
    elif cmd == 'UNREGISTER':
        counts = users.get(name)
        if counts is None:
            return
        if pid in counts:
            counts[pid] -= 1
            if counts[pid] <= 0:
                del counts[pid]
        # Unlinked (the usual reason to unregister): nobody holds it any
        # more.  Otherwise the other registrants keep it tracked.
        if not counts or not _EXISTS_FUNCS[rtype](name):
            del users[name]
    else:
        raise RuntimeError('unrecognized command %r' % cmd)


def _warn(msg):
    # The tracker's warnings are its report: printed whatever -W says.
    with warnings.catch_warnings():
        warnings.simplefilter('always')
        warnings.warn(msg, UserWarning, stacklevel=2)


def _cleanup(registry, started):
    """Unlink what is left registered; return the tracker's exit status."""
    status = _EXIT_CLEAN
    for rtype, users in registry.items():
        if not users:
            continue
        status = _EXIT_LEFT_REGISTERED
        if rtype == 'dummy':
            continue
        live = _still_running({p for c in users.values() for p in c}, started)
        leaked = {name: counts for name, counts in users.items()
                  if not live.intersection(counts)}
        for name in sorted(set(users) - set(leaked)):
            _warn('resource_tracker: not unlinking %s %r: process %s '
                  'that registered it is still running'
                  % (rtype, name, sorted(live & set(users[name]))))
        if not leaked:
            continue
        _warn(
            'resource_tracker: There appear to be %d leaked %s objects to '
            'clean up at shutdown: %s' % (
                len(leaked), rtype,
                ', '.join('%r (pid %s)' % (n, ', '.join(map(str, sorted(c))))
                          for n, c in sorted(leaked.items()))))
        for name in sorted(leaked):
            try:
                _CLEANUP_FUNCS[rtype](name)
            except Exception as e:
                _warn('resource_tracker: %r: %s' % (name, e))
                status = _EXIT_CLEANUP_FAILED
    return status


def _detach():
    # Ctrl-C and kill of the process group are for the program, not us;
    # stdin and stdout are not ours to use (stderr carries the warnings).
    for signum in _IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if _HAVE_SIGMASK:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _IGNORED_SIGNALS)
    for stream in (sys.stdin, sys.stdout):
        with contextlib.suppress(Exception):
            stream.close()


def _handle_reporting(registry, started, line):
    # A bad message is reported and skipped: the others still count.
    # Returns whether the message was good.
    try:
        _handle(registry, started, line)
        return True
    except Exception as exc:
        with contextlib.suppress(BaseException):
            sys.excepthook(type(exc), exc, exc.__traceback__)
        return False


def main(fd):
    """Run the tracker on the read end `fd` of its pipe until EOF, then exit
    with 0 if nothing was left registered, 1 if something was, 2 if one
    could not be unlinked, 3 if a message was malformed (the highest)."""
    _detach()
    # rtype -> name -> {pid: registrations}; pid -> its start time.
    registry = {rtype: {} for rtype in _CLEANUP_FUNCS}
    started = {}
    all_good = True
    try:
        with open(fd, 'rb') as pipe:
            for line in pipe:
                all_good &= _handle_reporting(registry, started, line)
    finally:
        status = _cleanup(registry, started)
    sys.exit(status if all_good else _EXIT_BAD_MESSAGE)
