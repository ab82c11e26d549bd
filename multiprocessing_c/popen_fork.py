"""Start a child with os.fork(): it inherits the parent's memory and runs
the Process object's bootstrap directly."""
import os
import signal

from . import util
from .process import _sentinel_ready

__all__ = ['Popen']


class Popen:
    """Owner of one child process: its pid, its exit status, and the pipe
    ends that tell each side when the other is gone."""

    method = 'fork'

    def __init__(self, process_obj):
        # Unflushed output would otherwise be written twice, once by each.
        util._flush_std_streams()
        self.returncode = None
        self.finalizer = None
        self._launch(process_obj)

    def duplicate_for_child(self, fd):
        # A forked child has every fd of the parent under the same number.
        return fd

    def poll(self, flag=os.WNOHANG):
        """Return the exit code (-N after signal N), or None while the
        child runs.  `flag` is os.WNOHANG, or 0 to block until it ends."""
        if self.returncode is None:
            try:
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | flag)
            except ChildProcessError:
                # Reaped by someone else (SIGCHLD set to SIG_IGN...): the
                # status is lost, but the child is gone.
                return None
            if info is not None:
                self.returncode = (info.si_status
                                   if info.si_code == os.CLD_EXITED
                                   else -info.si_status)
        return self.returncode

    def wait(self, timeout=None):
        """Wait for the child to end, up to `timeout` seconds; return the
        exit code, or None on timeout."""
        if self.returncode is not None:
            return self.returncode
        if timeout is not None and not _sentinel_ready(self.sentinel, timeout):
            return None
        # The sentinel closes a moment before the child becomes reapable,
        # so only a zero timeout may use WNOHANG here.
        return self.poll(os.WNOHANG if timeout == 0 else 0)

    def _send_signal(self, sig):
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self):
        self._send_signal(signal.SIGTERM)

    def kill(self):
        self._send_signal(signal.SIGKILL)

    def close(self):
        if self.finalizer is not None:
            self.finalizer()

    def _launch(self, process_obj):
        # Two pipes: the parent's sentinel is readable once the child (the
        # only holder of its write end) is gone, and the child's
        # parent_sentinel likewise tells the child when the parent is gone.
        sentinel_r, sentinel_w = os.pipe()
        parent_alive_r, parent_alive_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            _run_child(process_obj, (sentinel_r, parent_alive_w), parent_alive_r)
        os.close(sentinel_w)
        os.close(parent_alive_r)
        self.sentinel = sentinel_r
        self.finalizer = util.Finalize(self, util.close_fds,
                                       (sentinel_r, parent_alive_w))


def _run_child(process_obj, parent_fds, parent_sentinel):
    # Never returns: whatever happens, the forked child ends here instead of
    # falling back into the parent's code.
    exitcode = 1
    try:
        for fd in parent_fds:
            os.close(fd)
        util._forked_child_starts()
        exitcode = process_obj._bootstrap(parent_sentinel=parent_sentinel)
        util._forked_child_ends()
    finally:
        os._exit(exitcode)
