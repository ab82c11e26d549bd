"""Start a child through the fork server: the server forks a copy of its
clean, preloaded self, which then unpickles the Process object the parent
sends it, as a spawned child would."""
import os
import threading

from . import forkserver
from . import popen_fork
from . import popen_spawn_posix
from . import util
from .process import _sentinel_ready

__all__ = ['Popen']


class _DupFd(int):
    """An fd passed to a forkserver child, as its index among the fds that
    came with the child's request (the server's fd numbers are not ours)."""

    __slots__ = ()

    @property
    def ind(self):
        return int(self)

    def detach(self):
        return forkserver.get_inherited_fds()[self]


class Popen(popen_fork.Popen):
    """A forkserver child.  It is the server's child, not ours: its exit
    code comes over `sentinel`, the socket to the server, which becomes
    readable when the child ends (or when the server dies: then 255)."""

    method = 'forkserver'
    DupFd = _DupFd

    def duplicate_for_child(self, fd):
        # The fd travels with the request; the child finds it by index.
        index = len(self._fds)
        self._fds.append(fd)
        return index

    def _launch(self, process_obj):
        self._fds = []
        # Any thread may poll any child (Process.start() polls them all):
        # one reads the server's report, the others then see returncode.
        self._report_lock = threading.Lock()
        payload = popen_spawn_posix._child_payload(self, process_obj)
        forkserver.ensure_running()
        server = forkserver._forkserver._forkserver_pid
        try:
            self._request(payload)
        except (EOFError, BrokenPipeError, ConnectionError):
            # The server died before it forked for us: once more, with a
            # fresh server.
            forkserver._forkserver._restart(server)
            self._request(payload)

    def _request(self, payload):
        # Ask the server for a child, hand the child its payload, and learn
        # its pid (or, as a negative number, why the server could not fork).
        self.sentinel, data_w = forkserver.connect_to_new_process(self._fds)
        self.finalizer = util.Finalize(self, util.close_fds,
                                       (self.sentinel, data_w))
        try:
            popen_spawn_posix._write_all(data_w, payload)
            pid = forkserver.read_signed(self.sentinel)
            if pid <= 0:
                raise OSError(-pid, 'fork server could not fork: %s'
                              % os.strerror(-pid))
        except BaseException:
            self.finalizer()
            self.finalizer = None
            raise
        self.pid = pid

    def _collect(self, flag):
        if not _sentinel_ready(self.sentinel,
                               0 if flag == os.WNOHANG else None):
            return None
        with self._report_lock:
            if self.returncode is None:     # no other thread read it yet
                self.returncode = self._read_report()
        return self.returncode

    def _read_report(self):
        try:
            code = forkserver.read_signed(self.sentinel)
        except (OSError, EOFError):
            # The server died, and the child's exit code with it.
            return 255
        # The server closes the socket right after the report: wait for
        # that, so that the sentinel stays ready from now on.
        _sentinel_ready(self.sentinel, 5.0)
        return code
