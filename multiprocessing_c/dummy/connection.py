"""Listener, Client and Pipe for multiprocessing_c.dummy: connections
between threads, made of two queue.Queue objects."""
import queue

__all__ = ['Client', 'Listener', 'Pipe']

families = [None]


class _Closable:
    """`with` support: leaving the block closes the object."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class Listener(_Closable):
    """Accepts connections from Client(listener.address) in other threads.
    The address is the queue of pending connection requests itself."""

    def __init__(self, address=None, family=None, backlog=1):
        self._requests = queue.Queue(backlog)

    @property
    def address(self):
        return self._requests

    def accept(self):
        """Wait for a Client and return our end of the connection."""
        requests = self._requests
        if requests is None:
            raise OSError('listener is closed')
        inbox, outbox = requests.get()
        return Connection(inbox, outbox)

    def close(self):
        self._requests = None


def Client(address):
    """Connect to the Listener whose address is `address`."""
    to_listener, to_client = queue.Queue(), queue.Queue()
    address.put((to_listener, to_client))
    return Connection(to_client, to_listener)


class Connection(_Closable):
    """One end of a thread connection: objects are passed, not copied.
    send() puts on the peer's inbox, recv() takes from ours; the *_bytes
    variants are the same calls."""

    def __init__(self, _in, _out):
        self._in = _in
        self._out = _out

    def send(self, obj):
        self._out.put(obj)

    def recv(self):
        return self._in.get()

    send_bytes = send
    recv_bytes = recv

    def poll(self, timeout=0.0):
        """Whether an object is ready to receive, waiting up to `timeout`
        seconds (None: forever)."""
        inbox = self._in
        if timeout is not None and timeout <= 0.0:
            return inbox.qsize() > 0
        # Peek without taking: wait on the queue's own condition (its lock
        # is held there, so read the size with _qsize(), not qsize()).
        with inbox.not_empty:
            return bool(inbox.not_empty.wait_for(inbox._qsize, timeout))

    def close(self):
        pass


def Pipe(duplex=True):
    """Two connected Connection objects (both ends can send and receive)."""
    one_way, other_way = queue.Queue(), queue.Queue()
    return Connection(one_way, other_way), Connection(other_way, one_way)
