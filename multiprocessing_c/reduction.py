"""Pickling for other processes: a Pickler with a registry of extra
reducers (methods, partials, sockets, connections...), and the helpers
that carry file descriptors to a child."""
import copyreg
import functools
import os
import pickle
import socket
import sys
import types

from . import _mpcore
from . import context

__all__ = ['ForkingPickler', 'register', 'dump', 'DupFd', 'sendfds',
           'recvfds', 'send_handle', 'recv_handle']

HAVE_SEND_HANDLE = True
# Whether recvfds() acknowledges what it received (only macOS needs it).
ACKNOWLEDGE = False


class _ChunkSink:
    """A pickler's file that hands each chunk to `write` (list.append).

    Pickles are gathered as bytes, never in a BytesIO seen through
    getbuffer(): such a view held by something that ends up in a reference
    cycle makes the garbage collector fail closing the BytesIO (BufferError
    from gc.collect() or unraisable on 3.12+; 3.13.0 can even crash)."""
    __slots__ = ('write',)

    def __init__(self, write):
        self.write = write


def _joined(chunks):
    if len(chunks) == 1 and type(chunks[0]) is bytes:
        return chunks[0]       # a small pickle arrives in one write
    return b''.join(chunks)


class ForkingPickler(pickle.Pickler):
    """A Pickler that also knows the reducers registered with register().

    Registered reducers sit on top of copyreg's, in a per-instance dispatch
    table built from one shared ChainMap-like copy."""

    _extra_reducers = {}
    _copyreg_dispatch_table = copyreg.dispatch_table
    # Bumped by register(): pooled picklers (_pooled_dumps) made before
    # are dropped.
    _generation = 0

    def __init__(self, *args, **kwds):
        super().__init__(*args, **kwds)
        table = self._copyreg_dispatch_table.copy()
        table.update(self._extra_reducers)
        self.dispatch_table = table

    @classmethod
    def register(cls, type, reduce):
        """Pickle objects of `type` with `reduce` in other processes."""
        cls._extra_reducers[type] = reduce
        ForkingPickler._generation += 1

    @classmethod
    def dumps(cls, obj, protocol=None):
        """Return `obj` pickled, as a bytes-like object (a memoryview)."""
        if cls is ForkingPickler and protocol is None:
            # Plain data in C, the rest with a pooled pickler.
            return memoryview(_mpcore.dumps(obj))
        out = []
        cls(_ChunkSink(out.append), protocol).dump(obj)
        return memoryview(_joined(out))

    loads = staticmethod(pickle.loads)


register = ForkingPickler.register


def dump(obj, file, protocol=None):
    """Pickle `obj` to `file` with ForkingPickler."""
    ForkingPickler(file, protocol).dump(obj)


# ---------------------------------------------------------------------------
# The full pickler behind _mpcore.dumps (which pickles plain data itself).
#
# Making a ForkingPickler per message costs several times more than
# pickling a small object, so picklers are reused from a small pool (a
# list: pop/append are atomic, so threads and re-entrant dumps from inside
# a reducer each get their own).  A pooled pickler writes into a list
# rather than a BytesIO; it is dropped when reducers were registered since
# it was made (register(), or copyreg's table grew), or when a dump failed.

_POOL_MAX = 4
_pickler_pool = []


def _pooled_dumps(obj):
    stamp = (len(copyreg.dispatch_table) << 32) | ForkingPickler._generation
    try:
        pickler, out, made = _pickler_pool.pop()
        if made != stamp:
            raise IndexError
    except IndexError:
        out = []
        pickler = ForkingPickler(_ChunkSink(out.append))
        made = stamp
    pickler.dump(obj)
    pickler.clear_memo()
    data = _joined(out)
    out.clear()
    if len(_pickler_pool) < _POOL_MAX:
        _pickler_pool.append((pickler, out, made))
    return data


_full_loads = pickle.loads
_mpcore._set_pickle_fallbacks(_pooled_dumps, _full_loads)


# ---------------------------------------------------------------------------
# Callables plain pickle refuses.  Each travels as getattr(owner, name),
# looked up again in the receiving process; partials as their parts.

def _rebuild_partial(func, args, keywords):
    return functools.partial(func, *args, **keywords)


_CALLABLE_REDUCERS = {
    # A method bound to an instance or class: its owner and name.
    types.MethodType:
        lambda meth: (getattr, (meth.__self__, meth.__func__.__name__)),
    # Unbound methods of builtin types (list.append, int.__add__).
    types.MethodDescriptorType:
        lambda desc: (getattr, (desc.__objclass__, desc.__name__)),
    types.WrapperDescriptorType:
        lambda desc: (getattr, (desc.__objclass__, desc.__name__)),
    functools.partial:
        lambda part: (_rebuild_partial,
                      (part.func, part.args, part.keywords or {})),
}
for _kind, _reducer in _CALLABLE_REDUCERS.items():
    register(_kind, _reducer)
del _kind, _reducer

# ---------------------------------------------------------------------------
# Passing file descriptors over AF_UNIX sockets (SCM_RIGHTS, in C; the wire
# format is the stdlib's, so either end may be the stdlib).


def sendfds(sock, fds):
    """Send the list of file descriptors `fds` over the AF_UNIX socket
    `sock` (a socket, or anything with fileno(), or an fd)."""
    _mpcore.sendfds(sock, list(fds))


def recvfds(sock, size):
    """Receive `size` file descriptors sent with sendfds() over `sock`;
    they are close-on-exec.  Raises EOFError if the peer closed and
    RuntimeError if something other than `size` descriptors arrived."""
    return _mpcore.recvfds(sock, size)


def send_handle(conn, handle, destination_pid):
    """Send the file descriptor `handle` over the Connection (or socket)
    `conn` to process `destination_pid`."""
    _mpcore.sendfds(conn.fileno(), [handle])


def recv_handle(conn):
    """Receive a file descriptor sent with send_handle() over `conn`."""
    return _mpcore.recvfds(conn.fileno(), 1)[0]


# ---------------------------------------------------------------------------
# File descriptors for a child.


def DupFd(fd):
    """Return an object that, unpickled in a child being started, gives a
    file descriptor open on the same file as `fd`."""
    popen = context.get_spawning_popen()
    if popen is not None:
        # A forkserver Popen brings its own kind (fds arrive renumbered).
        maker = getattr(popen, 'DupFd', _InheritedFd)
        return maker(popen.duplicate_for_child(fd))
    from . import resource_sharer
    return resource_sharer.DupFd(fd)


class _InheritedFd:
    # The fd reaches the child by inheritance under the same number.
    __slots__ = ('fd',)

    def __init__(self, fd):
        self.fd = fd

    def detach(self):
        return self.fd


# ---------------------------------------------------------------------------
# Sockets travel as a duplicated fd plus what socket.socket() needs.


def _reduce_socket(s):
    df = DupFd(s.fileno())
    return _rebuild_socket, (df, s.family, s.type, s.proto)


def _rebuild_socket(df, family, type, proto):
    return socket.socket(family, type, proto, fileno=df.detach())


register(socket.socket, _reduce_socket)


class AbstractReducer:
    """The interface of a reduction module, for `context.reducer`."""

    ForkingPickler = ForkingPickler
    register = register
    dump = dump
    DupFd = staticmethod(DupFd)

    def __init__(self, *args):
        pass
