"""Shared ctypes objects (docs: "Shared ctypes Objects" and the
multiprocessing.sharedctypes module)."""
import array
import ctypes
import gc
import pickle
import threading

import pytest

import multiprocessing_c
from multiprocessing_c import heap
from multiprocessing_c import sharedctypes
from multiprocessing_c.sharedctypes import (Array, RawArray, RawValue, Value,
                                            copy, synchronized)


class Point(ctypes.Structure):
    _fields_ = [('x', ctypes.c_int), ('y', ctypes.c_double),
                ('z', ctypes.c_longlong)]


def _has_synchronize():
    try:
        import multiprocessing_c.synchronize  # noqa: F401
    except ImportError:
        return False
    return True


needs_synchronize = pytest.mark.skipif(
    not _has_synchronize(), reason='multiprocessing_c.synchronize not merged yet')

CODES = [('i', 4343, 24234), ('d', 3.625, -4.25), ('h', -232, 234),
         ('q', 2 ** 33, 2 ** 34), ('c', b'x', b'y'), ('u', 'a', 'b'),
         ('B', 7, 255), ('f', 0.5, 1.5)]


# ---- children (module level for spawn) ----

def set_values(values):
    for sv, (_, _, new) in zip(values, CODES):
        sv.value = new


def prefix_sums(seq):
    for i in range(1, len(seq)):
        seq[i] += seq[i - 1]


def double_all(x, y, foo, arr, string):
    x.value *= 2
    y.value *= 2
    foo.x *= 2
    foo.y *= 2
    string.value *= 2
    for i in range(len(arr)):
        arr[i] *= 2


def fill_big(arr, value):
    arr[0] = value
    arr[len(arr) - 1] = value
    arr[len(arr) // 2] = value


def increment(counter, n):
    for _ in range(n):
        with counter.get_lock():
            counter.value += 1


def run(ctx, target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(30)
    assert p.exitcode == 0


# ---- values ----

@pytest.mark.parametrize('code,value,_', CODES)
def test_raw_value_typecodes(code, value, _):
    v = RawValue(code, value)
    assert v.value == value
    assert isinstance(v, sharedctypes.typecode_to_type[code])


def test_raw_value_default_is_zero():
    for _ in range(3):
        v = RawValue('q')
        assert v.value == 0
        v.value = -1


def test_raw_value_ctypes_type_and_structure():
    v = RawValue(ctypes.c_double, 1.25)
    assert v.value == 1.25
    p = RawValue(Point, 3, 2.5, 2 ** 40)
    assert (p.x, p.y, p.z) == (3, 2.5, 2 ** 40)


def test_value_without_lock_is_raw():
    v = Value('i', 5, lock=False)
    assert isinstance(v, ctypes.c_int)
    assert not hasattr(v, 'get_lock')
    assert not hasattr(v, 'get_obj')
    r = RawValue('i', 5)
    assert not hasattr(r, 'get_lock')


def test_value_with_given_lock():
    lock = threading.RLock()
    v = Value('i', 5, lock=lock)
    assert v.get_lock() is lock
    assert isinstance(v.get_obj(), ctypes.c_int)
    assert v.value == 5
    v.value = 9
    assert v.get_obj().value == 9
    with v:
        assert v.value == 9
    assert v.acquire() is True
    v.release()
    assert repr(v) == '<Synchronized wrapper for c_int(9)>'


def test_value_bad_lock():
    with pytest.raises(AttributeError, match='acquire'):
        Value('i', 5, lock='navalue')
    with pytest.raises(AttributeError):
        Array('i', 3, lock='notalock')


@needs_synchronize
def test_array_lock_from_context(ctx):
    arr = ctx.Array('i', 4)
    from multiprocessing_c import synchronize
    assert isinstance(arr.get_lock(), synchronize.RLock)
    # The same lock object serves several wrappers when given.
    lock = ctx.Lock()
    a = ctx.Array('i', 2, lock=lock)
    b = ctx.Value('d', 1.0, lock=lock)
    assert a.get_lock() is lock and b.get_lock() is lock
    with a:
        assert not lock.acquire(False)


@needs_synchronize
def test_value_default_lock_is_rlock():
    v = Value('i', 5)
    lock = v.get_lock()
    # An RLock: the same process may take it twice.
    with lock:
        with lock:
            v.value += 1
    assert v.value == 6
    v2 = Value('i', 5, lock=None)
    assert v2.get_lock() is not None


# ---- arrays ----

def test_raw_array_from_sequence_and_size():
    seq = [680, 626, 934, 821, 150, 233, 548, 982, 714, 831]
    arr = RawArray('i', seq)
    assert len(arr) == len(seq)
    assert arr[3] == seq[3]
    assert list(arr[2:7]) == seq[2:7]
    arr[4:8] = seq[4:8] = array.array('i', [1, 2, 3, 4])
    assert list(arr[:]) == seq
    z = RawArray(ctypes.c_double, 4)
    assert list(z) == [0.0] * 4


def test_array_from_size_is_zeroed_each_time():
    for _ in range(3):
        arr = Array('i', 10, lock=False)
        assert list(arr) == [0] * 10
        arr[:] = range(10)
        assert list(arr) == list(range(10))
        del arr


def test_raw_array_initializer_keeps_ctypes_rules():
    # Out-of-range values wrap as ctypes does, not OverflowError.
    arr = RawArray('B', [256 + 7, 1])
    assert list(arr) == [7, 1]
    with pytest.raises(TypeError):
        RawArray('i', [1.5])
    floats = RawArray('f', [0.1, 2.5])
    assert floats[1] == 2.5
    gen = RawArray('l', (i * i for i in range(5)))
    assert list(gen) == [0, 1, 4, 9, 16]
    structs = RawArray(Point, [(1, 2.0, 3), (4, 5.0, 6)])
    assert structs[1].x == 4


def test_wchar_array():
    w = RawArray('u', 'héllo')
    assert w.value == 'héllo' and len(w) == 5
    w[0] = 'H'
    assert w[:] == 'Héllo'


def test_char_array_value_and_raw():
    s = RawArray('c', 10)
    s.value = b'hello'
    assert s.value == b'hello'
    assert s.raw == b'hello' + bytes(5)
    sync = Array('c', b'abc', lock=threading.Lock())
    assert isinstance(sync, sharedctypes.SynchronizedString)
    sync.value = b'xy'
    assert sync.value == b'xy'
    assert sync.raw == b'xy\x00'     # .value writes the terminator
    sync.raw = b'zzz'
    assert sync.value == b'zzz'


def test_synchronized_array_slices():
    arr = Array('d', [1.0, 2.0, 3.0, 4.0], lock=threading.RLock())
    assert isinstance(arr, sharedctypes.SynchronizedArray)
    assert len(arr) == 4
    assert arr[1] == 2.0
    assert arr[1:3] == [2.0, 3.0]
    arr[0:2] = [9.0, 8.0]
    assert arr[:] == [9.0, 8.0, 3.0, 4.0]
    arr[-1] = 0.5
    assert arr[3] == 0.5
    assert repr(arr).startswith('<SynchronizedArray wrapper for <')


def test_synchronized_structure():
    p = Value(Point, 1, 2.0, 3, lock=threading.RLock())
    assert type(p).__name__ == 'SynchronizedPoint'
    assert (p.x, p.y, p.z) == (1, 2.0, 3)
    p.x = 10
    assert p.get_obj().x == 10
    with pytest.raises(TypeError):
        synchronized(p)


def test_synchronized_explicit():
    obj = RawValue('i', 3)
    s = synchronized(obj, threading.Lock())
    assert s.get_obj() is obj
    s.value = 4
    assert obj.value == 4


class RecordingLock:
    """A lock object that is not a SemLock: the wrapper must go through
    its acquire() and release() methods."""

    def __init__(self, fail_release=False):
        self.calls = []
        self.held = 0
        self.fail_release = fail_release

    def acquire(self):
        self.calls.append('acquire')
        self.held += 1
        return True

    def release(self):
        self.calls.append('release')
        self.held -= 1
        if self.fail_release:
            raise RuntimeError('release failed')

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


def test_locked_field_calls_any_locks_methods():
    lock = RecordingLock()
    v = Value('i', 1, lock=lock)
    assert v.value == 1
    v.value = 5
    assert lock.calls == ['acquire', 'release'] * 2 and lock.held == 0
    assert v.get_obj().value == 5
    p = Value(Point, 1, 2.0, 3, lock=lock)
    del lock.calls[:]
    p.y = 7.5
    assert p.y == 7.5
    assert lock.calls == ['acquire', 'release'] * 2 and lock.held == 0


def test_locked_field_releases_on_error():
    lock = RecordingLock()
    s = Array('c', 3, lock=lock)
    with pytest.raises(ValueError):
        s.value = b'too long'           # ctypes refuses; the lock is let go
    assert lock.held == 0
    with pytest.raises(TypeError):
        s.raw = 5
    assert lock.held == 0 and lock.calls[-1] == 'release'


def test_locked_field_release_error_keeps_the_first_as_context():
    lock = RecordingLock(fail_release=True)
    s = Array('c', 3, lock=lock)
    with pytest.raises(RuntimeError, match='release failed') as info:
        s.value = b'too long'
    assert isinstance(info.value.__context__, ValueError)
    with pytest.raises(RuntimeError, match='release failed'):
        s.value                           # a plain read: the release error
    assert lock.held == 0
    del info                # its traceback holds this frame (and `s`)


def test_locked_field_descriptor_itself():
    field = sharedctypes.Synchronized.value
    assert isinstance(field, multiprocessing_c._mpcore.LockedField)
    assert field.name == 'value' and 'value' in field.__doc__
    assert sharedctypes.make_property('value') is field
    v = Value('i', 1, lock=threading.Lock())
    with pytest.raises(AttributeError, match='cannot be deleted'):
        del v.value
    assert v.value == 1
    with pytest.raises(TypeError):
        multiprocessing_c._mpcore.LockedField(42)


@needs_synchronize
def test_locked_field_holds_a_semlock_while_reading(ctx):
    # The C path for SemLocks: a plain Lock is taken and dropped around
    # each access (a held one would block, so check from inside).
    lock = ctx.Lock()
    v = ctx.Value('i', 3, lock=lock)
    seen = []

    class Probe(ctypes.Structure):
        _fields_ = [('n', ctypes.c_int)]
    p = synchronized(RawValue(Probe, 4), lock)
    assert p.n == 4 and v.value == 3
    v.value = 8
    assert lock.acquire(False)          # free again after every access
    lock.release()
    rlock = ctx.RLock()
    w = ctx.Value('d', 1.5, lock=rlock)
    with rlock:                         # re-entered by the field access
        w.value += 1
        seen.append(rlock._count())
    assert w.value == 2.5 and seen == [1] and rlock._count() == 0


def test_synchronized_array_python2_slice_methods():
    arr = Array('i', [1, 2, 3, 4], lock=RecordingLock())
    assert arr.__getslice__(1, 3) == [2, 3]
    arr.__setslice__(0, 2, [7, 8])
    assert arr[:] == [7, 8, 3, 4]
    assert type(arr).__getitem__.__name__ == '__getitem__'


def test_copy():
    foo = RawValue(Point, 2, 5.0, 2 ** 33)
    bar = copy(foo)
    foo.x = 0
    foo.y = 0
    foo.z = 0
    assert (bar.x, bar.y, bar.z) == (2, 5.0, 2 ** 33)
    plain = copy(Point(1, 1.0, 1))      # a plain ctypes object too
    assert plain.x == 1


def test_block_freed_when_last_user_dies():
    h = heap.BufferWrapper._heap
    gc.collect()        # blocks of earlier tests' cyclic garbage go first
    before = h._n_frees
    arr = RawArray('i', 100)
    view = memoryview(arr)
    del arr
    gc.collect()
    assert h._n_frees == before     # the memoryview still uses it
    view.release()
    del view
    gc.collect()
    assert h._n_frees == before + 1


def test_pickling_outside_spawn_is_refused():
    with pytest.raises(RuntimeError):
        pickle.dumps(RawValue('i', 1))
    from multiprocessing_c.reduction import ForkingPickler
    with pytest.raises(RuntimeError):
        ForkingPickler.dumps(RawArray('i', 3))


def test_big_array_create_and_access():
    arr = Array('d', 1_000_000, lock=False)
    assert arr[999_999] == 0.0
    arr[123_456] = 1.5
    assert arr[123_456] == 1.5
    assert sum(arr[123_450:123_460]) == 1.5


def test_context_factories():
    ctx = multiprocessing_c.get_context('fork')
    v = ctx.RawValue('i', 3)
    assert v.value == 3
    a = ctx.RawArray('i', [1, 2])
    assert list(a) == [1, 2]
    b = ctx.Array('i', 2, lock=False)
    assert list(b) == [0, 0]


# ---- across processes ----

def test_values_in_child(ctx):
    values = [RawValue(code, value) for code, value, _ in CODES]
    run(ctx, set_values, values)
    for sv, (_, _, new) in zip(values, CODES):
        assert sv.value == new


def test_array_in_child(ctx):
    seq = list(range(1, 11))
    arr = RawArray('i', seq)
    run(ctx, prefix_sums, arr)
    prefix_sums(seq)
    assert list(arr) == seq


def test_mixed_objects_in_child(ctx):
    lock = threading.RLock() if ctx.get_start_method() == 'fork' else False
    x = Value('i', 7, lock=lock)
    y = Value(ctypes.c_double, 1.0 / 3.0, lock=lock)
    foo = Value(Point, 3, 2, lock=lock)
    arr = Array('d', list(range(10)), lock=lock)
    string = Array('c', 20, lock=lock)
    string.value = b'hello'
    run(ctx, double_all, x, y, foo, arr, string)
    assert x.value == 14
    assert y.value == pytest.approx(2.0 / 3.0)
    assert (foo.x, foo.y) == (6, 4.0)
    assert list(arr[:]) == [2.0 * i for i in range(10)]
    assert string.value == b'hellohello'


def test_big_array_in_child(ctx):
    arr = RawArray('q', 1_000_000)
    run(ctx, fill_big, arr, 77)
    assert (arr[0], arr[500_000], arr[999_999]) == (77, 77, 77)
    assert arr[1] == 0


@needs_synchronize
def test_synchronized_in_child(ctx):
    # Locks come from the process's context (as with the stdlib, a
    # fork-context lock cannot go to a spawned child).
    x = ctx.Value('i', 7)
    arr = ctx.Array('d', list(range(10)))
    foo = ctx.Value(Point, 3, 2)
    string = ctx.Array('c', 20)
    string.value = b'hello'
    y = Value('d', 0.5, ctx=ctx)
    run(ctx, double_all, x, y, foo, arr, string)
    assert x.value == 14 and y.value == 1.0
    assert foo.x == 6
    assert arr[:] == [2.0 * i for i in range(10)]
    assert string.value == b'hellohello'


@needs_synchronize
def test_counter_under_lock(ctx):
    counter = ctx.Value('i', 0)
    procs = [ctx.Process(target=increment, args=(counter, 500))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert counter.value == 2000
