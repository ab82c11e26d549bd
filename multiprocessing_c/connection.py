"""Connections between processes: Pipe(), Listener/Client over AF_UNIX
and AF_INET sockets with HMAC authentication, and wait().

The framing and every blocking call live in C (_mpcore.Connection,
_mpcore.wait); this module adds pickling of objects, addresses, and the
challenge/response handshake, which speaks the running Python's stdlib
dialect so both can connect to each other.
"""
import hmac
import itertools
import os
import socket
import sys

from . import _mpcore
from . import reduction
from . import util
from .context import AuthenticationError, BufferTooShort  # noqa: F401 (API)

__all__ = ['Client', 'Listener', 'Pipe', 'wait']

BUFSIZE = 8192
# Kept for compatibility: AF_UNIX/AF_INET connects do not retry.
CONNECTION_TIMEOUT = 20.

_mmap_counter = itertools.count()

default_family = 'AF_UNIX'
families = ['AF_INET', 'AF_UNIX']

_ConnectionBase = _mpcore.Connection
wait = _mpcore.wait


class Connection(_mpcore.Connection):
    """A two-way (or one-way) channel of messages over a file descriptor.

    Everything but the context manager is in C: send_bytes, recv_bytes,
    recv_bytes_into, poll, fileno, close, and send/recv, which carry any
    picklable object (plain data is pickled in C, the rest by
    reduction.ForkingPickler)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb):
        self.close()

    def _poll(self, timeout):
        return bool(_mpcore.wait([self], timeout))


def reduce_connection(conn):
    """Pickle a Connection as a duplicate of its fd for the receiver."""
    df = reduction.DupFd(conn.fileno())
    return rebuild_connection, (df, conn.readable, conn.writable)


def rebuild_connection(df, readable, writable):
    return Connection(df.detach(), readable, writable)


reduction.register(Connection, reduce_connection)


def Pipe(duplex=True):
    """Return a pair (conn1, conn2) of connected Connections.  If `duplex`
    is false, conn1 can only receive and conn2 only send."""
    if not duplex:
        rfd, wfd = os.pipe()
        return Connection(rfd, writable=False), Connection(wfd, readable=False)
    # A stream socketpair: both ends send and receive, and fds can be
    # passed over it (send_handle).
    ends = socket.socketpair()
    for end in ends:
        end.setblocking(True)
    return tuple(Connection(end.detach()) for end in ends)


# ---------------------------------------------------------------- addresses

def arbitrary_address(family):
    """Return an unused address of `family` to listen on."""
    if family == 'AF_INET':
        return ('localhost', 0)
    if family == 'AF_UNIX':
        # A fresh name in this process tree's private directory.
        name = 'listener-%d-%d-%s' % (os.getpid(), next(_mmap_counter),
                                      os.urandom(4).hex())
        return os.path.join(util.get_temp_dir(), name)
    if family == 'AF_PIPE':
        raise ValueError('AF_PIPE (Windows named pipes) is not supported here')
    raise ValueError('unrecognized family %r' % (family,))


def _validate_family(family):
    if family not in families:
        raise ValueError('Family %s is not recognized.' % family)


def address_type(address):
    """Return the family name ('AF_INET', 'AF_UNIX' or 'AF_PIPE') that
    `address` belongs to."""
    if isinstance(address, tuple):
        return 'AF_INET'
    if isinstance(address, str):
        # Two leading backslashes name a Windows pipe.
        return 'AF_PIPE' if address[:2] == '\\\\' else 'AF_UNIX'
    if isinstance(address, bytes) and util.is_abstract_socket_namespace(address):
        return 'AF_UNIX'
    raise ValueError('address type of %r unrecognized' % (address,))


def _check_authkey(authkey):
    if authkey is not None and not isinstance(authkey, bytes):
        raise TypeError('authkey should be a byte string')


def _handshake(conn, authkey, we_challenge_first):
    # Each side proves it knows the key, in opposite orders on the two
    # ends; a failure closes the connection.
    steps = (deliver_challenge, answer_challenge)
    if not we_challenge_first:
        steps = steps[::-1]
    try:
        for step in steps:
            step(conn, authkey)
    except BaseException:
        conn.close()
        raise
    return conn


# --------------------------------------------------------- Listener/Client

class Listener:
    """A listening socket that returns an authenticated Connection per
    accepted client."""

    def __init__(self, address=None, family=None, backlog=1, authkey=None):
        _check_authkey(authkey)
        if family is None:
            family = address_type(address) if address else default_family
        _validate_family(family)
        if not address:
            address = arbitrary_address(family)
        self._authkey = authkey
        self._listener = SocketListener(address, family, backlog)

    def accept(self):
        """Wait for a client and return the Connection to it (after the
        handshake if there is an authkey)."""
        server = self._listener
        if server is None:
            raise OSError('listener is closed')
        conn = server.accept()
        if self._authkey is None:
            return conn
        return _handshake(conn, self._authkey, we_challenge_first=True)

    def close(self):
        """Stop listening (and remove an AF_UNIX socket file)."""
        server, self._listener = self._listener, None
        if server is not None:
            server.close()

    address = property(lambda self: self._listener._address,
                       doc='The address being listened on.')
    last_accepted = property(lambda self: self._listener._last_accepted,
                             doc='The address of the last accepted client.')

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def Client(address, family=None, authkey=None):
    """Connect to the Listener at `address` and return a Connection."""
    _check_authkey(authkey)
    _validate_family(family or address_type(address))
    conn = SocketClient(address)
    if authkey is None:
        return conn
    return _handshake(conn, authkey, we_challenge_first=False)


class SocketListener:
    """The bound, listening socket behind a Listener."""

    def __init__(self, address, family, backlog=1):
        sock = socket.socket(getattr(socket, family))
        try:
            if family == 'AF_INET':
                # Rebinding a port still in TIME_WAIT is fine for a server.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(True)
            sock.bind(address)
            sock.listen(backlog)
            bound = sock.getsockname()
        except BaseException:
            sock.close()
            raise
        self._socket = sock
        self._family = family
        self._address = bound
        self._last_accepted = None
        self._unlink = None
        if family == 'AF_UNIX' and isinstance(address, str) and \
                not util.is_abstract_socket_namespace(address):
            # The socket file goes with the listener, or at exit.
            self._unlink = util.Finalize(self, os.unlink, args=(address,),
                                         exitpriority=0)

    def accept(self):
        client, self._last_accepted = self._socket.accept()
        client.setblocking(True)
        return Connection(client.detach())

    def close(self):
        unlink, self._unlink = self._unlink, None
        try:
            self._socket.close()
        finally:
            if unlink is not None:
                try:
                    unlink()
                except FileNotFoundError:
                    pass


def SocketClient(address):
    """Return a Connection to the socket listening at `address`."""
    sock = socket.socket(getattr(socket, address_type(address)))
    try:
        sock.setblocking(True)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return Connection(sock.detach())


# ---------------------------------------------------------- authentication
#
# The handshake: the deliverer sends CHALLENGE + payload, the answerer
# replies with an HMAC of the payload keyed with the shared authkey, and
# the deliverer answers WELCOME or FAILURE.  Python 3.12 added a digest
# name prefix ('{sha256}') to payloads and replies; earlier versions send
# a bare 20-byte payload and expect a bare HMAC-MD5.  We send what the
# running Python's stdlib sends and accept either form of reply.

_PREFIXED = sys.version_info >= (3, 12)
_MD5ONLY_MESSAGE_LENGTH = 20    # random bytes of the legacy payload
# Random bytes of the payload we send (after the prefix, if any).
MESSAGE_LENGTH = 40 if _PREFIXED else _MD5ONLY_MESSAGE_LENGTH
CHALLENGE = b'#CHALLENGE#'
WELCOME = b'#WELCOME#'
FAILURE = b'#FAILURE#'

_DEFAULT_DIGEST = 'sha256'
_ALLOWED_DIGESTS = frozenset({'md5', 'sha256', 'sha384', 'sha3_256', 'sha3_384'})
_MAX_REPLY = 256


def _split_digest_name(data):
    """Return (name, rest) for b'{name}rest', or (None, data)."""
    if data.startswith(b'{'):
        end = data.find(b'}', 1, 22)
        if end > 0:
            try:
                name = data[1:end].decode('ascii')
            except UnicodeDecodeError:
                return None, data
            return name, data[end + 1:]
    return None, data


def _reply_for(authkey, payload):
    # A prefixed payload gets a reply prefixed with the same digest name;
    # a bare one the legacy bare HMAC-MD5.  Both are over the whole payload.
    name, _ = _split_digest_name(payload)
    if name is None:
        return hmac.digest(authkey, payload, 'md5')
    if name not in _ALLOWED_DIGESTS:
        raise AuthenticationError('unsupported digest %r in challenge' % name)
    return b'{%s}' % name.encode() + hmac.digest(authkey, payload, name)


def _reply_is_valid(authkey, payload, reply):
    name, _ = _split_digest_name(reply)
    if name is None:
        expected = hmac.digest(authkey, payload, 'md5')
    elif name in _ALLOWED_DIGESTS:
        expected = b'{%s}' % name.encode() + hmac.digest(authkey, payload, name)
    else:
        return False
    return hmac.compare_digest(reply, expected)


def deliver_challenge(connection, authkey, digest_name=None):
    """Challenge the other end to prove it knows `authkey`; raise
    AuthenticationError if it does not.  The reply is asked for with
    `digest_name` ('sha256' from Python 3.12 on; before, unless given, the
    legacy bare HMAC-MD5)."""
    if not isinstance(authkey, bytes):
        raise ValueError('Authkey must be bytes, not %s' % type(authkey).__name__)
    if digest_name is None and _PREFIXED:
        digest_name = _DEFAULT_DIGEST
    if digest_name is not None:
        payload = b'{%s}' % digest_name.encode() + os.urandom(MESSAGE_LENGTH)
    else:
        payload = os.urandom(MESSAGE_LENGTH)
    connection.send_bytes(CHALLENGE + payload)
    reply = connection.recv_bytes(_MAX_REPLY)
    if _reply_is_valid(authkey, payload, reply):
        connection.send_bytes(WELCOME)
    else:
        connection.send_bytes(FAILURE)
        raise AuthenticationError('digest received was wrong')


def answer_challenge(connection, authkey):
    """Prove to the other end that we know `authkey`; raise
    AuthenticationError if it rejects the proof."""
    if not isinstance(authkey, bytes):
        raise ValueError('Authkey must be bytes, not %s' % type(authkey).__name__)
    message = connection.recv_bytes(_MAX_REPLY)
    if not message.startswith(CHALLENGE):
        raise AuthenticationError('protocol error: expected a challenge, got %r'
                                  % message[:40])
    connection.send_bytes(_reply_for(authkey, message[len(CHALLENGE):]))
    if connection.recv_bytes(_MAX_REPLY) != WELCOME:
        raise AuthenticationError('digest sent was rejected')


def _create_response(authkey, message):
    """The reply to a challenge `message` (without CHALLENGE): the 3.12+
    private name for the answering half."""
    return _reply_for(authkey, message)


def _verify_challenge(authkey, message, response):
    """Raise AuthenticationError unless `response` answers `message`: the
    3.12+ private name for the checking half."""
    if not _reply_is_valid(authkey, message, response):
        raise AuthenticationError('digest received was wrong')


# 3.12+ spell these with a leading underscore.
_CHALLENGE, _WELCOME, _FAILURE = CHALLENGE, WELCOME, FAILURE
_MD5_DIGEST_LEN = 16


# ------------------------------------------------------- xmlrpc wrappers

class ConnectionWrapper:
    """A Connection whose send()/recv() use the given dumps/loads; every
    other attribute is the wrapped Connection's."""

    def __init__(self, conn, dumps, loads):
        self._conn = conn
        self._dumps = dumps
        self._loads = loads

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def send(self, obj):
        self._conn.send_bytes(self._dumps(obj))

    def recv(self):
        return self._loads(self._conn.recv_bytes())


def _xml_dumps(obj):
    import xmlrpc.client
    return xmlrpc.client.dumps((obj,), allow_none=True).encode('utf-8')


def _xml_loads(data):
    import xmlrpc.client
    params, _ = xmlrpc.client.loads(data.decode('utf-8'))
    return params[0]


class XmlListener(Listener):
    """A Listener whose connections carry xmlrpc-marshalled objects."""

    def accept(self):
        return ConnectionWrapper(super().accept(), _xml_dumps, _xml_loads)


def XmlClient(*args, **kwds):
    """Client() whose connection carries xmlrpc-marshalled objects."""
    return ConnectionWrapper(Client(*args, **kwds), _xml_dumps, _xml_loads)
