"""multiprocessing_c.reduction: ForkingPickler and its reducers, and the C
fast path (_mpcore.dumps/loads) that pickles plain data without a Pickler.

The fast path must write exactly the bytes the pickler writes (so any
reader, the stdlib's included, sees an ordinary pickle), decline what it
does not handle so the full pickler takes over, and never misread data."""
import functools
import math
import pickle
import random
import socket

import pytest

from multiprocessing_c import _mpcore, connection, reduction

PROTOCOL = 4    # ForkingPickler's default protocol on 3.9-3.13


def plain_corpus():
    """Plain data with the edge cases of every opcode the fast path writes."""
    ints = [0, 1, 255, 256, 65535, 65536, -1, -255, -256, 2**31 - 1, 2**31,
            -2**31, -2**31 - 1, 2**39, -2**39, 2**40 - 1, -2**40, 2**63 - 1,
            -2**63]
    floats = [0.0, -0.0, 1.5, -2.25, 1e308, 5e-324, math.inf, -math.inf]
    strs = ['', 'a', 'spam', 'x' * 255, 'x' * 256, 'é', '中文', '\U0001f600',
            'é' * 200]
    blobs = [b'', b'\x00', b'x' * 255, b'x' * 256, bytes(range(256))]
    shared = [1, 2]
    key = 'shared key'
    return ints + floats + strs + blobs + [
        None, True, False, (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4),
        [], [None], [1, 2], list(range(999)), list(range(1000)),
        list(range(1001)), list(range(2500)),
        {}, {'a': 1}, {'a': 1, 'b': [2]}, {i: i for i in range(999)},
        {i: i for i in range(1000)}, {i: -i for i in range(2001)},
        {(1, 'k'): b'v', 2.5: None, None: True},
        (1, 'spam', 2.5, [None, True]),
        [shared, shared, (shared,)],            # one list three times
        [{key: 1}, {key: 2}, key],              # one str many times
        [str(i) for i in range(300)] * 2,       # memo past 256 entries
        [[[[[]]]]],
        ('x' * 20000, 'y' * 20000, b'z' * 20000),   # near the 64 KiB frame
    ]


@pytest.mark.parametrize('obj', plain_corpus(), ids=lambda o: repr(o)[:40])
def test_fast_path_writes_the_picklers_bytes(obj):
    fast = _mpcore._fast_dumps(obj)
    assert fast is not None
    assert fast == pickle.dumps(obj, PROTOCOL)
    assert bytes(reduction.ForkingPickler.dumps(obj)) == fast
    ok, back = _mpcore._fast_loads(fast)
    assert ok
    assert repr(back) == repr(obj)


def test_recursive_list_keeps_its_shape():
    lst = [1]
    lst.append(lst)
    data = _mpcore._fast_dumps(lst)
    assert data == pickle.dumps(lst, PROTOCOL)
    back = _mpcore.loads(data)
    assert back[1] is back and back[0] == 1


def test_shared_objects_stay_shared():
    inner = [1]
    back = _mpcore.loads(_mpcore.dumps((inner, inner, {'k': inner})))
    assert back[0] is back[1] is back[2]['k']


class Sub(list):
    pass


class Point:
    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return type(other) is Point and other.x == self.x


@pytest.mark.parametrize('obj', [
    2**64, -2**64 - 5,                     # past 64 bits
    'x' * 70000, [b'y' * 40000] * 1 + [b'z' * 40000],   # past one frame
    '\udc80',                               # a lone surrogate
    Sub([1]), Point(3), {1, 2}, frozenset([3]), bytearray(b'ab'), 1 + 2j,
    [1, Point(2)], {'k': Sub()}, len, Point,
], ids=repr)
def test_everything_else_goes_to_the_full_pickler(obj):
    assert _mpcore._fast_dumps(obj) is None
    data = _mpcore.dumps(obj)
    back = _mpcore.loads(data)
    assert back == obj and type(back) is type(obj)
    assert pickle.loads(data) == obj


def test_deep_nesting_goes_to_the_full_pickler():
    deep = []
    for _ in range(200):
        deep = [deep]
    assert _mpcore._fast_dumps(deep) is None
    assert _mpcore.loads(_mpcore.dumps(deep)) == deep


def test_recursive_tuple_goes_to_the_full_pickler():
    lst = []
    tup = (lst,)
    lst.append(tup)
    assert _mpcore._fast_dumps(tup) is None
    back = _mpcore.loads(_mpcore.dumps(tup))
    assert back[0][0] is back


def test_registered_reducers_apply():
    part = functools.partial(int, base=2)
    back = _mpcore.loads(_mpcore.dumps([part, 'x']))
    assert back[0]('101') == 5
    meth = _mpcore.loads(_mpcore.dumps('a-b'.split))
    assert meth('-') == ['a', 'b']
    desc = _mpcore.loads(_mpcore.dumps((list.append, int.__add__)))
    assert desc == (list.append, int.__add__)


def test_registered_reducer_sees_only_its_type():
    class Tagged:
        pass
    reduction.register(Tagged, lambda obj: (str, ('tagged',)))
    try:
        assert _mpcore.loads(_mpcore.dumps([Tagged(), 1])) == ['tagged', 1]
        # Plain data is untouched by any registry.
        assert _mpcore.dumps([1]) == pickle.dumps([1], PROTOCOL)
    finally:
        del reduction.ForkingPickler._extra_reducers[Tagged]


def test_errors_are_the_picklers():
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        _mpcore.dumps(lambda: None)
    with pytest.raises(TypeError):
        _mpcore.dumps([socket])             # a module
    with pytest.raises(pickle.UnpicklingError):
        _mpcore.loads(b'\x80\x04garbage')
    with pytest.raises(EOFError):
        _mpcore.loads(b'')
    with pytest.raises(TypeError):
        _mpcore.loads('not bytes')


def test_loads_takes_any_buffer():
    data = pickle.dumps({'a': (1, 2)}, PROTOCOL)
    assert _mpcore.loads(memoryview(data)) == {'a': (1, 2)}
    assert _mpcore.loads(bytearray(data)) == {'a': (1, 2)}
    assert _mpcore.loads(memoryview(b'xx' + data)[2:]) == {'a': (1, 2)}


@pytest.mark.parametrize('protocol', [0, 1, 2, 3, 4, 5])
def test_reads_what_any_protocol_wrote(protocol):
    obj = {'a': [1, -2**40, 2.5, None, True], 'b': ('x', b'y'), 'c': ()}
    assert _mpcore.loads(pickle.dumps(obj, protocol)) == obj


def test_damaged_pickles_read_as_pickle_reads_them():
    # Whatever the fast reader accepts, pickle must read the same; what
    # it refuses goes to pickle, which raises.  Never a crash.
    rnd = random.Random(5)
    seeds = [pickle.dumps(o, p) for p in (2, 4, 5) for o in (
        (1, 'spam', 2.5, [None, True]), {'a': [1, (3, 4)], b'k': -5},
        [[[]], {}, ()], ['x' * 300, 2**40, -7])]
    accepted = 0
    for _ in range(20000):
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randrange(1, 4)):
            kind = rnd.randrange(3)
            if kind == 0 and data:
                data[rnd.randrange(len(data))] = rnd.randrange(256)
            elif kind == 1:
                del data[rnd.randrange(len(data) + 1):]
            else:
                data.insert(rnd.randrange(len(data) + 1), rnd.randrange(256))
        ok, obj = _mpcore._fast_loads(bytes(data))
        if ok:
            accepted += 1
            assert repr(pickle.loads(bytes(data))) == repr(obj)
    assert accepted > 100


def test_forking_pickler_api():
    view = reduction.ForkingPickler.dumps([1, 'a'])
    assert isinstance(view, memoryview)
    assert reduction.ForkingPickler.loads(view) == [1, 'a']
    # An explicit protocol or a subclass takes the Pickler path.
    assert pickle.loads(reduction.ForkingPickler.dumps([1], 2)) == [1]

    class Mine(reduction.ForkingPickler):
        pass
    assert pickle.loads(Mine.dumps((1,))) == (1,)


def test_random_plain_data_round_trips():
    rnd = random.Random(11)

    def atom():
        return rnd.choice([
            None, True, False, rnd.randrange(-2**70, 2**70) >> rnd.randrange(70),
            rnd.random() * 10 ** rnd.randrange(-20, 20), 'k%d' % rnd.randrange(5),
            'é' * rnd.randrange(3), b'\xff' * rnd.randrange(300)])

    def tree(depth):
        if depth > 3 or rnd.random() < 0.3:
            return atom()
        n = rnd.randrange(6)
        kind = rnd.randrange(3)
        if kind == 0:
            return tuple(tree(depth + 1) for _ in range(n))
        if kind == 1:
            return [tree(depth + 1) for _ in range(n)]
        return {atom(): tree(depth + 1) for _ in range(n)}

    for _ in range(3000):
        obj = tree(0)
        data = _mpcore.dumps(obj)
        assert data == pickle.dumps(obj, PROTOCOL)
        assert repr(_mpcore.loads(data)) == repr(obj)


# ------------------------------------------------- over a Connection

def test_connection_send_recv_plain_and_other():
    a, b = connection.Pipe()
    try:
        for obj in plain_corpus():
            a.send(obj)
            assert repr(b.recv()) == repr(obj)
        for obj in [Point(1), Sub([2]), {1, 2}, 2**100]:
            a.send(obj)
            back = b.recv()
            assert back == obj and type(back) is type(obj)
    finally:
        a.close()
        b.close()


def test_send_of_unpicklable_writes_nothing():
    a, b = connection.Pipe()
    try:
        with pytest.raises(Exception):
            a.send([1, lambda: None])
        assert not b.poll(0)
        a.send('after')
        assert b.recv() == 'after'
    finally:
        a.close()
        b.close()


def test_reducer_closing_the_connection_mid_send():
    a, b = connection.Pipe()

    class CloseIt:
        def __reduce__(self):
            a.close()
            return (str, ('x',))
    with pytest.raises(OSError, match='closed'):
        a.send(CloseIt())
    b.close()


def test_send_recv_direction_and_closed_checks():
    r, w = connection.Pipe(duplex=False)
    with pytest.raises(OSError, match='read-only'):
        r.send(1)
    with pytest.raises(OSError, match='write-only'):
        w.recv()
    r._check_closed()
    r._check_readable()
    with pytest.raises(OSError, match='read-only'):
        r._check_writable()
    with pytest.raises(OSError, match='write-only'):
        w._check_readable()
    r.close()
    w.close()
    with pytest.raises(OSError, match='closed'):
        r.recv()
    with pytest.raises(OSError, match='closed'):
        w.send(1)
    with pytest.raises(OSError, match='closed'):
        r._check_closed()


def test_stdlib_reads_fast_path_pickles():
    import multiprocessing.connection as std_connection
    a, b = socket.socketpair()
    ours = connection.Connection(a.detach())
    std = std_connection.Connection(b.detach())
    try:
        for obj in plain_corpus():
            ours.send(obj)
            assert repr(std.recv()) == repr(obj)
            std.send(obj)
            assert repr(ours.recv()) == repr(obj)
    finally:
        ours.close()
        std.close()


def test_another_module_instance_finds_the_full_pickler():
    import importlib.util
    spec = importlib.util.find_spec('multiprocessing_c._mpcore')
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh.loads(fresh.dumps({1, 2})) == {1, 2}
    assert fresh.dumps([1]) == pickle.dumps([1], PROTOCOL)
