"""Handing file descriptors to processes that are already running.

A Connection or socket pickled while starting a child travels by
inheritance (reduction.DupFd asks the spawning Popen).  Pickled at any
other time, say sent over a Pipe to a running process, its fd needs
another road: DupFd registers a duplicate with this process's resource
sharer, a background thread behind an authenticated AF_UNIX Listener.
The receiving process connects, names the key it got in the pickle, and
gets the fd over SCM_RIGHTS; the sharer then closes its duplicate.  Each
registration is redeemed at most once.
"""
import os
import signal
import sys
import threading

from . import process
from . import reduction
from . import util

__all__ = ['stop']


class DupFd:
    """A picklable stand-in for a duplicate of `fd`; detach() in the
    receiving process returns a new fd for the same open file."""

    def __init__(self, fd):
        new_fd = os.dup(fd)

        def send(conn, pid):
            reduction.send_handle(conn, new_fd, pid)

        def close():
            os.close(new_fd)
        self._id = _resource_sharer.register(send, close)

    def detach(self):
        """Fetch the fd from the process that pickled it."""
        with _resource_sharer.get_connection(self._id) as conn:
            return reduction.recv_handle(conn)


class _ResourceSharer:
    """The per-process server behind DupFd, started on first use."""

    def __init__(self):
        self._key = 0
        self._cache = {}            # key -> (send(conn, pid), close())
        self._lock = threading.Lock()
        self._listener = None
        self._address = None
        self._thread = None
        util.register_after_fork(self, _ResourceSharer._afterfork)

    def register(self, send, close):
        """Offer a resource; return the id a receiver redeems it with."""
        with self._lock:
            if self._address is None:
                self._start()
            self._key += 1
            self._cache[self._key] = (send, close)
            return (self._address, self._key)

    @staticmethod
    def get_connection(ident):
        """Connect to the sharer named in `ident` and ask for the resource."""
        from .connection import Client
        address, key = ident
        conn = Client(address, authkey=process.current_process().authkey)
        conn.send((key, os.getpid()))
        return conn

    def stop(self, timeout=None):
        """Stop the server thread and close every unclaimed duplicate."""
        from .connection import Client
        with self._lock:
            if self._address is not None:
                conn = Client(self._address,
                              authkey=process.current_process().authkey)
                conn.send(None)
                conn.close()
                self._thread.join(timeout)
                if self._thread.is_alive():
                    util.sub_warning('_ResourceSharer thread did not stop '
                                     'when asked')
                self._listener.close()
                self._thread = self._listener = self._address = None
            self._close_cached()

    def _close_cached(self):
        cache, self._cache = self._cache, {}
        for _, close in cache.values():
            close()

    def _afterfork(self):
        # The server thread did not survive the fork, and the duplicates
        # are the parent's to hand out: drop our copies of everything.
        self._close_cached()
        self._lock = threading.Lock()
        if self._listener is not None:
            self._listener.close()   # the parent's finalizer owns the file
        self._listener = self._address = self._thread = None

    def _start(self):
        from .connection import Listener
        util.debug('starting listener and thread for sending handles')
        self._listener = Listener(authkey=process.current_process().authkey,
                                  backlog=128)
        self._address = self._listener.address
        t = threading.Thread(target=self._serve, name='resource-sharer',
                             daemon=True)
        t.start()
        self._thread = t

    def _serve(self):
        # Signals are for the main thread.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        listener = self._listener
        while True:
            try:
                conn = listener.accept()
            except Exception:
                if listener._listener is None:
                    break       # closed under us by a timed-out stop()
                # A stray or unauthenticated client: serve the next one.
                if not util.is_exiting():
                    sys.excepthook(*sys.exc_info())
                continue
            try:
                with conn:
                    msg = conn.recv()
                    if msg is None:
                        break
                    key, destination_pid = msg
                    send, close = self._cache.pop(key)
                    try:
                        send(conn, destination_pid)
                    finally:
                        close()
            except Exception:
                if not util.is_exiting():
                    sys.excepthook(*sys.exc_info())


_resource_sharer = _ResourceSharer()
stop = _resource_sharer.stop
