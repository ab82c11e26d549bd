"""Managers: a server process that owns Python objects, and proxies through
which other processes (local or remote) use them.

How the pieces talk
-------------------
Every message is a tuple sent with the connection's send()/recv():
a request is ``(ident, methodname, args, kwds)`` and a reply is
``(kind, value)`` where kind is '#RETURN', '#PROXY', '#ERROR', '#TRACEBACK'
or '#UNSERIALIZABLE' (see convert_to_error).  ``ident`` None addresses the
server itself (create, incref, decref, ...).

Each thread of a client process keeps one connection per manager address
(BaseProxy._address_to_local).  The server gives that connection a thread
of its own, which runs both method calls on shared objects and the
server's own calls, so creating an object, counting references and calling
methods all share one authenticated connection instead of opening a new
one each time.  Dropping a reference ('#DECREF') needs no reply, so a
finalizer may send it at any moment without disturbing a call in flight.

Reference counting
------------------
The server counts, per object, the proxies that hold it.  A proxy takes a
reference when made (or adopts the one `create` hands out) and a
finalizer gives it back when the proxy dies.  When the server itself
pickles a proxy to one of its objects (a managed list inside a managed
dict, going back to a client) it lends the receiver a reference first,
under a key the receiver claims when unpickling, so the object cannot
vanish between the reply and the claim.  Inside the server process,
proxies to the server's own objects call it directly, without a socket.

A proxy that was pickled or inherited by fork may have a twin in another
process that has not taken its reference yet (``Process(target=f,
args=(manager.dict(),)).start()`` drops the parent's proxy at once).  Its
last reference is therefore given back with '#DECREF_LATER': the object
stays, uncounted, for a grace period (_GRACE seconds) in which a late
incref revives it, and is freed after that.

Objects that hold each other only through proxies (a list appended to
itself) never reach zero; a tracing pass over what the shared objects
contain finds and frees them (Server._collect_cycles).
"""
import array
import collections
import contextlib
import copyreg
import errno
import gc
import io
import itertools
import os
import pickle
import queue
import signal
import sys
import threading
import time
import types
import weakref
from traceback import format_exc

from . import connection
from . import process
from . import reduction
from . import util
from .context import ProcessError, get_spawning_popen

__all__ = ['BaseManager', 'SyncManager', 'BaseProxy', 'Token',
           'SharedMemoryManager']

_HAVE_SHUTDOWN_TIMEOUT = sys.version_info >= (3, 11)

# Seconds a shared object whose last proxy went away survives if that proxy
# may have a twin elsewhere still to take its reference (see above).
_GRACE = 30.0

# Bumped before every fork: a proxy made before the latest fork may have
# been inherited by a child.
_fork_epoch = [0]


def _count_fork():
    _fork_epoch[0] += 1


os.register_at_fork(before=_count_fork)

# ---------------------------------------------------------------------------
# Pickling helpers: dict views travel as lists, arrays compactly.


def reduce_array(a):
    return array.array, (a.typecode, a.tobytes())


reduction.register(array.array, reduce_array)


def rebuild_as_list(obj):
    return list, (list(obj),)


for _view in (type({}.items()), type({}.keys()), type({}.values())):
    reduction.register(_view, rebuild_as_list)
del _view

# The package's pickler without its per-call cost: ForkingPickler copies
# the dispatch table for every message, this one reads it in place.
_dispatch_table = collections.ChainMap(
    reduction.ForkingPickler._extra_reducers, copyreg.dispatch_table)


class _Pickler(pickle.Pickler):
    dispatch_table = _dispatch_table


def _fresh_dumps(obj):
    buf = io.BytesIO()
    _Pickler(buf).dump(obj)
    return buf.getbuffer()


# Each thread reuses one pickler and buffer for its messages.
_pickling = threading.local()


def _dumps(obj):
    try:
        state = _pickling.state
    except AttributeError:
        buf = io.BytesIO()
        state = _pickling.state = [buf, _Pickler(buf), False]
    buf, pickler, busy = state
    if busy:
        # Called again while pickling (a __reduce__ that uses a proxy).
        return _fresh_dumps(obj)
    state[2] = True
    try:
        pickler.dump(obj)
        return buf.getvalue()
    finally:
        # The memo refers to what was pickled: let it go now.
        pickler.clear_memo()
        buf.seek(0)
        buf.truncate()
        state[2] = False


_loads = pickle.loads

# ---------------------------------------------------------------------------
# Tokens, errors and the request helper.


class Token:
    """Names one shared object: its type id, its manager's address and its
    id inside that manager."""

    __slots__ = ('typeid', 'address', 'id')

    def __init__(self, typeid, address, id):
        self.typeid = typeid
        self.address = address
        self.id = id

    def __getstate__(self):
        return (self.typeid, self.address, self.id)

    def __setstate__(self, state):
        self.typeid, self.address, self.id = state

    def __repr__(self):
        return '%s(typeid=%r, address=%r, id=%r)' % (
            type(self).__name__, self.typeid, self.address, self.id)


class RemoteError(Exception):
    """An error inside the manager's process, carrying its traceback."""

    def __str__(self):
        rule = '-' * 75
        return '\n%s\n%s%s' % (rule, self.args[0], rule)


# Reply kinds that carry the text of a remote failure, and how it reads.
_REMOTE_TEXT = {
    '#TRACEBACK': '%s',
    '#UNSERIALIZABLE': 'Unserializable message: %s\n',
}


def convert_to_error(kind, result):
    """Turn an error reply into the exception to raise.

    For '#ERROR' that is `result` itself: a caller that raises it drops
    its own name for it as it goes, or the frame on the traceback would
    hold the exception that holds the traceback, a cycle keeping both
    (and all the frame refers to) until the next collection."""
    if kind == '#ERROR':
        return result           # the exception object itself
    template = _REMOTE_TEXT.get(kind)
    if template is None:
        return ValueError('Unrecognized message type {!r}'.format(kind))
    if isinstance(result, str):
        return RemoteError(template % result)
    raise TypeError("Result {0!r} (kind '{1}') type is {2}, not str".format(
        result, kind, type(result)))


def _unwrap(reply):
    # A reply's value, or the exception it stands for.  The exception must
    # not stay in this frame (see convert_to_error): hence the del.
    kind, value = reply
    if kind == '#RETURN':
        return value
    del reply
    try:
        raise convert_to_error(kind, value)
    finally:
        del value


def dispatch(c, id, methodname, args=(), kwds={}):
    """Send one request over connection `c` and return its result."""
    c.send((id, methodname, args, kwds))
    return _unwrap(c.recv())


def _checked_authkey(authkey):
    if isinstance(authkey, bytes):
        return process.AuthenticationString(authkey)
    raise TypeError("Authkey {0!r} is type {1!s}, not bytes".format(
        authkey, type(authkey)))


def _new_referent(make, args, kwds):
    # A registration without a callable shares the one object it is given.
    if make is not None:
        return make(*args, **kwds)
    if kwds or len(args) != 1:
        raise ValueError(
            'Without callable, must have one non-keyword argument')
    return args[0]


def _exposure(obj, exposed, method_to_typeid):
    """The names a proxy may call on `obj`: `exposed` (default: its public
    methods) and the methods whose results are shared."""
    names = public_methods(obj) if exposed is None else list(exposed)
    if method_to_typeid is None:
        return tuple(names)
    if not isinstance(method_to_typeid, dict):
        raise TypeError('Method_to_typeid {0!r}: type {1!s}, not dict'.format(
            method_to_typeid, type(method_to_typeid)))
    return (*names, *method_to_typeid)


def all_methods(obj):
    """Names of the callable attributes of `obj`."""
    names = []
    for name in dir(obj):
        if callable(getattr(obj, name, None)):
            names.append(name)
    return names


def public_methods(obj):
    """Names of the callable attributes of `obj` not starting with '_'."""
    return [name for name in all_methods(obj) if name[0] != '_']


class State:
    """Where a manager is in its life."""
    __slots__ = ['value']
    INITIAL, STARTED, SHUTDOWN = range(3)


def _new_state(value):
    state = State()
    state.value = value
    return state


# ---------------------------------------------------------------------------
# Per-thread connections to a manager.


def _thread_state(address):
    """Return (tls, idset) for `address`, shared by every proxy and manager
    of this process that talks to it."""
    entry = BaseProxy._address_to_local.get(address)
    if entry is None:
        with BaseProxy._mutex:
            entry = BaseProxy._address_to_local.get(address)
            if entry is None:
                entry = (util.ForkAwareLocal(), ProcessLocalSet())
                BaseProxy._address_to_local[address] = entry
    return entry


def _open_connection(tls, address, authkey, Client):
    """Connect this thread to the manager at `address` and return the
    connection, now served by a thread of its own in the server."""
    name = process.current_process().name
    tname = threading.current_thread().name
    if tname != 'MainThread':
        name += '|' + tname
    conn = Client(address, authkey=authkey)
    try:
        dispatch(conn, None, 'accept_connection', (name,))
    except BaseException:
        conn.close()
        raise
    tls.connection = conn
    return conn


def _drop_connection(tls, conn):
    # After a failed exchange the stream's state is unknown (a reply may
    # still be on its way): never reuse it.
    if isinstance(conn, _LocalConnection):
        return
    if getattr(tls, 'connection', None) is conn:
        del tls.connection
    try:
        conn.close()
    except Exception:
        pass


def _call_server(address, authkey, Client, methodname, args=(), kwds={}):
    """Call one of the server's own methods over this thread's connection."""
    tls = _thread_state(address)[0]
    conn = getattr(tls, 'connection', None) or _open_connection(
        tls, address, authkey, Client)
    # No local holds the reply: an error in it must not keep this frame.
    return _unwrap(_exchange(tls, conn, (None, methodname, args, kwds)))


def _exchange(tls, conn, request):
    # One request and its reply; a connection that failed is dropped.
    try:
        conn.send(request)
        return conn.recv()
    except BaseException:
        _drop_connection(tls, conn)
        raise


def _asks_shutdown(request):
    return (isinstance(request, (tuple, list)) and len(request) == 4
            and request[0] is None and request[1] == 'shutdown')


class _LocalConnection:
    """Stands in for a socket inside the server process: a request is served
    at once in the calling thread.  Requests and replies still go through
    pickle, so callers see copies, exactly as over a real connection."""

    def __init__(self, server):
        self._server = server
        self._replies = threading.local()

    def send_bytes(self, buf):
        reply = self._server._serve_one(self, _loads(buf))
        if reply is not None:
            try:
                data = _dumps(reply)
            except Exception:
                data = _dumps(('#UNSERIALIZABLE', format_exc()))
            self._replies.value = data

    def recv_bytes(self):
        data = self._replies.value
        del self._replies.value
        return data

    def send(self, obj):
        self.send_bytes(_dumps(obj))

    def recv(self):
        return _loads(self.recv_bytes())

    def close(self):
        pass


class _LocalTls:
    # What a thread-local slot looks like, for the server's own address.
    def __init__(self, server):
        self.connection = _LocalConnection(server)


# ---------------------------------------------------------------------------
# The server.


def _fallback(convert):
    def fallback(self, conn, ident, obj):
        return convert(obj)
    return fallback


class Server:
    """Owns the shared objects and serves the connections of clients, one
    thread per connection."""

    public = ['shutdown', 'create', 'accept_connection', 'get_methods',
              'debug_info', 'number_of_objects', 'dummy', 'incref',
              'decref', 'lend', 'claim']

    def __init__(self, registry, address, authkey, serializer):
        self.authkey = _checked_authkey(authkey)
        self.registry = registry
        self._serializer = serializer
        # ident -> (referent, exposed names, method_to_typeid) / its count
        self.id_to_obj, self.id_to_refcount = {}, {}
        self.id_to_local_proxy_obj = {}
        # ident -> monotonic deadline: released objects in their grace period.
        self._dying = {}
        # lend() key -> ident, until the receiver claims it.
        self.loans, self._loan_counter = {}, itertools.count(1)
        self.mutex, self.stop_event = threading.Lock(), threading.Event()
        # Proxies in this process that hold references to our objects (a
        # list inside a managed dict): the only way cycles can form.
        self._local_proxies = weakref.WeakSet()
        self._collect_lock = threading.Lock()
        self._decrefs = 0
        # A deep backlog: many clients may connect at the same moment.
        self.listener = _listener_client(serializer)[0](address=address,
                                                         backlog=128)
        self.address = self.listener.address

    # -- running ---------------------------------------------------------

    def serve_forever(self):
        """Serve until a client asks for shutdown, then exit the process."""
        me = process.current_process()
        me._manager_server = self
        # Proxies to our own objects, made in this process, call us directly
        # (but not in a child forked from here: it holds a mere copy).
        BaseProxy._address_to_local[self.address] = (
            _LocalTls(self), ProcessLocalSet())
        util.register_after_fork(self, Server._forget_in_child)
        try:
            accepter = threading.Thread(target=self.accepter, daemon=True)
            accepter.start()
            try:
                interval = 5.0
                while not self.stop_event.wait(self._next_wakeup(interval)):
                    self._expire()
                    if self._decrefs:
                        took = self._collect_cycles()[0]
                        # Never spend more than a few percent of the time.
                        interval = max(5.0, 30 * took)
            except (KeyboardInterrupt, SystemExit):
                pass
        finally:
            try:
                self.listener.close()
            except Exception:
                pass
            sys.exit(0)

    def _forget_in_child(self):
        entry = BaseProxy._address_to_local.get(self.address)
        if entry is not None and type(entry[0]) is _LocalTls:
            del BaseProxy._address_to_local[self.address]
        me = process.current_process()
        if getattr(me, '_manager_server', None) is self:
            del me._manager_server

    def accepter(self):
        while not self.stop_event.is_set():
            try:
                c = self.listener.accept()
            except OSError as e:
                if self.stop_event.is_set() or e.errno in (errno.EBADF,
                                                           errno.EINVAL):
                    return          # the listener was closed
                # Out of fds, or a client that left before we took it.
                time.sleep(0.01)
                continue
            t = threading.Thread(target=self.handle_request, args=(c,),
                                 daemon=True)
            t.start()

    def handle_request(self, conn):
        """Authenticate a new connection, then serve its first request (and,
        after 'accept_connection', all the others)."""
        try:
            connection.deliver_challenge(conn, self.authkey)
            connection.answer_challenge(conn, self.authkey)
        except Exception as e:
            # A wrong key or a client that went away: drop only this one.
            util.debug('manager: rejected a connection: %r', e)
            conn.close()
            return
        self._handle_request(conn)

    def _handle_request(self, conn):
        # A new connection's one request is for the server itself; after
        # a successful 'accept_connection' the connection stays, served by
        # this thread.
        try:
            methodname, reply = self._control_request(conn, conn.recv())
        except (EOFError, OSError):
            conn.close()
            return
        except Exception:
            methodname, reply = None, ('#TRACEBACK', format_exc())
        try:
            conn.send(reply)
        except Exception:
            methodname = None
        else:
            if reply[0] == '#RETURN' and methodname == 'accept_connection':
                self.serve_client(conn)     # closes it when done
                return
        if methodname == 'shutdown':
            self.stop_event.set()
        conn.close()

    def _control_request(self, conn, request):
        # (the method's name or None, the reply)
        try:
            _, methodname, args, kwds = request
        except Exception:
            return None, ('#TRACEBACK', 'malformed request %r\n' % (request,))
        return methodname, self._control(conn, methodname, args, kwds)

    def _control(self, conn, methodname, args, kwds):
        # One of the server's own methods, as a reply.
        if methodname not in self.public:
            return ('#TRACEBACK',
                    'manager has no method %r (known: %s)\n'
                    % (methodname, ', '.join(self.public)))
        try:
            return ('#RETURN', getattr(self, methodname)(conn, *args, **kwds))
        except Exception:
            return ('#TRACEBACK', format_exc())

    def serve_client(self, conn):
        """Serve requests on `conn` until the client goes away."""
        if self._serializer == 'pickle':
            recv_bytes = conn.recv_bytes
            send_bytes = conn.send_bytes

            def recv():
                return _loads(recv_bytes())

            def send(obj):
                send_bytes(_dumps(obj))
        else:
            recv = conn.recv
            send = conn.send
        id_to_obj = self.id_to_obj
        while True:
            try:
                request = recv()
            except (EOFError, OSError):
                break
            except Exception:
                # An undecodable request: say so and carry on.
                request = (None, None, (), {})
                reply = ('#TRACEBACK', format_exc())
            else:
                # The common case (a method of a shared object) inline.
                try:
                    ident, methodname, args, kwds = request
                    obj, exposed, gettypeid = id_to_obj[ident]
                    function = (getattr(obj, methodname)
                                if methodname in exposed else None)
                except Exception:
                    function = None
                if function is None:
                    # Anything else (the server's own methods, '#DECREF',
                    # fallbacks, errors), outside the except clause so that
                    # tracebacks do not show the fast path's miss.  Drop
                    # our hold on the object first: this may be its DECREF.
                    obj = None
                    reply = self._serve_one(conn, request)
                    if reply is None:
                        request = None
                        continue
                else:
                    typeid = gettypeid and gettypeid.get(methodname)
                    try:
                        res = function(*args, **kwds)
                        # (_proxy_reply reports its own failures.)
                        reply = (self._proxy_reply(conn, typeid, res)
                                 if typeid else ('#RETURN', res))
                    except Exception as e:
                        reply = ('#ERROR', e)
            try:
                send(reply)
            except OSError:
                break
            except Exception:
                # The result could not be pickled: tell the client.
                try:
                    send(('#UNSERIALIZABLE', format_exc()))
                except Exception:
                    break
            if reply[0] == '#RETURN' and _asks_shutdown(request):
                self.stop_event.set()
            # Hold nothing between requests: a freed object must really go.
            request = reply = obj = function = res = args = kwds = None
        conn.close()

    def _serve_one(self, conn, request):
        """Serve one request and return its reply (None for '#DECREF')."""
        try:
            ident, methodname, args, kwds = request
        except Exception:
            return ('#TRACEBACK', 'malformed request %r\n' % (request,))
        if methodname == '#DECREF' or methodname == '#DECREF_LATER':
            try:
                self._release(ident, methodname == '#DECREF_LATER')
            except Exception as e:
                util.debug('manager: decref of %r failed: %r', ident, e)
            return None
        if ident is None:
            reply = self._control(conn, methodname, args, kwds)
            if methodname == 'shutdown' and isinstance(conn,
                                                        _LocalConnection):
                self.stop_event.set()
            return reply
        try:
            obj, exposed, gettypeid = self.id_to_obj[ident]
        except (KeyError, TypeError):
            return ('#TRACEBACK',
                    'no shared object with id %r: it was freed when its '
                    'last proxy went away\n' % (ident,))
        if methodname not in exposed:
            fallback = self.fallback_mapping.get(methodname)
            if fallback is None:
                return ('#TRACEBACK',
                        'method %r of %r object is not in exposed=%r\n'
                        % (methodname, type(obj).__name__,
                           tuple(sorted(exposed))))
            try:
                return ('#RETURN', fallback(self, conn, ident, obj))
            except Exception:
                return ('#TRACEBACK', format_exc())
        try:
            res = getattr(obj, methodname)(*args, **kwds)
        except Exception as e:
            return ('#ERROR', e)
        typeid = gettypeid and gettypeid.get(methodname)
        if typeid:
            return self._proxy_reply(conn, typeid, res)
        return ('#RETURN', res)

    def _proxy_reply(self, conn, typeid, res):
        # A method whose result is shared rather than copied.
        try:
            rident, rexposed = self.create(conn, typeid, res)
        except Exception:
            return ('#TRACEBACK', format_exc())
        return ('#PROXY', (rexposed, Token(typeid, self.address, rident)))

    # Served for every shared object, whether it exposes them or not.
    fallback_getvalue = _fallback(lambda obj: obj)
    fallback_str = _fallback(str)
    fallback_repr = _fallback(repr)
    fallback_mapping = {'#GETVALUE': fallback_getvalue,
                        '__str__': fallback_str, '__repr__': fallback_repr}

    # -- the server's own methods (the first argument is the connection) --

    def dummy(self, c):
        pass

    def accept_connection(self, c, name):
        threading.current_thread().name = name

    def shutdown(self, c):
        # The caller replies, then stops the server.
        util.debug('manager received shutdown message')

    def create(self, c, typeid, /, *args, **kwds):
        """Make a new shared object of `typeid`; return (ident, exposed),
        with one reference held for the caller."""
        entry = self.registry.get(typeid)
        if entry is None:
            raise KeyError('typeid %r is not registered with this manager'
                           % (typeid,))
        make, exposed, method_to_typeid = entry[:3]
        obj = _new_referent(make, args, kwds)
        exposed = _exposure(obj, exposed, method_to_typeid)
        ident = '%x' % id(obj)
        with self.mutex:
            if ident in self.id_to_refcount and \
                    self.id_to_obj[ident][0] is obj:
                # The same object handed out again (a callable returning a
                # global): one more reference.
                self.id_to_refcount[ident] += 1
            else:
                self._dying.pop(ident, None)
                self.id_to_refcount[ident] = 1
            self.id_to_obj[ident] = (obj, frozenset(exposed),
                                     method_to_typeid)
        return ident, exposed

    def get_methods(self, c, token):
        return tuple(sorted(self.id_to_obj[token.id][1]))

    def _add_ref(self, ident):
        # With the mutex held.  An object in its grace period comes back.
        try:
            self.id_to_refcount[ident] += 1
        except KeyError:
            if self._dying.pop(ident, None) is None:
                raise KeyError('no shared object with id %r (already freed)'
                               % (ident,)) from None
            self.id_to_refcount[ident] = 1

    def incref(self, c, ident):
        with self.mutex:
            self._add_ref(ident)

    def decref(self, c, ident):
        self._release(ident, False)

    def _release(self, ident, later):
        """Drop one reference; at zero free the object, or with `later`
        keep it for the grace period."""
        with self.mutex:
            count = self.id_to_refcount.get(ident)
            if count is None:
                return
            if count > 1:
                self.id_to_refcount[ident] = count - 1
                return
            del self.id_to_refcount[ident]
            self._decrefs += 1
            if later:
                self._dying[ident] = time.monotonic() + _GRACE
                return
            entry = self.id_to_obj.pop(ident, None)
            self.id_to_local_proxy_obj.pop(ident, None)
        # Dropped outside the lock: freeing it may release proxies it holds,
        # which come back here.
        del entry

    def _next_wakeup(self, interval):
        if not self._dying:
            return interval
        soonest = min(self._dying.values()) - time.monotonic()
        return min(interval, max(soonest, 0.05))

    def _expire(self):
        """Free the released objects whose grace period is over."""
        now = time.monotonic()
        dropped = []
        with self.mutex:
            for ident, deadline in list(self._dying.items()):
                if deadline <= now:
                    del self._dying[ident]
                    dropped.append(self.id_to_obj.pop(ident, None))
                    self.id_to_local_proxy_obj.pop(ident, None)
        del dropped

    def lend(self, c, ident):
        """Take a reference for whoever unpickles a proxy being pickled
        now; return the key under which they claim it."""
        with self.mutex:
            self._add_ref(ident)
            key = next(self._loan_counter)
            self.loans[key] = ident
        return key

    def claim(self, c, ident, key):
        """Adopt a lent reference, or take a new one if it was claimed."""
        with self.mutex:
            if self.loans.get(key) == ident:
                del self.loans[key]
                return
            self._add_ref(ident)

    # -- cycles ----------------------------------------------------------

    # Not looked into when searching a shared object for the proxies it
    # holds: they lead out of the data into the program.
    _opaque = (type, types.ModuleType, types.FunctionType,
               types.BuiltinFunctionType, types.MethodType, types.CodeType,
               types.FrameType, weakref.ref, threading.Thread)

    def _proxies_inside(self, obj, local_ids):
        """The idents that proxies held inside `obj` refer to."""
        found = []
        seen = {id(obj)}
        stack = [obj]
        opaque = self._opaque
        while stack:
            for ref in gc.get_referents(stack.pop()):
                if id(ref) in seen:
                    continue
                seen.add(id(ref))
                if isinstance(ref, BaseProxy):
                    if id(ref) in local_ids:
                        found.append((id(ref), ref._id))
                elif gc.is_tracked(ref) and not isinstance(ref, opaque):
                    stack.append(ref)
        return found

    def _collect_cycles(self):
        """Free the shared objects that only other unreachable shared
        objects refer to (a list appended to itself, two dicts holding each
        other), as a tracing collector would.  Returns (seconds taken, the
        number of objects alive without counting those only objects in
        their grace period hold), or (0.0, None) when there was no pass."""
        if not self._local_proxies or not self._collect_lock.acquire(False):
            return 0.0, None
        start = time.monotonic()
        live = None
        try:
            self._decrefs = 0
            local_ids = {id(p) for p in list(self._local_proxies)}
            if not local_ids:
                return 0.0, None
            with self.mutex:
                objects = {i: e[0] for i, e in self.id_to_obj.items()}
                counts = dict(self.id_to_refcount)
            edges = {}
            holders = {}
            for ident, obj in objects.items():
                inside = self._proxies_inside(obj, local_ids)
                edges[ident] = [target for _, target in inside]
                holders.update(inside)
            # References held from inside shared objects, one per proxy.
            internal = collections.Counter(holders.values())
            dying = set(self._dying)
            reachable = [i for i in objects
                         if counts.get(i, 0) > internal.get(i, 0)
                         or i in dying]
            marked = set(reachable)
            while reachable:
                for target in edges.get(reachable.pop(), ()):
                    if target not in marked:
                        marked.add(target)
                        reachable.append(target)
            garbage = [i for i in objects if i not in marked]
            # Again from the roots that are not in their grace period.
            roots = [i for i in objects if i not in dying
                     and counts.get(i, 0) > internal.get(i, 0)]
            held = set(roots)
            while roots:
                for target in edges.get(roots.pop(), ()):
                    if target not in held and target not in dying:
                        held.add(target)
                        roots.append(target)
            live = len(held)
            dropped = []
            with self.mutex:
                # Anything that changed meanwhile was in use: skip this round.
                if all(self.id_to_refcount.get(i) == counts.get(i)
                       and i not in self._dying for i in garbage):
                    for i in garbage:
                        del self.id_to_refcount[i]
                        dropped.append(self.id_to_obj.pop(i))
                        self.id_to_local_proxy_obj.pop(i, None)
            if dropped:
                util.debug('manager freed %d shared objects in cycles',
                           len(dropped))
            del objects, dropped, holders
        finally:
            self._collect_lock.release()
        return time.monotonic() - start, live

    def number_of_objects(self, c):
        live = self._collect_cycles()[1]
        return len(self.id_to_refcount) if live is None else live

    def debug_info(self, c):
        self._collect_cycles()
        with self.mutex:
            items = sorted(self.id_to_refcount.items())
            lines = []
            for ident, count in items:
                obj = self.id_to_obj[ident][0]
                lines.append('  %s:       refcount=%s\n    %s'
                             % (ident, count, str(obj)[:75]))
            now = time.monotonic()
            for ident, deadline in sorted(self._dying.items()):
                obj = self.id_to_obj[ident][0]
                lines.append('  %s:       released, freed in %.1fs\n    %s'
                             % (ident, deadline - now, str(obj)[:75]))
        return '\n'.join(lines)


# ---------------------------------------------------------------------------
# Managers.


def _ask_to_shut_down(address, authkey, Client):
    # Over a connection of its own: this thread's may be mid-call.  A
    # server that cannot be reached is dealt with by the caller.
    try:
        with contextlib.closing(Client(address, authkey=authkey)) as conn:
            dispatch(conn, None, 'shutdown')
    except Exception:
        pass


def _report_start_failure(writer, exc):
    # The exception itself if it pickles, else a description of it.
    try:
        writer.send(('#ERROR', exc))
    except Exception:
        writer.send(('#ERROR', ProcessError('manager failed to start: %r'
                                            % (exc,))))


def _first_report(reader, server_process):
    """The address the new server listens on, once it says so; its error
    if it failed to start."""
    try:
        kind, value = reader.recv()
    except EOFError:
        server_process.join()
        raise ProcessError('manager process exited (code %s) before serving'
                           % server_process.exitcode) from None
    if kind == '#RETURN':
        return value
    server_process.join()
    raise value


def _listener_client(serializer):
    try:
        return listener_client[serializer]
    except KeyError:
        raise ValueError('unknown serializer %r: use one of %s'
                         % (serializer, sorted(listener_client))) from None


class BaseManager:
    """Starts (or connects to) a manager server and makes proxies to the
    objects it holds; subclasses register what it can make."""

    _registry = {}
    _Server = Server

    if _HAVE_SHUTDOWN_TIMEOUT:
        def __init__(self, address=None, authkey=None, serializer='pickle',
                     ctx=None, *, shutdown_timeout=1.0):
            self._setup(address, authkey, serializer, ctx, shutdown_timeout)
    else:
        def __init__(self, address=None, authkey=None, serializer='pickle',
                     ctx=None):
            self._setup(address, authkey, serializer, ctx, 1.0)

    def _setup(self, address, authkey, serializer, ctx, shutdown_timeout):
        self._Listener, self._Client = _listener_client(serializer)
        self._serializer = serializer
        self._authkey = process.AuthenticationString(
            process.current_process().authkey if authkey is None else authkey)
        # Given now; start() replaces it with where the server listens.
        self._address = address
        self._process = None
        self._shutdown_timeout = shutdown_timeout
        if ctx is None:
            from . import get_context
            ctx = get_context()
        self._ctx = ctx
        # Shared with the shutdown finalizer and the proxies.
        self._state = _new_state(State.INITIAL)

    address = property(lambda self: self._address,
                       doc='Where the server listens (once started).')

    # Why a manager that is not in its initial state cannot start.
    _NOT_INITIAL = {State.STARTED: "Already started server",
                    State.SHUTDOWN: "Manager has shut down"}

    def _check_initial(self):
        state = self._state.value
        if state != State.INITIAL:
            raise ProcessError(self._NOT_INITIAL.get(
                state, "Unknown state {!r}".format(state)))

    def get_server(self):
        """Return a Server for this manager, to run with serve_forever()."""
        self._check_initial()
        return self._Server(self._registry, self._address, self._authkey,
                            self._serializer)

    def connect(self):
        """Connect to a manager server already running at `address`."""
        # A fresh connection, so that a wrong authkey is seen now.
        with contextlib.closing(self._Client(self._address,
                                             authkey=self._authkey)) as conn:
            dispatch(conn, None, 'dummy')
        self._state.value = State.STARTED

    def start(self, initializer=None, initargs=()):
        """Start a server process for this manager."""
        self._check_initial()
        if initializer is not None and not callable(initializer):
            raise TypeError('initializer must be a callable')
        # The child reports its address, or why it could not serve, here.
        reader, writer = connection.Pipe(duplex=False)
        with reader:
            with writer:
                server_process = self._launch_server(writer, initializer,
                                                     initargs)
            self._address = _first_report(reader, server_process)
        self._state.value = State.STARTED
        self.shutdown = util.Finalize(
            self, type(self)._finalize_manager, exitpriority=0,
            args=(server_process, self._address, self._authkey, self._state,
                  self._Client, self._shutdown_timeout))

    def _launch_server(self, writer, initializer, initargs):
        cls = type(self)
        self._process = child = self._ctx.Process(
            target=cls._run_server,
            args=(self._registry, self._address, self._authkey,
                  self._serializer, writer, initializer, initargs))
        child.name = '%s-%s' % (cls.__name__,
                                ':'.join(map(str, child._identity)))
        child.start()
        return child

    @classmethod
    def _run_server(cls, registry, address, authkey, serializer, writer,
                    initializer=None, initargs=()):
        # Ctrl-C in the terminal is for the parent: it shuts us down.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # start() waits on the other end for one report, then EOF.
        with writer:
            try:
                if initializer is not None:
                    initializer(*initargs)
                server = cls._Server(registry, address, authkey, serializer)
            except Exception as exc:
                _report_start_failure(writer, exc)
                raise
            writer.send(('#RETURN', server.address))
        util.info('manager serving at %r', server.address)
        server.serve_forever()

    def _create(self, typeid, /, *args, **kwds):
        """Create a shared object; return (token, exposed)."""
        ident, exposed = _call_server(self._address, self._authkey,
                                      self._Client, 'create',
                                      (typeid,) + args, kwds)
        return Token(typeid, self._address, ident), exposed

    def join(self, timeout=None):
        """Wait for the manager process to end."""
        server_process = self._process
        if server_process is None:
            return
        server_process.join(timeout)
        if server_process.exitcode is not None:
            self._process = None

    def _debug_info(self):
        return _call_server(self._address, self._authkey, self._Client,
                            'debug_info')

    def _number_of_objects(self):
        return _call_server(self._address, self._authkey, self._Client,
                            'number_of_objects')

    def __enter__(self):
        if self._state.value == State.INITIAL:
            self.start()
        state = self._state.value
        if state == State.STARTED:
            return self
        raise ProcessError("Manager has shut down" if state != State.INITIAL
                           else "Unable to start server")

    def __exit__(self, exc_type, exc_val, exc_tb):
        shutdown = getattr(self, 'shutdown', None)
        if shutdown is not None:
            shutdown()

    @staticmethod
    def _finalize_manager(process, address, authkey, state, _Client,
                          shutdown_timeout):
        """Stop the manager process: ask, then terminate, then kill."""
        def ask():
            _ask_to_shut_down(address, authkey, _Client)
        # Each step only if the one before did not end it in time.
        escalation = (
            ('sending shutdown message to manager', ask, shutdown_timeout),
            ('manager still alive', process.terminate, shutdown_timeout),
            ('manager still alive after terminate', process.kill, None),
        )
        for note, step, patience in escalation:
            if not process.is_alive():
                break
            util.info(note)
            step()
            process.join(patience)
        state.value = State.SHUTDOWN
        entry = BaseProxy._address_to_local.pop(address, None)
        if entry is not None:
            conn = getattr(entry[0], 'connection', None)
            if conn is not None:
                _drop_connection(entry[0], conn)

    @classmethod
    def register(cls, typeid, callable=None, proxytype=None, exposed=None,
                 method_to_typeid=None, create_method=True):
        """Register a type or callable with the manager class."""
        proxytype = AutoProxy if proxytype is None else proxytype
        # What is not given comes from the proxy type's declarations.
        entry = (callable,
                 exposed or getattr(proxytype, '_exposed_', None),
                 _checked_typeid_map(method_to_typeid or getattr(
                     proxytype, '_method_to_typeid_', None)),
                 proxytype)
        # A subclass registers into a copy of its own, not its base's.
        own = vars(cls).get('_registry')
        if own is None:
            own = cls._registry = dict(cls._registry)
        own[typeid] = entry
        _proxytypes[typeid] = proxytype
        if create_method:
            setattr(cls, typeid, _creation_method(cls, typeid, proxytype))


def _checked_typeid_map(method_to_typeid):
    for key, value in list((method_to_typeid or {}).items()):
        if not (isinstance(key, str) and isinstance(value, str)):
            raise TypeError('method_to_typeid must map str to str, '
                            'not %r: %r' % (key, value))
    return method_to_typeid


def _creation_method(cls, typeid, proxytype):
    """The manager method that makes a shared `typeid` and returns a proxy
    owning the reference the server took for it."""
    def create(self, /, *args, **kwds):
        util.debug('requesting creation of a shared %r object', typeid)
        token, exposed = self._create(typeid, *args, **kwds)
        return _adopt_proxy(proxytype, token, self._serializer, self,
                            self._authkey, exposed)
    create.__name__ = typeid
    create.__qualname__ = '%s.%s' % (cls.__qualname__, typeid)
    return create


# typeid -> proxytype of the latest registration, for proxies that must
# build a proxy for a method's result without knowing their manager.
_proxytypes = {}

# ---------------------------------------------------------------------------
# Proxies.


class ProcessLocalSet(set):
    """A set emptied in a forked child, and unpickled empty: what it holds
    belongs to one process."""

    def __init__(self):
        util.register_after_fork(self, set.clear)

    def __reduce__(self):
        return self.__class__, ()


def _proxy_authkey(token, manager, authkey):
    """The key a proxy authenticates with: the one given, its manager's,
    else this process's own."""
    if authkey is not None:
        return process.AuthenticationString(authkey)
    if manager is not None:
        return manager._authkey
    me = process.current_process()
    server = getattr(me, '_manager_server', None)
    if server is not None and server.address == token.address:
        # Unpickled by our own server: its key, not its process's.
        return server.authkey
    return me.authkey


def _adopts(proxytype):
    # Proxy types whose constructor takes incref=False: they may adopt the
    # reference the server already took for us.
    return proxytype is AutoProxy or (
        isinstance(proxytype, type) and issubclass(proxytype, BaseProxy)
        and proxytype.__init__ is BaseProxy.__init__)


def _adopt_proxy(proxytype, token, serializer, manager, authkey, exposed):
    """Make a proxy owning the reference the server holds for the caller."""
    if _adopts(proxytype):
        proxy = proxytype(token, serializer, manager=manager,
                          authkey=authkey, exposed=exposed, incref=False)
        proxy._hold()
        return proxy
    # A custom constructor: let it take its own reference, drop ours.
    proxy = proxytype(token, serializer, manager=manager, authkey=authkey,
                      exposed=exposed)
    _call_server(token.address, proxy._authkey, proxy._Client, 'decref',
                 (token.id,))
    return proxy


class BaseProxy:
    """A handle on an object held by a manager; subclasses decide which
    methods reach it (see _callmethod)."""

    _address_to_local = {}
    _mutex = util.ForkAwareThreadLock()

    def __init__(self, token, serializer, manager=None, authkey=None,
                 exposed=None, incref=True, manager_owned=False):
        self._Client = _listener_client(serializer)[1]
        self._serializer = serializer
        self._bytes_path = serializer == 'pickle'
        self._token, self._id = token, token.id
        self._manager = manager
        self._authkey = _proxy_authkey(token, manager, authkey)
        # Set when the manager itself keeps the reference (never counted).
        self._owned_by_manager = manager_owned
        self._tls, self._idset = _thread_state(token.address)
        util.register_after_fork(self, BaseProxy._after_fork)
        if incref:
            self._incref()

    def _callmethod(self, methodname, args=(), kwds={}):
        """Call `methodname` of the referent with args and kwds in the
        manager's process and return the result (a copy, or a proxy)."""
        tls = self._tls
        conn = getattr(tls, 'connection', None) or self._connect()
        try:
            if self._bytes_path:
                conn.send_bytes(_dumps((self._id, methodname, args, kwds)))
                kind, result = _loads(conn.recv_bytes())
            else:
                conn.send((self._id, methodname, args, kwds))
                kind, result = conn.recv()
        except BaseException:
            _drop_connection(tls, conn)
            raise
        if kind == '#RETURN':
            return result
        if kind == '#PROXY':
            return self._proxy_for_result(*result)
        try:
            raise convert_to_error(kind, result)
        finally:
            del result  # no cycle through this frame: see convert_to_error

    def _proxy_for_result(self, exposed, token):
        # A method whose result stays in the server: share it.  The server
        # may know itself by another address than the one we reach it at.
        token.address = self._token.address
        return _adopt_proxy(self._proxytype_for(token.typeid), token,
                            self._serializer, self._manager, self._authkey,
                            exposed)

    def _connect(self):
        # This thread's first call to the manager.
        util.debug('making connection to manager')
        return _open_connection(self._tls, self._token.address,
                                self._authkey, self._Client)

    def _proxytype_for(self, typeid):
        if self._manager is not None:
            entry = self._manager._registry.get(typeid)
            if entry is not None:
                return entry[-1]
        server = getattr(process.current_process(), '_manager_server', None)
        if server is not None and typeid in server.registry:
            return server.registry[typeid][-1]
        return _proxytypes.get(typeid, AutoProxy)

    def _getvalue(self):
        """Return a copy of the referent."""
        return self._callmethod('#GETVALUE')

    def _hold(self):
        # Own one reference: give it back when this proxy dies or at exit.
        self._idset.add(self._id)
        if type(self._tls) is _LocalTls:
            self._tls.connection._server._local_proxies.add(self)
        state = self._manager and self._manager._state
        # The fork epoch now; None once pickled (see _decref).
        self._sharing = [_fork_epoch[0]]
        self._close = util.Finalize(
            self, BaseProxy._decref,
            args=(self._token, self._authkey, state, self._tls, self._idset,
                  self._Client, self._sharing),
            exitpriority=10)

    def _incref(self):
        if not self._owned_by_manager:
            _call_server(self._token.address, self._authkey, self._Client,
                         'incref', (self._id,))
            util.debug('INCREF %r', self._id)
            self._hold()
        else:
            util.debug('owned_by_manager skipped INCREF of %r', self._id)

    def _claim(self, key):
        _call_server(self._token.address, self._authkey, self._Client,
                     'claim', (self._id, key))
        self._hold()

    @staticmethod
    def _decref(token, authkey, state, tls, idset, _Client, sharing=None):
        idset.discard(token.id)
        if state is not None and state.value != State.STARTED:
            util.debug('manager gone: not sending DECREF of %r', token.id)
            return
        util.debug('DECREF %r', token.id)
        conn = None
        try:
            conn = getattr(tls, 'connection', None)
            if conn is None:
                conn = _open_connection(tls, token.address, authkey, _Client)
            # A twin made by pickling or fork may not hold its reference
            # yet: then the server keeps the object a while for it.
            later = sharing is not None and sharing[0] != _fork_epoch[0]
            # No reply: safe even in the middle of a call on this thread.
            conn.send((token.id, '#DECREF_LATER' if later else '#DECREF',
                       (), {}))
        except Exception as e:
            util.debug('... decref failed %s', e)
            if conn is not None:
                _drop_connection(tls, conn)

    def _after_fork(self):
        # A forked child holds its own reference to what it inherited, over
        # its own connections; the manager may be gone by now.
        try:
            self._tls, self._idset = _thread_state(self._token.address)
            self._incref()
        except Exception as exc:
            util.info('incref failed: %s', exc)

    def __reduce__(self):
        # An AutoProxy is rebuilt by AutoProxy() from its exposed names; a
        # spawned child gets the key, a mere pickle never does.
        auto = getattr(self, '_isauto', False)
        kwds = {'exposed': self._exposed_} if auto else {}
        if get_spawning_popen() is not None:
            kwds['authkey'] = self._authkey
        func = AutoProxy if auto else type(self)
        server = getattr(process.current_process(), '_manager_server', None)
        if (server is not None and server.address == self._token.address
                and not self._owned_by_manager):
            # In the server: lend the receiver a reference, at no cost.
            kwds['_loan'] = server.lend(None, self._id)
        else:
            sharing = getattr(self, '_sharing', None)
            if sharing is not None:
                sharing[0] = None
        return (RebuildProxy, (func, self._token, self._serializer, kwds))

    def __deepcopy__(self, memo):
        return self._getvalue()

    def __repr__(self):
        return '<%s object, typeid %r at %#x>' % (
            type(self).__name__, self._token.typeid, id(self))

    def __str__(self):
        """Return the representation of the referent."""
        try:
            text = self._callmethod('__repr__')
        except Exception:
            # Our own repr, marked: the referent could not be reached.
            text = "%s; '__str__()' failed>" % repr(self)[:-1]
        return text


def RebuildProxy(func, token, serializer, kwds):
    """Make a proxy from its pickled form (see BaseProxy.__reduce__)."""
    loan = kwds.pop('_loan', None)
    if loan is not None:
        if _adopts(func):
            kwds['incref'] = False
            proxy = func(token, serializer, **kwds)
            proxy._claim(loan)
            return proxy
        proxy = func(token, serializer, **kwds)
        authkey = proxy._authkey
        _call_server(token.address, authkey, proxy._Client, 'claim',
                     (token.id, loan))
        _call_server(token.address, authkey, proxy._Client, 'decref',
                     (token.id,))
        return proxy
    # Every receiver takes its own reference, a child being spawned too:
    # its parent may drop its proxy as soon as the child is started.
    kwds.setdefault('incref', True)
    return func(token, serializer, **kwds)


def MakeProxyType(name, exposed, _cache={}):
    """Return a BaseProxy subclass whose methods `exposed` forward to the
    referent (one class per name and method list)."""
    key = (name, tuple(exposed))
    made = _cache.get(key)
    if made is None:
        made = _cache[key] = _proxy_type(*key)
    return made


def _forwarder(name):
    def method(self, /, *args, **kwds):
        return self._callmethod(name, args, kwds)
    method.__name__ = name
    return method


def AutoProxy(token, serializer, manager=None, authkey=None, exposed=None,
              incref=True, manager_owned=False):
    """Return a proxy whose methods are those the server exposes."""
    if authkey is None:
        authkey = (manager._authkey if manager is not None
                   else process.current_process().authkey)
    if exposed is None:
        exposed = _call_server(token.address, authkey,
                               _listener_client(serializer)[1],
                               'get_methods', (token,))
    options = dict(manager=manager, authkey=authkey, incref=incref,
                   manager_owned=manager_owned)
    proxy = MakeProxyType('AutoProxy[%s]' % token.typeid, exposed)(
        token, serializer, **options)
    # Pickled as an AutoProxy: the receiver builds its own class.
    proxy._isauto = True
    return proxy


# ---------------------------------------------------------------------------
# Types SyncManager serves.


class Namespace:
    """An object with writable attributes, shown by its repr."""

    def __init__(self, /, **kwds):
        self.__dict__.update(kwds)

    def __repr__(self):
        shown = sorted('%s=%r' % (k, v) for k, v in self.__dict__.items()
                       if not k.startswith('_'))
        return '%s(%s)' % (type(self).__name__, ', '.join(shown))


class Value:
    """A box with a `value` attribute (the manager's Value).  `lock` is
    accepted and ignored: the manager's server is the only one to touch
    it."""

    def __init__(self, typecode, value, lock=True):
        self._typecode, self._value = typecode, value

    def __repr__(self):
        return '%s(%r, %r)' % (type(self).__name__, self._typecode,
                               self._value)

    def get(self):
        return self._value

    def set(self, value):
        self._value = value

    value = property(get, set)


def Array(typecode, sequence, lock=True):
    """The manager's Array: an array.array."""
    return array.array(typecode, sequence)


# ---------------------------------------------------------------------------
# Proxy types.


def _proxy_type(name, exposed, base=BaseProxy, attributes=(), methods=None,
                method_to_typeid=None):
    """Build a proxy class.  Each name in `exposed` becomes a method that
    runs on the referent (arguments pass through); each name in
    `attributes` a read-only property fetched from it; `methods` adds or
    overrides methods with behaviour of their own."""
    # With attributes, '__getattribute__' is how they are fetched; it must
    # not replace the proxy's own.
    skip = ('__getattribute__',) if attributes else ()
    namespace = {meth: _forwarder(meth) for meth in exposed
                 if meth not in skip}
    for attr in attributes:
        namespace[attr] = property(_attribute_getter(attr))
    namespace.update(methods or {})
    namespace['_exposed_'] = tuple(exposed)
    if method_to_typeid is not None:
        namespace['_method_to_typeid_'] = method_to_typeid
    namespace['__module__'] = __name__
    return type(name, (base,), namespace)


def _attribute_getter(attr):
    def get(self):
        return self._callmethod('__getattribute__', (attr,))
    get.__name__ = attr
    return get


def _lock_acquire(self, blocking=True, timeout=None):
    # threading's locks refuse timeout=None: send only what was given.
    if timeout is None:
        return self._callmethod('acquire', (blocking,))
    return self._callmethod('acquire', (blocking, timeout))


def _calls_without_arguments(method):
    # For the with-statement: the referent's method, whatever we are given.
    def call(self, *ignored):
        return self._callmethod(method)
    return call


def _condition_wait_for(self, predicate, timeout=None):
    """Wait until predicate() is true or `timeout` passes; return the last
    value of predicate()."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if deadline is None:
            self.wait()
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                return result
            self.wait(left)


def _return_self(self):
    return self


IteratorProxy = _proxy_type(
    'IteratorProxy', ('__next__', 'send', 'throw', 'close'),
    methods={'__iter__': _return_self})

AcquirerProxy = _proxy_type(
    'AcquirerProxy', ('acquire', 'release'),
    methods={'acquire': _lock_acquire,
             '__enter__': _calls_without_arguments('acquire'),
             '__exit__': _calls_without_arguments('release')})

ConditionProxy = _proxy_type(
    'ConditionProxy', ('acquire', 'release', 'wait', 'notify', 'notify_all'),
    base=AcquirerProxy,
    methods={'acquire': _lock_acquire, 'wait_for': _condition_wait_for})

EventProxy = _proxy_type('EventProxy', ('is_set', 'set', 'clear', 'wait'))

BarrierProxy = _proxy_type(
    'BarrierProxy', ('__getattribute__', 'wait', 'abort', 'reset'),
    attributes=('parties', 'n_waiting', 'broken'))


class NamespaceProxy(BaseProxy):
    """Attributes not starting with '_' live in the referent; the others
    are the proxy's own."""
    _exposed_ = ('__getattribute__', '__setattr__', '__delattr__')

    def _on_referent(self, meth, *args):
        return object.__getattribute__(self, '_callmethod')(meth, args)

    def __getattr__(self, key):
        if key.startswith('_'):
            return object.__getattribute__(self, key)
        return self._on_referent('__getattribute__', key)

    def __setattr__(self, key, value):
        if key.startswith('_'):
            object.__setattr__(self, key, value)
        else:
            self._on_referent('__setattr__', key, value)

    def __delattr__(self, key):
        if key.startswith('_'):
            object.__delattr__(self, key)
        else:
            self._on_referent('__delattr__', key)


def _value_get(self):
    return self._callmethod('get')


def _value_set(self, value):
    return self._callmethod('set', (value,))


ValueProxy = _proxy_type(
    'ValueProxy', ('get', 'set'),
    methods={'get': _value_get, 'set': _value_set,
             'value': property(_value_get, _value_set),
             '__class_getitem__': classmethod(types.GenericAlias)})


def _in_place(method, name):
    # `a += b` on a proxy changes the referent, and `a` stays the proxy.
    def operator(self, value):
        self._callmethod(method, (value,))
        return self
    operator.__name__ = name
    return operator


# The method lists below are the stdlib's, in its order: a pickled proxy
# type names them, so both sides must agree.
BaseListProxy = MakeProxyType('BaseListProxy', """
    __add__ __contains__ __delitem__ __getitem__ __len__ __mul__
    __reversed__ __rmul__ __setitem__ append count extend index insert
    pop remove reverse sort __imul__""".split())

# In-place operators change the referent, and the proxy stays the result.
ListProxy = _proxy_type('ListProxy', (), base=BaseListProxy,
                        methods={'__iadd__': _in_place('extend', '__iadd__'),
                                 '__imul__': _in_place('__imul__', '__imul__')})
del ListProxy._exposed_     # the base's exposed list is the one served

DictProxy = MakeProxyType('DictProxy', """
    __contains__ __delitem__ __getitem__ __iter__ __len__ __setitem__
    clear copy get items keys pop popitem setdefault update
    values""".split())
DictProxy._method_to_typeid_ = {'__iter__': 'Iterator'}

if sys.version_info >= (3, 13):
    # Subscriptable in annotations where the running stdlib's are.
    ListProxy.__class_getitem__ = classmethod(types.GenericAlias)
    DictProxy.__class_getitem__ = classmethod(types.GenericAlias)

ArrayProxy = MakeProxyType('ArrayProxy',
                           '__len__ __getitem__ __setitem__'.split())

BasePoolProxy = MakeProxyType('PoolProxy', """
    apply apply_async close imap imap_unordered join map map_async
    starmap starmap_async terminate""".split())
# The async methods' results stay in the server, as do the iterators.
BasePoolProxy._method_to_typeid_ = dict(
    [(name, 'AsyncResult') for name in
     ('apply_async', 'map_async', 'starmap_async')]
    + [(name, 'Iterator') for name in ('imap', 'imap_unordered')])


def _pool_exit(self, *exc_info):
    # As Pool's own context manager: leaving the block terminates it.
    self.terminate()


PoolProxy = _proxy_type('PoolProxy', (), base=BasePoolProxy,
                        methods={'__enter__': _return_self,
                                 '__exit__': _pool_exit})
del PoolProxy._exposed_


# ---------------------------------------------------------------------------
# SyncManager.


class SyncManager(BaseManager):
    """A manager serving queues, synchronization primitives, pools, lists,
    dicts, values, arrays and namespaces (what multiprocessing.Manager()
    returns)."""


def _Pool(*args, **kwds):
    # pool.py is imported by the server process only, on first use.
    from . import pool
    return pool.Pool(*args, **kwds)



# What SyncManager serves: typeid, the callable that makes the referent,
# and the proxy handed out (None: an AutoProxy of the exposed methods).
# Iterator and AsyncResult are only ever returned by methods.
_SYNC_TYPES = (
    ('Queue', queue.Queue, None),
    ('JoinableQueue', queue.Queue, None),
    ('Event', threading.Event, EventProxy),
    ('Lock', threading.Lock, AcquirerProxy),
    ('RLock', threading.RLock, AcquirerProxy),
    ('Semaphore', threading.Semaphore, AcquirerProxy),
    ('BoundedSemaphore', threading.BoundedSemaphore, AcquirerProxy),
    ('Condition', threading.Condition, ConditionProxy),
    ('Barrier', threading.Barrier, BarrierProxy),
    ('Pool', _Pool, PoolProxy),
    ('list', list, ListProxy),
    ('dict', dict, DictProxy),
    ('Value', Value, ValueProxy),
    ('Array', Array, ArrayProxy),
    ('Namespace', Namespace, NamespaceProxy),
)
for _typeid, _make, _proxytype in _SYNC_TYPES:
    SyncManager.register(_typeid, _make, _proxytype)
for _typeid, _proxytype in (('Iterator', IteratorProxy), ('AsyncResult', None)):
    SyncManager.register(_typeid, proxytype=_proxytype, create_method=False)
del _typeid, _make, _proxytype

# ---------------------------------------------------------------------------
# SharedMemoryManager: a manager that owns shared memory segments and
# unlinks them when it shuts down.

from . import shared_memory   # always there: the package is Linux-only

HAS_SHMEM = True


def _unlink_segment(segment_name):
    # Someone may have unlinked it already: that is what we wanted.
    with contextlib.suppress(FileNotFoundError):
        segment = shared_memory.SharedMemory(segment_name)
        segment.close()
        segment.unlink()


class _SharedMemoryTracker:
    """The names of the segments one SharedMemoryManager answers for; they
    are unlinked when it shuts down, or when the tracker goes."""

    def __init__(self, name, segment_names=()):
        self.shared_memory_context_name = name
        self.segment_names = list(segment_names)

    def __reduce__(self):
        return type(self), (self.shared_memory_context_name,
                            self.segment_names)

    def register_segment(self, segment_name):
        util.debug('register segment %r in %s', segment_name,
                   self.shared_memory_context_name)
        self.segment_names.append(segment_name)

    def destroy_segment(self, segment_name):
        """Forget and unlink one segment (already gone is fine)."""
        self.segment_names.remove(segment_name)
        _unlink_segment(segment_name)

    def unlink(self):
        for segment_name in tuple(self.segment_names):
            self.destroy_segment(segment_name)

    __del__ = unlink


class SharedMemoryServer(Server):
    """A Server that also tracks the segments made through its manager."""

    public = [*Server.public, 'track_segment', 'release_segment',
              'list_segments']

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        where = self.address
        self.shared_memory_context = _SharedMemoryTracker('shm_%s_%d' % (
            # An abstract socket's address is bytes: name it as text.
            os.fsdecode(where) if isinstance(where, bytes) else where,
            os.getpid()))

    def create(self, c, typeid, /, *args, **kwargs):
        # Registered types that ask for it get the segment tracker.
        if hasattr(self.registry[typeid][-1], '_shared_memory_proxy'):
            kwargs['shared_memory_context'] = self.shared_memory_context
        return super().create(c, typeid, *args, **kwargs)

    def shutdown(self, c):
        """Unlink every tracked segment, then stop like any server."""
        self.shared_memory_context.unlink()
        return super().shutdown(c)

    # The manager's SharedMemory() and ShareableList() report here.
    def track_segment(self, c, segment_name):
        self.shared_memory_context.register_segment(segment_name)

    def release_segment(self, c, segment_name):
        self.shared_memory_context.destroy_segment(segment_name)

    def list_segments(self, c):
        return list(self.shared_memory_context.segment_names)


class SharedMemoryManager(BaseManager):
    """A manager whose SharedMemory() and ShareableList() blocks live until
    it shuts down (then they are unlinked, whoever still has them open)."""

    _Server = SharedMemoryServer

    def __init__(self, *args, **kwargs):
        # Start the resource tracker now, so that the server process
        # shares ours: segments registered here are released there.
        from . import resource_tracker
        resource_tracker.ensure_running()
        BaseManager.__init__(self, *args, **kwargs)
        util.debug('%s created by pid %d', type(self).__name__, os.getpid())

    def get_server(self):
        """Return a SharedMemoryServer for this manager."""
        self._check_initial()
        return self._Server(self._registry, self._address, self._authkey,
                            self._serializer)

    def _track(self, segment_name):
        if self._state.value != State.STARTED:
            raise ValueError('%s is not started: call start() or connect() '
                             'first' % type(self).__name__)
        return _call_server(self._address, self._authkey, self._Client,
                            'track_segment', (segment_name,))

    def SharedMemory(self, size):
        """Return a new SharedMemory block of `size` bytes, tracked by the
        manager."""
        if self._state.value != State.STARTED:
            raise ValueError('%s is not started: call start() first'
                             % type(self).__name__)
        sms = shared_memory.SharedMemory(None, create=True, size=size)
        try:
            self._track(sms.name)
        except BaseException:
            sms.close()
            sms.unlink()
            raise
        return sms

    def ShareableList(self, sequence):
        """Return a new ShareableList of `sequence`, tracked by the
        manager."""
        if self._state.value != State.STARTED:
            raise ValueError('%s is not started: call start() first'
                             % type(self).__name__)
        sl = shared_memory.ShareableList(sequence)
        try:
            self._track(sl.shm.name)
        except BaseException:
            sl.shm.close()
            sl.shm.unlink()
            raise
        return sl


# ---------------------------------------------------------------------------
# How each serializer listens and connects.

listener_client = {
    'pickle': (connection.Listener, connection.Client),
    'xmlrpclib': (connection.XmlListener, connection.XmlClient),
}
