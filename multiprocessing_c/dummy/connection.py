"""Listener, Client and Pipe for multiprocessing_c.dummy: connections
between threads, made of two queue.Queue objects."""
import queue
import time

__all__ = ['Client', 'Listener', 'Pipe']

families = [None]


class Listener:
    """Accepts connections from Client(listener.address) in other threads.
    The address is the backlog queue itself."""

    def __init__(self, address=None, family=None, backlog=1):
        self._backlog_queue = queue.Queue(backlog)

    def accept(self):
        """Wait for a Client and return our end of the connection."""
        if self._backlog_queue is None:
            raise OSError('listener is closed')
        return Connection(*self._backlog_queue.get())

    def close(self):
        self._backlog_queue = None

    @property
    def address(self):
        return self._backlog_queue

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb):
        self.close()


def Client(address):
    """Connect to the Listener whose address is `address`."""
    to_listener, to_client = queue.Queue(), queue.Queue()
    address.put((to_listener, to_client))
    return Connection(to_client, to_listener)


def Pipe(duplex=True):
    """Two connected Connection objects (both ends can send and receive)."""
    a, b = queue.Queue(), queue.Queue()
    return Connection(a, b), Connection(b, a)


class Connection:
    """One end of a thread connection: objects are passed, not copied."""

    def __init__(self, _in, _out):
        self._in = _in
        self._out = _out
        self.send = self.send_bytes = _out.put
        self.recv = self.recv_bytes = _in.get

    def poll(self, timeout=0.0):
        """Whether an object is ready to receive, waiting up to `timeout`
        seconds (None: forever)."""
        if self._in.qsize() > 0:
            return True
        if timeout is not None and timeout <= 0.0:
            return False
        # Peek without taking: wait on the queue's own condition (its lock
        # is held, so the size is read without qsize(), which takes it).
        with self._in.not_empty:
            if timeout is None:
                while not self._in._qsize():
                    self._in.not_empty.wait()
                return True
            deadline = time.monotonic() + timeout
            while not self._in._qsize():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._in.not_empty.wait(left)
            return True

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb):
        self.close()
