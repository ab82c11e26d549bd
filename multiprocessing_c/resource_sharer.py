"""Handing file descriptors to processes that are already running.

A Connection or socket pickled while starting a child travels by
inheritance (reduction.DupFd asks the spawning Popen).  Pickled at any
other time, say sent over a Pipe to a running process, its fd needs
another road: the pickle carries a ticket, and this process keeps a
duplicate of the fd until the receiver claims it.  Claims are served by
one background thread behind an AF_UNIX Listener authenticated with the
process tree's authkey; the fd goes over SCM_RIGHTS, and the duplicate
is closed once handed over.  A ticket is good for one claim.
"""
import itertools
import os
import signal
import sys
import threading

from . import process
from . import reduction
from . import util

__all__ = ['stop']


class DupFd:
    """A picklable claim on a duplicate of `fd`; detach() in the receiving
    process returns a new fd for the same open file."""

    def __init__(self, fd):
        self._id = _resource_sharer.share_fd(fd)

    def detach(self):
        """Fetch the fd from the process that pickled it."""
        return _resource_sharer.fetch_fd(self._id)


def _authkey():
    return process.current_process().authkey


def _report_current_exception():
    if not util.is_exiting():
        sys.excepthook(*sys.exc_info())


class _ResourceSharer:
    """The per-process fd server behind DupFd, started on first use."""

    def __init__(self):
        self._mutex = threading.Lock()
        self._pending = {}              # ticket -> our duplicate fd
        self._tickets = itertools.count(1)
        self._server = None             # (listener, thread) while running
        util.register_after_fork(self, _ResourceSharer._reset_in_child)

    def share_fd(self, fd):
        """Keep a duplicate of `fd` for one claim; return its (address,
        ticket) identifier."""
        dup = os.dup(fd)
        with self._mutex:
            if self._server is None:
                self._server = self._launch()
            ticket = next(self._tickets)
            self._pending[ticket] = dup
            return self._server[0].address, ticket

    @staticmethod
    def fetch_fd(ident):
        """Claim the fd named by `ident` from the process sharing it."""
        from .connection import Client
        address, ticket = ident
        with Client(address, authkey=_authkey()) as conn:
            conn.send((ticket, os.getpid()))
            return reduction.recv_handle(conn)

    def stop(self, timeout=None):
        """Stop the server thread and close every unclaimed duplicate."""
        from .connection import Client
        with self._mutex:
            server, self._server = self._server, None
            if server is not None:
                listener, thread = server
                with Client(listener.address, authkey=_authkey()) as conn:
                    conn.send(None)
                thread.join(timeout)
                if thread.is_alive():
                    util.sub_warning('resource sharer thread did not stop '
                                     'when asked')
                listener.close()
            self._drop_pending()

    def _drop_pending(self):
        pending, self._pending = self._pending, {}
        for fd in pending.values():
            os.close(fd)

    def _reset_in_child(self):
        # After fork: no server thread here, and the unclaimed duplicates
        # are the parent's to hand out.
        self._mutex = threading.Lock()
        self._drop_pending()
        server, self._server = self._server, None
        if server is not None:
            server[0].close()       # the socket file stays the parent's

    def _launch(self):
        from .connection import Listener
        util.debug('starting the resource sharer')
        listener = Listener(authkey=_authkey(), backlog=128)
        thread = threading.Thread(target=self._serve, args=(listener,),
                                  name='resource-sharer', daemon=True)
        thread.start()
        return listener, thread

    def _serve(self, listener):
        # Signals are for the main thread.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        while True:
            try:
                conn = listener.accept()
            except Exception:
                if listener._listener is None:
                    return          # closed by a stop() that timed out
                _report_current_exception()     # e.g. a wrong authkey
                continue
            with conn:
                try:
                    request = conn.recv()
                    if request is None:
                        return
                    ticket, pid = request
                    fd = self._pending.pop(ticket, None)
                    if fd is None:
                        continue
                    try:
                        reduction.send_handle(conn, fd, pid)
                    finally:
                        os.close(fd)
                except Exception:
                    _report_current_exception()


_resource_sharer = _ResourceSharer()
stop = _resource_sharer.stop
