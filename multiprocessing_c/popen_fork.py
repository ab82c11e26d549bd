"""Start a child with os.fork(): it inherits the parent's memory and runs
the Process object's bootstrap directly.

Popen here is also the base of the spawn and forkserver Popens: they
replace _launch() (how the child comes to be) and, where the child is not
ours to wait for, _collect() (how its exit code is learnt)."""
import os
import signal

from . import util
from .process import _sentinel_ready

__all__ = ['Popen']


def _crossed_pipes():
    """Two pipes, each side holding the read end of one and the write end
    of the other: ``(ours, theirs)``, each a ``(read_fd, write_fd)`` pair.
    A read end sees EOF once the other side, the only holder of that
    pipe's write end, is gone."""
    first = os.pipe()
    second = os.pipe()
    return (first[0], second[1]), (second[0], first[1])


def _status_of(info):
    # os.waitid's report: a plain exit gives its status, death by signal N
    # gives -N (the stdlib's convention for exit codes).
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return -info.si_status


class Popen:
    """Owner of one child process: its pid, its exit status, and the pipe
    ends that tell each side when the other is gone."""

    method = 'fork'
    pid = None
    sentinel = None
    returncode = None
    finalizer = None

    def __init__(self, process_obj):
        # Unflushed output would otherwise be written twice, once by each.
        util._flush_std_streams()
        self._launch(process_obj)

    def _launch(self, process_obj):
        ours, theirs = _crossed_pipes()
        self.pid = os.fork()
        if not self.pid:
            _run_child(process_obj, theirs[0], ours)
        util.close_fds(*theirs)
        self.sentinel = ours[0]
        self.finalizer = util.Finalize(self, util.close_fds, ours)

    def duplicate_for_child(self, fd):
        # A forked child has every fd of the parent under the same number.
        return fd

    def _collect(self, flag):
        """The child's exit code once it has ended (reaping it), else
        None; `flag` is os.WNOHANG, or 0 to block."""
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | flag)
        except ChildProcessError:
            # Reaped by someone else (SIGCHLD set to SIG_IGN...): the
            # status is lost, but the child is gone.
            return None
        return None if info is None else _status_of(info)

    def poll(self, flag=os.WNOHANG):
        """Return the exit code (-N after signal N), or None while the
        child runs.  `flag` is os.WNOHANG, or 0 to block until it ends."""
        if self.returncode is None:
            self.returncode = self._collect(flag)
        return self.returncode

    def wait(self, timeout=None):
        """Wait for the child to end, up to `timeout` seconds; return the
        exit code, or None on timeout."""
        if self.returncode is None and timeout is not None:
            if not _sentinel_ready(self.sentinel, timeout):
                return None
        # The sentinel closes a moment before the child becomes reapable,
        # so only a zero timeout may use WNOHANG here.
        return self.poll(os.WNOHANG if timeout == 0 else 0)

    def _send_signal(self, sig):
        # Look first: a child known to have ended is never signalled, and
        # one the fork server has already reaped may have passed its pid on.
        if self.poll() is not None:
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self):
        self._send_signal(signal.SIGTERM)

    def kill(self):
        self._send_signal(signal.SIGKILL)

    def close(self):
        finalizer = self.finalizer
        if finalizer is not None:
            finalizer()


def _run_child(process_obj, parent_sentinel, parent_fds):
    # Never returns: whatever happens, the forked child ends here instead of
    # falling back into the parent's code (exit status 1 if the bootstrap
    # itself fails).
    try:
        util.close_fds(*parent_fds)
        util._forked_child_starts()
        exitcode = process_obj._bootstrap(parent_sentinel=parent_sentinel)
        util._forked_child_ends()
        os._exit(exitcode)
    finally:
        os._exit(1)
