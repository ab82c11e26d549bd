"""Start a child through the fork server: the server forks a copy of its
clean, preloaded self, which then unpickles the Process object the parent
sends it, as a spawned child would."""
import os
import struct
import threading

from . import forkserver
from . import popen_fork
from . import popen_spawn_posix
from . import spawn
from . import util
from .process import _sentinel_ready

__all__ = ['Popen']

_HEADER = struct.Struct('>Q')


class _DupFd:
    """An fd passed to a forkserver child, by its index among the fds the
    child received (the server's fd numbers are not the parent's)."""

    def __init__(self, ind):
        self.ind = ind

    def detach(self):
        return forkserver.get_inherited_fds()[self.ind]


class Popen(popen_fork.Popen):
    """A forkserver child.  It is the server's child, not ours: its exit
    code comes over `sentinel`, the socket to the server, which becomes
    readable when the child ends (or when the server dies: then 255)."""

    method = 'forkserver'
    DupFd = _DupFd

    def __init__(self, process_obj):
        self._fds = []
        # Any thread may poll any child (Process.start() polls them all):
        # one reads the server's report, the others then see returncode.
        self._report_lock = threading.Lock()
        super().__init__(process_obj)

    def duplicate_for_child(self, fd):
        # The fd travels with the request; the child finds it by index.
        self._fds.append(fd)
        return len(self._fds) - 1

    def _launch(self, process_obj):
        prep_data = spawn.get_preparation_data(process_obj._name)
        payload = popen_spawn_posix._pickle_for_child(self, prep_data,
                                                      process_obj)
        forkserver.ensure_running()
        server = forkserver._forkserver._forkserver_pid
        try:
            self._start(payload)
        except (EOFError, BrokenPipeError, ConnectionError):
            # The server died before it forked for us: once more, with a
            # fresh server.
            forkserver._forkserver._restart(server)
            self._start(payload)

    def _start(self, payload):
        self.sentinel, data_w = forkserver.connect_to_new_process(self._fds)
        self.finalizer = util.Finalize(self, util.close_fds,
                                       (self.sentinel, data_w))
        try:
            with open(data_w, 'wb', closefd=False) as f:
                f.write(_HEADER.pack(len(payload)))
                f.write(payload)
            pid = forkserver.read_signed(self.sentinel)
        except BaseException:
            self.finalizer()
            self.finalizer = None
            raise
        if pid <= 0:
            self.finalizer()
            self.finalizer = None
            err = -pid
            raise OSError(err, 'fork server could not fork: %s'
                          % os.strerror(err))
        self.pid = pid

    def poll(self, flag=os.WNOHANG):
        """Return the exit code, or None while the child runs (flag 0:
        wait for it)."""
        if self.returncode is None:
            timeout = 0 if flag == os.WNOHANG else None
            if not _sentinel_ready(self.sentinel, timeout):
                return None
            with self._report_lock:
                if self.returncode is None:
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

    def _send_signal(self, sig):
        # Ask the server's report first: once it has reaped the child, the
        # pid may already belong to someone else.
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
