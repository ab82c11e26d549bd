"""Managers (docs: "Managers", "Customized managers", "Using a remote
manager", "Proxy Objects"): every SyncManager type used from other
processes, remote managers over TCP on 127.0.0.1, authentication, server
death, nested proxies, custom types, the xmlrpclib serializer and the
server's reference counts."""
import gc
import os
import queue as pyqueue
import signal
import threading
import time

import pytest

import multiprocessing_c
from multiprocessing_c import managers
from multiprocessing_c.context import AuthenticationError, ProcessError
from multiprocessing_c.managers import (BaseManager, BaseProxy, RemoteError,
                                        SyncManager, Token)

HOST = '127.0.0.1'


@pytest.fixture
def manager(ctx):
    m = SyncManager(ctx=ctx)
    m.start()
    yield m
    m.shutdown()
    assert m._process.exitcode == 0


def run_child(ctx, target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(30)
    assert p.exitcode == 0, 'child failed with exit code %s' % p.exitcode


def wait_for_objects(m, expected, timeout=5.0):
    """The server's object count once it settles at `expected` (decrefs
    sent from other processes arrive asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        n = m._number_of_objects()
        if n == expected or time.monotonic() > deadline:
            return n
        time.sleep(0.02)

# ---------------------------------------------------------------------------
# Every SyncManager type from a child process (module-level for spawn).


def child_list(o):
    assert o[0] == 5
    assert o.count(5) == 1
    assert o.index(5) == 0
    o.sort()
    o.reverse()
    assert [x for x in o] == [5]
    assert len(o) == 1
    assert o.pop(0) == 5
    o.extend([1, 2, 3])
    o += [4]
    o *= 2


def child_dict(o):
    assert len(o) == 1
    assert o['foo'] == 5
    assert o.get('foo') == 5
    assert o.get('nope', 7) == 7
    assert 'foo' in o
    assert list(o.items()) == [('foo', 5)]
    assert list(o.keys()) == ['foo']
    assert list(o.values()) == [5]
    assert list(iter(o)) == ['foo']
    assert o.copy() == {'foo': 5}
    assert o.popitem() == ('foo', 5)
    o.update(a=1, b=2)
    assert o.setdefault('c', 3) == 3


def child_value(o):
    assert o.value == 1
    assert o.get() == 1
    o.set(2)
    o.value += 40


def child_array(o):
    assert o[0] == 0 and o[1] == 1
    assert len(o) == 2
    assert list(o) == [0, 1]
    o[1] = 42


def child_namespace(o):
    assert o.x == 0 and o.y == 1
    o.z = 'from child'
    del o.x


def child_queue(o):
    assert o.qsize() == 2
    assert o.full()
    assert not o.empty()
    assert o.get() == 5
    assert o.get() == 6
    assert o.empty()
    with pytest.raises(pyqueue.Empty):
        o.get(timeout=0.01)
    o.put('back')


def child_joinable_queue(o):
    assert o.get() == 'job'
    o.task_done()


def child_event(o):
    assert o.is_set()
    o.wait()
    o.clear()
    assert o.wait(0.001) is False


def child_lock(o):
    assert o.acquire()
    # Held by this child's server-side thread: a second try fails.
    assert not o.acquire(timeout=0.01)
    o.release()
    with o:
        pass
    assert o.acquire()          # the parent releases it


def child_rlock(o):
    o.acquire()
    o.acquire()
    o.release()
    o.release()


def child_semaphore(o):
    assert o.acquire()
    assert o.acquire()
    assert not o.acquire(False)


def child_condition(o, flag):
    with o:
        flag.set()
        o.notify_all()


def child_barrier(o):
    assert o.parties == 2
    assert o.broken is False
    o.wait(10)


def child_lock_blocks(lock, ev):
    # Waits in the server until the parent releases.
    ev.set()
    with lock:
        pass


def test_list(manager, ctx):
    o = manager.list()
    o.append(5)
    run_child(ctx, child_list, o)
    assert o[:] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert o + [5] == [1, 2, 3, 4, 1, 2, 3, 4, 5]
    assert str(o) == str([1, 2, 3, 4, 1, 2, 3, 4])


def test_dict(manager, ctx):
    o = manager.dict()
    o['foo'] = 5
    run_child(ctx, child_dict, o)
    assert o.copy() == {'a': 1, 'b': 2, 'c': 3}
    with pytest.raises(KeyError):
        o['missing']


def test_value(manager, ctx):
    o = manager.Value('i', 1)
    run_child(ctx, child_value, o)
    assert o.value == 42
    assert o.get() == 42


def test_array(manager, ctx):
    o = manager.Array('i', [0, 1])
    run_child(ctx, child_array, o)
    assert list(o) == [0, 42]
    assert o[:].tolist() == [0, 42]


def test_namespace(manager, ctx):
    o = manager.Namespace()
    o.x = 0
    o.y = 1
    o._hidden = 'proxy only'
    run_child(ctx, child_namespace, o)
    assert o.z == 'from child'
    assert not hasattr(o, 'x')
    assert o._hidden == 'proxy only'
    assert str(o) == "Namespace(y=1, z='from child')"


def test_queue(manager, ctx):
    o = manager.Queue(2)
    o.put(5)
    o.put(6)
    with pytest.raises(pyqueue.Full):
        o.put(7, timeout=0.01)
    run_child(ctx, child_queue, o)
    assert o.get(timeout=5) == 'back'
    assert o.empty()


def test_joinable_queue(manager, ctx):
    o = manager.JoinableQueue()
    o.put('job')
    run_child(ctx, child_joinable_queue, o)
    o.join()          # returns: the child called task_done()
    assert o.empty()


def test_event(manager, ctx):
    o = manager.Event()
    o.set()
    run_child(ctx, child_event, o)
    assert not o.is_set()
    assert o.wait(0.001) is False


def test_lock(manager, ctx):
    o = manager.Lock()
    run_child(ctx, child_lock, o)
    # Acquired by the child and never released; we may release it.
    assert not o.acquire(timeout=0.01)
    o.release()
    with pytest.raises(RuntimeError):
        o.release()


def test_lock_blocks_across_processes(manager, ctx):
    lock = manager.Lock()
    ev = manager.Event()
    lock.acquire()
    p = ctx.Process(target=child_lock_blocks, args=(lock, ev))
    p.start()
    assert ev.wait(10)
    time.sleep(0.1)
    assert p.is_alive()
    lock.release()
    p.join(10)
    assert p.exitcode == 0


def test_rlock(manager, ctx):
    o = manager.RLock()
    run_child(ctx, child_rlock, o)
    assert o.acquire()
    assert o.acquire()
    o.release()
    o.release()


@pytest.mark.parametrize('kind', ['Semaphore', 'BoundedSemaphore'])
def test_semaphores(manager, ctx, kind):
    o = getattr(manager, kind)(2)
    run_child(ctx, child_semaphore, o)
    o.release()
    o.release()
    if kind == 'BoundedSemaphore':
        with pytest.raises(ValueError):
            o.release()


def test_condition(manager, ctx):
    cond = manager.Condition()
    flag = manager.Event()
    with cond:
        p = ctx.Process(target=child_condition, args=(cond, flag))
        p.start()
        assert cond.wait_for(flag.is_set, timeout=10)
    p.join(10)
    assert p.exitcode == 0
    with cond:
        assert cond.wait(0.01) is False
        assert cond.wait_for(lambda: False, timeout=0.01) is False


def test_condition_with_lock_proxy(manager):
    lock = manager.Lock()
    cond = manager.Condition(lock)
    with cond:
        # The condition's lock is the one we hold.
        assert not lock.acquire(timeout=0.01)
        cond.notify()
    assert lock.acquire(timeout=1)
    lock.release()


def test_barrier(manager, ctx):
    o = manager.Barrier(2)
    assert o.parties == 2
    p = ctx.Process(target=child_barrier, args=(o,))
    p.start()
    o.wait(10)
    p.join(10)
    assert p.exitcode == 0
    assert o.n_waiting == 0
    o.abort()
    assert o.broken
    o.reset()
    assert not o.broken


def child_pool(o):
    assert o.apply(pow, (2, 5)) == 32
    assert o.map(abs, [-1, -2]) == [1, 2]


def test_pool(manager, ctx):
    pytest.importorskip('multiprocessing_c.pool')
    o = manager.Pool(2)
    run_child(ctx, child_pool, o)
    r = o.apply_async(pow, (3, 2))
    assert r.get(10) == 9
    assert sorted(o.imap_unordered(abs, [-3, -4])) == [3, 4]
    with pytest.raises(RemoteError):
        manager.Pool(-1)
    with o:
        pass

# ---------------------------------------------------------------------------
# Nested proxies and proxies passed between processes.


def child_nested(d):
    d['l'].append('child')
    d['inner']['k'] = 'v'
    assert isinstance(d['l'], BaseProxy)


def test_nested_proxies(manager, ctx):
    l = manager.list([1])
    inner = manager.dict()
    d = manager.dict(l=l, inner=inner)
    run_child(ctx, child_nested, d)
    assert l[:] == [1, 'child']
    assert inner['k'] == 'v'
    # The nested objects outlive our own proxies to them.
    del l, inner
    gc.collect()
    d['l'].append(2)
    assert d['l'][:] == [1, 'child', 2]
    outer = manager.list([[88, 99], d['l']])
    assert isinstance(outer[0], list)
    assert outer[1][-1] == 2
    outer[1].append(3)
    assert d['l'][-1] == 3


def test_nested_queue(manager):
    a = manager.list()
    a.append(manager.Queue())
    a[0].put(123)
    assert a[0].get() == 123
    b = manager.dict()
    b[0] = manager.Queue()
    b[0].put(456)
    assert b[0].get() == 456


def child_put_proxy(q, box):
    q.put(box)


def test_proxy_through_a_managed_queue(manager, ctx):
    # The sender drops its proxy at once: the object must survive in the
    # queue, and again between the get() reply and the receiver's claim.
    q = manager.Queue()
    run_child(ctx, child_put_proxy, q, manager.list(['payload']))
    gc.collect()
    box = q.get(timeout=10)
    assert box[:] == ['payload']
    del box
    del q
    assert wait_for_objects(manager, 0) == 0


def test_dict_iterator_and_errors(manager):
    d = manager.dict(a=1, b=2)
    it = iter(d)
    assert isinstance(it, managers.IteratorProxy)
    assert list(it) == ['a', 'b']
    it = iter(d)
    d.clear()
    with pytest.raises(RuntimeError):
        next(it)


class _ErrorReply:
    def send(self, obj):
        pass

    def recv(self):
        return '#ERROR', pyqueue.Empty()


def test_raised_errors_leave_no_reference_cycle(manager):
    # The exception must go with its except clause, not wait for the
    # garbage collector (3.13's TestManagerExceptions).
    import weakref
    q = manager.Queue()
    refs = []
    gc.disable()
    try:
        for call in (q.get_nowait,
                     lambda: managers.dispatch(_ErrorReply(), None, 'get')):
            try:
                call()
            except pyqueue.Empty as e:
                refs.append(weakref.ref(e))
    finally:
        gc.enable()
    assert len(refs) == 2
    assert [r() for r in refs] == [None, None]


def test_getvalue_str_repr_deepcopy(manager):
    import copy
    d = manager.dict(x=[1, 2])
    assert d._getvalue() == {'x': [1, 2]}
    assert str(d) == "{'x': [1, 2]}"
    assert repr(d).startswith("<DictProxy object, typeid 'dict' at 0x")
    assert copy.deepcopy(d) == {'x': [1, 2]}
    ns = manager.Namespace(a=1)
    assert ns._getvalue().a == 1

# ---------------------------------------------------------------------------
# Reference counting.


def child_touch(d):
    d['seen'] = True


def test_refcounts_return_to_zero(manager, ctx):
    assert manager._number_of_objects() == 0
    objs = [manager.list(), manager.dict(), manager.Lock(), manager.Queue(),
            manager.Namespace(), manager.Value('i', 0)]
    assert manager._number_of_objects() == len(objs)
    assert 'refcount=1' in manager._debug_info()
    copies = [pickle_roundtrip(o) for o in objs]
    del objs
    assert manager._number_of_objects() == 6
    del copies
    assert wait_for_objects(manager, 0) == 0
    d = manager.dict()
    run_child(ctx, child_touch, d)
    assert d['seen'] is True
    del d
    assert wait_for_objects(manager, 0) == 0


def pickle_roundtrip(obj):
    import pickle
    return pickle.loads(pickle.dumps(obj))


def test_no_leak_in_a_long_loop(manager):
    d = manager.dict()
    for i in range(300):
        inner = manager.list([i])
        d['k'] = inner
        del inner
        assert d['k'][0] == i
        it = iter(d)
        next(it)
        del it
    assert manager._number_of_objects() == 2
    del d
    assert wait_for_objects(manager, 0) == 0


def test_cycles_through_proxies_are_freed(manager):
    b = manager.list()
    b.append(b)
    assert b[0][0][0]._token.id == b._token.id
    x = manager.dict()
    y = manager.dict(x=x)
    x['y'] = y
    x['self'] = x
    keep = manager.dict()
    keep['x'] = x           # x and y stay reachable through `keep`
    del b, x, y
    assert wait_for_objects(manager, 3) == 3
    assert keep['x']['y']['x']['self']._token.id == keep['x']._token.id
    del keep
    assert wait_for_objects(manager, 0) == 0

# ---------------------------------------------------------------------------
# Manager lifecycle.


def test_manager_states(ctx):
    m = SyncManager(ctx=ctx)
    with pytest.raises(AttributeError):
        m.shutdown
    m.start()
    with pytest.raises(ProcessError, match='Already started'):
        m.start()
    addr = m.address
    assert os.path.exists(addr) or isinstance(addr, tuple)
    m.shutdown()
    m.shutdown()            # may be called again
    assert m._process.exitcode == 0
    with pytest.raises(ProcessError, match='shut down'):
        m.start()
    with pytest.raises(ProcessError):
        with m:
            pass
    m.join()
    assert m._process is None


def test_context_manager_and_Manager(ctx):
    with ctx.Manager() as m:
        assert isinstance(m, SyncManager)
        l = m.list([1])
        assert l[0] == 1
        proc = m._process
    assert proc.exitcode == 0
    assert not proc.is_alive()


def init_server(value):
    os.environ['MPC_MANAGER_INIT'] = value


def getenv(name):
    return os.environ.get(name)


class EnvManager(BaseManager):
    pass


EnvManager.register('getenv', getenv)


def test_start_initializer(ctx):
    m = EnvManager(ctx=ctx)
    with pytest.raises(TypeError):
        m.start(initializer=42)
    m.start(init_server, ('hello',))
    try:
        # Registered with no proxytype: the str is shared via AutoProxy.
        s = m.getenv('MPC_MANAGER_INIT')
        assert str(s) == "'hello'"
    finally:
        m.shutdown()


def test_start_error_is_raised_in_parent(ctx):
    import socket
    s = socket.socket()
    s.bind((HOST, 0))
    s.listen()
    try:
        m = SyncManager(address=s.getsockname(), ctx=ctx)
        with pytest.raises(OSError):
            m.start()
    finally:
        s.close()


def test_bad_arguments():
    with pytest.raises(ValueError, match='serializer'):
        SyncManager(serializer='json')
    with pytest.raises(TypeError):
        managers.Server({}, None, 'not bytes', 'pickle')
    import inspect
    import sys
    sig = inspect.signature(BaseManager.__init__)
    has_it = 'shutdown_timeout' in sig.parameters
    assert has_it == (sys.version_info >= (3, 11))

# ---------------------------------------------------------------------------
# Custom managers and proxies (the stdlib suite's _TestMyManager, extended).


class FooBar:
    def f(self):
        return 'f()'

    def g(self):
        raise ValueError('from g')

    def _h(self):
        return '_h()'

    def make_other(self):
        return FooBar()


def baz():
    for i in range(10):
        yield i * i


def broken_factory():
    raise ZeroDivisionError('no object for you')


class IteratorProxy(BaseProxy):
    _exposed_ = ('__next__',)

    def __iter__(self):
        return self

    def __next__(self):
        return self._callmethod('__next__')


class MathsProxy(BaseProxy):
    # A custom constructor that does not take incref=: still works.
    _exposed_ = ('f', 'make_other')

    def __init__(self, token, serializer, manager=None, authkey=None,
                 exposed=None):
        super().__init__(token, serializer, manager, authkey, exposed)

    def f(self):
        return self._callmethod('f')


class MyManager(BaseManager):
    pass


MyManager.register('Foo', callable=FooBar)
MyManager.register('Bar', callable=FooBar, exposed=('f', '_h'))
MyManager.register('baz', callable=baz, proxytype=IteratorProxy)
MyManager.register('Maths', callable=FooBar, proxytype=MathsProxy)
MyManager.register('Other', callable=FooBar,
                   method_to_typeid={'make_other': 'FooRef'})
# Results of make_other(): shared, never created directly.
MyManager.register('FooRef', exposed=('f',), create_method=False)
MyManager.register('Broken', callable=broken_factory)


def set_x_from_grandchild(d):
    d['x'] = os.getpid()


class Forker:
    """Starts, from inside the manager's process, a child that uses a
    proxy the server unpickled (what a managed Pool's workers do)."""

    def run(self, d, method):
        p = multiprocessing_c.get_context(method).Process(
            target=set_x_from_grandchild, args=(d,))
        p.start()
        p.join(30)
        return p.exitcode


MyManager.register('Forker', callable=Forker)


@pytest.mark.parametrize('inner', ['fork', 'spawn'])
def test_children_of_the_manager_process_use_proxies(ctx, inner):
    with MyManager(ctx=ctx, authkey=b'not the default key') as manager:
        d = manager.Dict()
        assert manager.Forker().run(d, inner) == 0
        # The grandchild changed the real dict, not a copy of it.
        assert d['x'] not in (os.getpid(), manager._process.pid)
        del d
        assert wait_for_objects(manager, 0) == 0


MyManager.register('Dict', callable=dict, proxytype=managers.DictProxy)


def test_custom_manager(ctx):
    with MyManager(ctx=ctx) as manager:
        foo = manager.Foo()
        bar = manager.Bar()
        it = manager.baz()
        assert [n for n in ('f', 'g', '_h') if hasattr(foo, n)] == ['f', 'g']
        assert [n for n in ('f', 'g', '_h') if hasattr(bar, n)] == ['f', '_h']
        assert foo.f() == 'f()'
        with pytest.raises(ValueError, match='from g'):
            foo.g()
        assert foo._callmethod('f') == 'f()'
        with pytest.raises(RemoteError, match='not in exposed'):
            foo._callmethod('_h')
        assert bar._h() == '_h()'
        assert list(it) == [i * i for i in range(10)]
        maths = manager.Maths()
        assert maths.f() == 'f()'
        other = manager.Other()
        made = other.make_other()
        assert made._token.typeid == 'FooRef'
        assert made.f() == 'f()'
        with pytest.raises(RemoteError, match='no object for you') as info:
            manager.Broken()
        # The remote traceback names the function that failed there.
        assert 'broken_factory' in str(info.value)
        del foo, bar, it, maths, other, made
        assert wait_for_objects(manager, 0) == 0
    assert manager._process.exitcode == 0


def test_register_keeps_registries_apart():
    class Sub(SyncManager):
        pass
    Sub.register('extra', dict)
    assert 'extra' in Sub._registry
    assert 'extra' not in SyncManager._registry
    assert Sub._registry['list'] == SyncManager._registry['list']
    assert hasattr(Sub, 'extra') and not hasattr(SyncManager, 'extra')


def test_token_and_proxy_types():
    t = Token('dict', ('127.0.0.1', 1), 'ab')
    assert repr(t) == "Token(typeid='dict', address=('127.0.0.1', 1), id='ab')"
    t2 = pickle_roundtrip(t)
    assert (t2.typeid, t2.address, t2.id) == (t.typeid, t.address, t.id)
    P = managers.MakeProxyType('P', ('a', 'b'))
    assert P is managers.MakeProxyType('P', ['a', 'b'])
    assert issubclass(P, BaseProxy) and P._exposed_ == ('a', 'b')
    assert managers.ValueProxy[int] is not None
    assert str(RemoteError('boom\n')).count('-' * 75) == 2
    ns = managers.Namespace(b=2, a=1, _c=3)
    assert repr(ns) == 'Namespace(a=1, b=2)'

# ---------------------------------------------------------------------------
# Remote managers over TCP.

_queue = pyqueue.Queue()
_event = threading.Event()


def get_queue():
    return _queue


def get_event():
    return _event


class QueueManager(BaseManager):
    pass


QueueManager.register('get_queue', callable=get_queue)
QueueManager.register('get_event', callable=get_event,
                      proxytype=managers.EventProxy)


class QueueClient(BaseManager):
    pass


QueueClient.register('get_queue')
QueueClient.register('get_event', proxytype=managers.EventProxy)


def remote_client(address, authkey, n, serializer):
    m = QueueClient(address=address, authkey=authkey, serializer=serializer)
    m.connect()
    q = m.get_queue()
    ev = m.get_event()
    # Every client blocks in the server at once: one thread per connection.
    assert ev.wait(20)
    q.put(('hello', n))


@pytest.mark.parametrize('serializer', ['pickle', 'xmlrpclib'])
def test_remote_manager_many_clients(ctx, serializer):
    authkey = os.urandom(32)
    server = QueueManager(address=(HOST, 0), authkey=authkey,
                          serializer=serializer, ctx=ctx)
    server.start()
    try:
        host, port = server.address
        assert host == HOST and port > 0
        clients = [ctx.Process(target=remote_client,
                               args=(server.address, authkey, n, serializer))
                   for n in range(3)]
        for p in clients:
            p.start()
        m = QueueClient(address=server.address, authkey=authkey,
                        serializer=serializer)
        m.connect()
        q = m.get_queue()
        time.sleep(0.2)
        m.get_event().set()
        got = sorted(tuple(q.get(timeout=20)) for _ in clients)
        assert got == [('hello', n) for n in range(3)]
        for p in clients:
            p.join(10)
            assert p.exitcode == 0
        if serializer == 'xmlrpclib':
            # Not representable in XML-RPC: an error, and the server lives.
            with pytest.raises(Exception):
                q.put(time.sleep)
            q.put('still fine')
            assert q.get() == 'still fine'
        del q
    finally:
        server.shutdown()
    assert server._process.exitcode == 0


def test_wrong_authkey(ctx):
    authkey = os.urandom(32)
    server = QueueManager(address=(HOST, 0), authkey=authkey, ctx=ctx)
    server.start()
    try:
        bad = QueueClient(address=server.address, authkey=b'wrong key')
        with pytest.raises(AuthenticationError):
            bad.connect()
        with pytest.raises(AuthenticationError):
            bad.get_queue()
        good = QueueClient(address=server.address, authkey=authkey)
        good.connect()
        q = good.get_queue()
        q.put(1)
        assert q.get() == 1
        del q
    finally:
        server.shutdown()


def serve_forever_child(address, authkey):
    m = QueueManager(address=address, authkey=authkey)
    m.get_server().serve_forever()


def test_get_server_serve_forever(ctx):
    import socket
    s = socket.socket()
    s.bind((HOST, 0))
    address = s.getsockname()
    s.close()
    authkey = b'abracadabra'
    p = ctx.Process(target=serve_forever_child, args=(address, authkey))
    p.start()
    try:
        m = QueueClient(address=address, authkey=authkey)
        deadline = time.monotonic() + 10
        while True:
            try:
                m.connect()
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        q = m.get_queue()
        q.put('x')
        assert q.get() == 'x'
        del q
        # Ask the server to stop, as BaseManager.shutdown() would.
        managers.BaseManager._finalize_manager(
            p, address, m._authkey, m._state, m._Client, 5.0)
        assert p.exitcode == 0
    finally:
        if p.is_alive():
            p.kill()
        p.join()


def test_server_in_process_dispatch(tmp_path):
    """The server's dispatch, driven in this process with no listener."""
    class FakeListener:
        def __init__(self, address, backlog):
            self.address = address

        def close(self):
            pass

    managers.listener_client['fake'] = (FakeListener, None)
    try:
        srv = managers.Server(SyncManager._registry, 'nowhere', b'key', 'fake')
    finally:
        del managers.listener_client['fake']
    ident, exposed = srv.create(None, 'list', [3, 1, 2])
    assert 'append' in exposed and srv.number_of_objects(None) == 1
    assert srv._serve_one(None, (ident, 'sort', (), {})) == ('#RETURN', None)
    assert srv._serve_one(None, (ident, '#GETVALUE', (), {})) == (
        '#RETURN', [1, 2, 3])
    kind, tb = srv._serve_one(None, (ident, 'clear_all', (), {}))
    assert kind == '#TRACEBACK' and 'not in exposed' in tb
    kind, err = srv._serve_one(None, (ident, 'index', (99,), {}))
    assert kind == '#ERROR' and isinstance(err, ValueError)
    kind, tb = srv._serve_one(None, (None, 'nonsense', (), {}))
    assert kind == '#TRACEBACK'
    srv.incref(None, ident)
    key = srv.lend(None, ident)
    assert srv.id_to_refcount[ident] == 3
    srv.claim(None, ident, key)
    srv.claim(None, ident, key)        # claimed twice: a new reference
    assert srv.id_to_refcount[ident] == 4
    for _ in range(3):
        assert srv._serve_one(None, (ident, '#DECREF', (), {})) is None
    assert srv.number_of_objects(None) == 1
    srv.decref(None, ident)
    assert srv.number_of_objects(None) == 0
    kind, tb = srv._serve_one(None, (ident, 'sort', (), {}))
    assert kind == '#TRACEBACK' and 'freed' in tb
    assert managers.convert_to_error('#ERROR', KeyError(1)).args == (1,)
    assert isinstance(managers.convert_to_error('#TRACEBACK', 'tb'),
                      RemoteError)
    assert isinstance(managers.convert_to_error('#what', 'x'), ValueError)

# ---------------------------------------------------------------------------
# Failures: server death, client death.


def test_server_death_seen_by_clients(ctx):
    m = SyncManager(ctx=ctx)
    m.start()
    q = m.Queue()
    d = m.dict()
    d['a'] = 1
    killer = threading.Timer(0.3, m._process.kill)
    killer.start()
    try:
        with pytest.raises((EOFError, ConnectionError)):
            q.get(timeout=30)          # blocked in the server when it dies
        with pytest.raises((EOFError, OSError)):
            d['a']
    finally:
        killer.join()
        m.shutdown()
    assert m._process.exitcode == -signal.SIGKILL


def child_blocked_wait(ev, started):
    started.put(os.getpid())
    ev.wait()


def test_client_death_mid_call_spares_server(manager, ctx):
    ev = manager.Event()
    started = manager.Queue()
    victims = [ctx.Process(target=child_blocked_wait, args=(ev, started))
               for _ in range(3)]
    for p in victims:
        p.start()
    for p in victims:
        started.get(timeout=20)
    # Let every child block inside the server's ev.wait(), then kill them.
    time.sleep(0.2)
    for p in victims:
        p.kill()
        p.join()
    ev.set()            # the server threads wake to dead connections
    q = manager.Queue()
    q.put('alive')
    assert q.get(timeout=5) == 'alive'
    assert manager.list([1])[0] == 1


def child_many_threads(d, n):
    def work(k):
        for i in range(20):
            d['%d-%d' % (k, i)] = i
    threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_many_threads_and_processes(manager, ctx):
    d = manager.dict()
    procs = [ctx.Process(target=child_many_threads, args=(d, 4))
             for _ in range(3)]
    for p in procs:
        p.start()
    child_many_threads(d, 4)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(d) == 4 * 20

# ---------------------------------------------------------------------------
# SharedMemoryManager.


def test_shared_memory_manager(ctx):
    from multiprocessing_c import shared_memory
    smm = managers.SharedMemoryManager(ctx=ctx)
    with pytest.raises(ValueError):
        smm.SharedMemory(size=9)
    smm.start()
    lol = [smm.ShareableList(range(i)) for i in range(5, 8)]
    lom = [smm.SharedMemory(size=j) for j in (32, 64)]
    twin = shared_memory.ShareableList(name=lol[0].shm.name)
    assert len(twin) == 5
    twin.shm.close()
    names = [sl.shm.name for sl in lol] + [m.name for m in lom]
    assert sorted(managers._call_server(
        smm.address, smm._authkey, smm._Client, 'list_segments')) == \
        sorted(names)
    for obj in lol:
        obj.shm.close()
    for obj in lom:
        obj.close()
    smm.shutdown()
    for name in names:
        with pytest.raises(FileNotFoundError):
            shared_memory.SharedMemory(name=name)
    with managers.SharedMemoryManager(ctx=ctx) as smm2:
        sl = smm2.ShareableList('howdy')
        held = sl.shm.name
        sl.shm.close()
    with pytest.raises(FileNotFoundError):
        shared_memory.ShareableList(name=held)

# ---------------------------------------------------------------------------
# Misbehaving clients, interrupted calls and threads that come and go.


def server_thread_count():
    return threading.active_count()


class CountingManager(SyncManager):
    pass


CountingManager.register('thread_count', server_thread_count)


def test_bad_clients_do_not_disturb_the_server():
    import socket
    import struct
    from multiprocessing_c import connection
    authkey = os.urandom(16)
    with SyncManager(address=(HOST, 0), authkey=authkey) as m:
        # Connections that never answer the challenge hold only themselves.
        idle = [socket.create_connection(m.address) for _ in range(3)]
        try:
            d = m.dict()
            d['x'] = 1
            # Authenticated, then a truncated frame and gone.
            c = connection.Client(m.address, authkey=authkey)
            os.write(c.fileno(), struct.pack('!i', 1000) + b'abc')
            c.close()
            # Authenticated, then bytes that are no pickle.
            c = connection.Client(m.address, authkey=authkey)
            c.send_bytes(b'not a pickle')
            kind, tb = c.recv()
            assert kind == '#TRACEBACK' and 'Unpickling' in tb
            c.close()
            c = connection.Client(m.address, authkey=authkey)
            managers.dispatch(c, None, 'accept_connection', ('raw',))
            c.send_bytes(b'not a pickle')
            kind, tb = c.recv()
            assert kind == '#TRACEBACK'
            # ... and the connection still serves.
            assert managers.dispatch(c, None, 'number_of_objects') == 1
            c.close()
            assert d['x'] == 1
        finally:
            for s in idle:
                s.close()
        del d


def test_interrupted_call_leaves_a_usable_proxy():
    class Interrupt(Exception):
        pass

    def handler(signum, frame):
        raise Interrupt

    with SyncManager() as m:
        ev = m.Event()
        d = m.dict()
        old = signal.signal(signal.SIGALRM, handler)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(Interrupt):
                ev.wait()       # blocked in the server, interrupted here
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        # The half-done exchange is dropped with its connection, so the
        # next calls are not answered with the old call's reply.
        d['k'] = 'v'
        assert d['k'] == 'v'
        assert ev.is_set() is False
        ev.set()
        assert ev.wait(5) is True
        del ev, d


def test_client_threads_come_and_go(ctx):
    with CountingManager(ctx=ctx) as m:
        d = m.dict()
        base = int(str(m.thread_count()))

        def work(i):
            d[i] = i

        for _ in range(5):
            threads = [threading.Thread(target=work, args=(i,))
                       for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        gc.collect()
        assert len(d) == 8
        # Each finished thread's connection closed, ending its server
        # thread: the server does not pile threads up.
        deadline = time.monotonic() + 5
        while int(str(m.thread_count())) > base + 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        del d


def test_decref_is_seen_by_the_next_call(manager):
    # DECREFs from this thread travel on this thread's connection, ahead of
    # the next call: the count is exact at once, with no waiting.
    d = manager.dict()
    d['inner'] = manager.list([1])
    assert d['inner'][0] == 1
    assert manager._number_of_objects() == 2
    del d
    assert manager._number_of_objects() == 0

# ---------------------------------------------------------------------------
# Other programs as clients, and the manager's end.


def test_client_in_another_program(tmp_path):
    from testutil import run_python, write_script
    authkey = os.urandom(16)
    server = QueueManager(address=(HOST, 0), authkey=authkey)
    server.start()
    try:
        script = write_script(tmp_path / 'client.py', '''
            import sys
            from multiprocessing_c.managers import BaseManager

            class QueueManager(BaseManager):
                pass

            QueueManager.register('get_queue')
            host, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
            m = QueueManager(address=(host, port), authkey=bytes.fromhex(key))
            m.connect()
            q = m.get_queue()
            q.put('from another program')
            print(q.qsize())
        ''')
        host, port = server.address
        r = run_python([script, host, str(port), authkey.hex()])
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == '1'
        m = QueueClient(address=server.address, authkey=authkey)
        m.connect()
        q = m.get_queue()
        assert q.get(timeout=5) == 'from another program'
        del q
    finally:
        server.shutdown()


def test_stdlib_client_talks_to_our_server():
    import multiprocessing.managers as std_managers

    class StdClient(std_managers.BaseManager):
        pass

    StdClient.register('get_queue')
    authkey = os.urandom(16)
    server = QueueManager(address=(HOST, 0), authkey=authkey)
    server.start()
    try:
        c = StdClient(address=server.address, authkey=authkey)
        c.connect()
        q = c.get_queue()
        q.put('from the stdlib')
        assert q.get() == 'from the stdlib'
        assert q.qsize() == 0
        del q
    finally:
        server.shutdown()


def test_collected_manager_shuts_down(ctx):
    m = SyncManager(ctx=ctx)
    m.start()
    proc = m._process
    del m
    gc.collect()
    proc.join(10)
    assert proc.exitcode == 0


def test_manager_stops_when_its_program_exits(tmp_path):
    from testutil import run_python, write_script
    script = write_script(tmp_path / 'prog.py', '''
        import multiprocessing_c as mp

        if __name__ == '__main__':
            m = mp.Manager()
            d = m.dict(a=m.list([1]))
            print(m._process.pid, flush=True)
            # no shutdown(): the exit handlers stop the manager
    ''')
    r = run_python([script])
    assert r.returncode == 0, r.stderr
    assert r.stderr == ''
    pid = int(r.stdout)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_malformed_requests_on_a_served_connection():
    from multiprocessing_c import connection
    authkey = os.urandom(16)
    with SyncManager(address=(HOST, 0), authkey=authkey) as m:
        c = connection.Client(m.address, authkey=authkey)
        managers.dispatch(c, None, 'accept_connection', ('raw',))
        for bad in (42, ('too', 'short'), [None, 'shutdown'],
                    (None, 7, (), {})):
            c.send(bad)
            kind, detail = c.recv()
            assert kind == '#TRACEBACK', (bad, kind, detail)
        with pytest.raises(RemoteError, match='no shared object'):
            managers.dispatch(c, 'ffff', 'append', (1,))
        assert managers.dispatch(c, None, 'number_of_objects') == 0
        c.close()
        assert m.list([3])[0] == 3


def test_no_fd_left_after_shutdown(ctx):
    def fds():
        return len(os.listdir('/proc/self/fd'))

    def cycle():
        with SyncManager(ctx=ctx) as m:
            d = m.dict()
            d['l'] = m.list([1])
            assert d['l'][0] == 1
            del d

    cycle()             # first use may open lasting fds (tracker, logging)
    gc.collect()
    before = fds()
    for _ in range(3):
        cycle()
    gc.collect()
    assert fds() == before


def test_manager_ignores_sigint(ctx):
    # Ctrl-C in a terminal reaches the whole process group: the manager
    # keeps serving, and the parent decides when it stops.
    with SyncManager(ctx=ctx) as m:
        lst = m.list([1])
        os.kill(m._process.pid, signal.SIGINT)
        time.sleep(0.1)
        assert m._process.is_alive()
        lst.append(2)
        assert lst[:] == [1, 2]
        del lst
    assert m._process.exitcode == 0


def child_set_x(d):
    d['x'] = 'set by child'


def child_put_in_queue(q, d):
    q.put(d['k'])


def test_proxy_dropped_by_parent_right_after_start(manager, ctx):
    # Process.start() drops the parent's references to its arguments, so
    # the inline proxy below is gone before the child takes its own: the
    # server keeps the object for the child (the stdlib loses it).
    holder = manager.list()
    for _ in range(3):
        p = ctx.Process(target=child_set_x, args=(manager.dict(),))
        p.start()
        p.join(30)
        assert p.exitcode == 0
    q = manager.Queue()
    d = manager.dict(k=7)
    p = ctx.Process(target=child_put_in_queue, args=(q, d))
    p.start()
    del d
    assert q.get(timeout=30) == 7
    p.join(30)
    assert p.exitcode == 0
    del q, holder
    assert wait_for_objects(manager, 0) == 0


def test_grace_period_then_freed(monkeypatch):
    import pickle
    monkeypatch.setattr(managers, '_GRACE', 0.5)
    ctx = multiprocessing_c.get_context('fork')    # the server inherits it
    with SyncManager(ctx=ctx) as m:
        d = m.dict(a=1)
        data = pickle.dumps(d)         # a twin may appear elsewhere
        ident = d._token.id
        del d
        assert m._number_of_objects() == 0
        assert 'released' in m._debug_info()
        twin = pickle.loads(data)      # ... and revives it in time
        assert twin['a'] == 1
        assert m._number_of_objects() == 1
        assert twin._token.id == ident
        del twin                       # not pickled itself: freed at once
        assert m._debug_info() == ''
        d = m.dict(b=2)
        pickle.dumps(d)
        del d
        assert 'released' in m._debug_info()
        deadline = time.monotonic() + 10
        while m._debug_info():
            assert time.monotonic() < deadline
            time.sleep(0.1)


class Counted:
    pass


def test_arguments_are_not_kept_alive(manager):
    import weakref
    lst = manager.list()
    objs = [Counted() for _ in range(5)]
    refs = [weakref.ref(o) for o in objs]
    lst.extend(objs)
    del objs
    gc.collect()
    assert [r() for r in refs] == [None] * 5
    assert len(lst) == 5


def test_objects_held_only_by_released_ones_are_not_counted(manager):
    import pickle
    inner = manager.list([True])
    outer = manager.dict(inner=inner)
    del inner
    pickle.dumps(outer)             # outer goes into its grace period
    del outer
    assert manager._number_of_objects() == 0
    info = manager._debug_info()
    assert 'released' in info and 'refcount=1' in info
