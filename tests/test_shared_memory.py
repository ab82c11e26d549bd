"""multiprocessing_c.shared_memory: SharedMemory and ShareableList, across
processes and against the stdlib's module (docs: "shared_memory")."""
import os
import pickle
import struct
from unittest import mock

import pytest

from multiprocessing_c import _mpcore
from multiprocessing_c import shared_memory
from multiprocessing_c.shared_memory import ShareableList, SharedMemory


def shm_path(name):
    return '/dev/shm/' + name.lstrip('/')


def unique(prefix):
    return '%s_%d' % (prefix, os.getpid())


@pytest.fixture
def stdlib_shm():
    # Only tests import the stdlib; the package never does.
    from multiprocessing import resource_tracker, shared_memory as std
    return std, resource_tracker


# ---- children ----

def write_by_name(name, data):
    shm = SharedMemory(name)
    shm.buf[:len(data)] = data
    shm.close()


def write_by_object(shm, data):
    shm.buf[:len(data)] = data
    shm.close()


def edit_list(sl):
    sl[0] = sl[0] * 2
    sl[1] = 'from child'
    sl[2] = None


def edit_list_by_name(name):
    sl = ShareableList(name=name)
    sl[-1] = b'child'
    sl.shm.close()


def run(ctx, target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(30)
    assert p.exitcode == 0


# ---- the C layer ----

def test_shm_open_and_unlink():
    name = '/' + unique('mpc_raw')
    fd = _mpcore.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        assert os.path.exists(shm_path(name))
        assert not os.get_inheritable(fd)
        with pytest.raises(FileExistsError):
            _mpcore.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR)
    finally:
        os.close(fd)
        _mpcore.shm_unlink(name)
    assert not os.path.exists(shm_path(name))
    with pytest.raises(FileNotFoundError):
        _mpcore.shm_unlink(name)
    with pytest.raises(FileNotFoundError):
        _mpcore.shm_open(name, os.O_RDWR)


def test_shm_bad_names():
    with pytest.raises(ValueError):
        _mpcore.shm_open('/a\0b', os.O_RDWR)
    with pytest.raises(TypeError):
        _mpcore.shm_open(b'/abc', os.O_RDWR)
    with pytest.raises(OSError):
        _mpcore.shm_open('/a/b', os.O_RDWR | os.O_CREAT)


# ---- SharedMemory ----

def test_basics():
    name = unique('mpc_tsmb')
    sms = SharedMemory(name, create=True, size=512)
    try:
        assert sms.name == name
        assert sms._name == '/' + name
        assert sms.size >= 512
        assert len(sms.buf) >= sms.size
        assert name in str(sms) and str(sms.size) in str(sms)
        assert repr(sms) == "SharedMemory(%r, size=%d)" % (name, sms.size)
        sms.buf[0] = 42
        also = SharedMemory(name)
        assert also.buf[0] == 42
        also.close()
        bigger = SharedMemory(name, size=20 * sms.size)
        assert bigger.size < 20 * sms.size      # size ignored on attach
        bigger.close()
        with pytest.raises(FileExistsError):
            SharedMemory(name, create=True, size=512)

        class OptionalAttach(SharedMemory):
            _flags = os.O_CREAT | os.O_RDWR

        ok = OptionalAttach(name)
        assert ok.size == sms.size
        ok.close()
    finally:
        sms.close()
        sms.unlink()
    assert not os.path.exists(shm_path(name))


def test_argument_errors():
    with pytest.raises(ValueError):
        SharedMemory(create=True, size=-2)
    with pytest.raises(ValueError):
        SharedMemory(create=True, size=0)
    with pytest.raises(ValueError):
        SharedMemory(create=True)
    with pytest.raises(ValueError):
        SharedMemory(create=False)
    with pytest.raises(FileNotFoundError):
        SharedMemory('mpc_not_there_%d' % os.getpid())


def test_random_names_follow_the_stdlib_rules():
    sms = SharedMemory(create=True, size=10)
    try:
        assert sms._name.startswith('/psm_')
        assert sms.name == sms._name[1:]
        assert len(sms._name) <= shared_memory._SHM_SAFE_NAME_LENGTH
        assert os.path.exists(shm_path(sms.name))
    finally:
        sms.close()
        sms.unlink()


def test_name_collision_retries():
    names = ['/' + unique('mpc_fn1'), '/' + unique('mpc_fn2')]
    with mock.patch.object(shared_memory, '_make_filename') as make:
        make.side_effect = names
        a = SharedMemory(create=True, size=1)
        make.side_effect = names
        b = SharedMemory(create=True, size=1)
    try:
        assert (a._name, b._name) == tuple(names)
    finally:
        for s in (a, b):
            s.close()
            s.unlink()


def test_double_unlink():
    name = unique('mpc_dbl')
    uno = SharedMemory(name, create=True, size=5000)
    duo = SharedMemory(name)
    duo.unlink()
    duo.close()
    uno.close()
    with pytest.raises(FileNotFoundError):
        uno.unlink()


def test_close_is_idempotent_and_releases_buf():
    sms = SharedMemory(create=True, size=100)
    sms.close()
    sms.close()
    assert sms.buf is None
    sms.unlink()


def test_pickle_round_trip():
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        sms = SharedMemory(create=True, size=512)
        try:
            sms.buf[0:6] = b'pickle'
            sms2 = pickle.loads(pickle.dumps(sms, protocol=proto))
            assert isinstance(sms2, SharedMemory)
            assert sms2.name == sms.name
            sms2.buf[0:6] = b'newval'
            assert bytes(sms.buf[0:6]) == b'newval'
            sms2.close()
        finally:
            sms.close()
            sms.unlink()
        with pytest.raises(FileNotFoundError):
            pickle.loads(pickle.dumps(sms, protocol=proto))


def test_across_processes(ctx):
    sms = SharedMemory(create=True, size=512)
    try:
        run(ctx, write_by_name, sms.name, b'howdy')
        assert bytes(sms.buf[:5]) == b'howdy'
        run(ctx, write_by_object, sms, b'HELLO')
        assert bytes(sms.buf[:5]) == b'HELLO'
    finally:
        sms.close()
        sms.unlink()


# ---- interoperability with the stdlib ----

def test_stdlib_attaches_to_ours(stdlib_shm):
    std, std_tracker = stdlib_shm
    ours = SharedMemory(create=True, size=64)
    try:
        ours.buf[:4] = b'ours'
        theirs = std.SharedMemory(ours.name)
        # 3.11's stdlib registers attached segments with its own tracker;
        # we unlink it, so tell that tracker to forget it.
        std_tracker.unregister(theirs._name, 'shared_memory')
        assert bytes(theirs.buf[:4]) == b'ours'
        assert theirs.size == ours.size
        theirs.buf[4:8] = b'std!'
        theirs.close()
        assert bytes(ours.buf[:8]) == b'oursstd!'
    finally:
        ours.close()
        ours.unlink()


def test_we_attach_to_stdlib(stdlib_shm):
    std, _ = stdlib_shm
    theirs = std.SharedMemory(create=True, size=64)
    try:
        theirs.buf[:3] = b'std'
        ours = SharedMemory(theirs.name)
        assert ours._name == theirs._name
        assert bytes(ours.buf[:3]) == b'std'
        ours.buf[3:6] = b'ok!'
        ours.close()
        assert bytes(theirs.buf[:6]) == b'stdok!'
    finally:
        theirs.close()
        theirs.unlink()


def test_shareable_list_interop_both_ways(stdlib_shm):
    std, std_tracker = stdlib_shm
    # (The stdlib sizes str slots by characters, not UTF-8 bytes, so it
    # truncates long non-ASCII strings itself: keep them short here.)
    items = ['howdy', b'HoWdY', -273.154, 100, None, True, 42, '', 'é' * 3,
             'encodés']
    ours = ShareableList(items)
    try:
        theirs = std.ShareableList(name=ours.shm.name)
        std_tracker.unregister(theirs.shm._name, 'shared_memory')
        assert list(theirs) == items
        assert theirs.format == ours.format
        theirs[3] = 'changed'
        assert ours[3] == 'changed'
        theirs.shm.close()
    finally:
        ours.shm.close()
        ours.shm.unlink()

    theirs = std.ShareableList(items)
    try:
        ours = ShareableList(name=theirs.shm.name)
        assert list(ours) == items
        assert ours.format == theirs.format
        ours[0] = None
        ours[8] = b'bytes!'
        assert theirs[0] is None and theirs[8] == b'bytes!'
        assert ours.format == theirs.format
        ours.shm.close()
    finally:
        theirs.shm.close()
        theirs.shm.unlink()


def test_shareable_list_same_bytes_as_stdlib(stdlib_shm):
    std, _ = stdlib_shm
    items = ['a' * 20, b'', 1.5, -(2 ** 63), False, None, 'é']
    ours = ShareableList(items)
    theirs = std.ShareableList(items)
    try:
        assert bytes(ours.shm.buf) == bytes(theirs.shm.buf)
    finally:
        for sl in (ours, theirs):
            sl.shm.close()
            sl.shm.unlink()


# ---- ShareableList ----

def test_shareable_list_basics():
    sl = ShareableList(['howdy', b'HoWdY', -273.154, 100, None, True, 42])
    try:
        assert sl.shm.name in str(sl)
        assert str(list(sl)) in str(sl)
        with pytest.raises(IndexError):
            sl[7]
        with pytest.raises(IndexError):
            sl[7] = 2
        with pytest.raises(IndexError):
            sl[-8]
        fmt0 = sl._get_packing_format(0)
        sl[0] = 'howdy'
        assert sl._get_packing_format(0) == fmt0
        assert sl.format == '8s8sdqxxxxxx?xxxxxxxx?q'
        assert len(sl) == 7
        with pytest.raises(ValueError):
            sl.index('100')
        assert sl.index(100) == 3
        assert sl[0] == 'howdy' and sl[-2] is True
        assert tuple(sl) == ('howdy', b'HoWdY', -273.154, 100, None, True, 42)
        sl[3] = 42
        assert sl[3] == 42
        sl[4] = 'some'
        assert sl[4] == 'some'
        assert sl.format == '8s8sdq8sxxxxxxx?q'
        with pytest.raises(ValueError, match='exceeds available storage'):
            sl[4] = 'far too many'
        assert sl[4] == 'some'
        sl[0] = 'encodés'               # exactly 8 bytes of UTF-8
        assert sl[0] == 'encodés'
        assert sl[1] == b'HoWdY'
        with pytest.raises(ValueError, match='exceeds available storage'):
            sl[0] = 'encodées'
        with pytest.raises(ValueError, match='exceeds available storage'):
            sl[1] = b'123456789'
        assert sl[1] == b'HoWdY'
        assert sl.count(42) == 2
        assert sl.count(b'HoWdY') == 1
        assert sl.count(b'adios') == 0
        with pytest.raises(TypeError):
            sl[2] = [1, 2]
        assert sl[2] == -273.154
        with pytest.raises(TypeError):
            sl['x']
    finally:
        sl.shm.close()
        sl.shm.unlink()


def test_shareable_list_slot_sizes_match_the_stdlib_and_never_truncate():
    sl = ShareableList(['encodés', 'é' * 9, 'abcdefgh'])
    try:
        # 7 characters in 8 UTF-8 bytes: the stdlib's 8-byte slot holds it.
        assert sl._get_packing_format(0) == '8s'
        # 18 bytes would not fit the stdlib's 16-byte slot: grow it.
        assert sl[1] == 'é' * 9
        assert sl._get_packing_format(1) == '24s'
        assert sl._get_packing_format(2) == '16s'
        copy = ShareableList(sl)
        assert copy.format == sl.format
        copy.shm.close()
        copy.shm.unlink()
    finally:
        sl.shm.close()
        sl.shm.unlink()


def test_shareable_list_unsupported_type():
    with pytest.raises(TypeError):
        ShareableList([1, object()])
    with pytest.raises(struct.error):
        ShareableList([2 ** 70])


def test_shareable_list_copy_and_attach():
    sl = ShareableList(range(5))
    name = unique('mpc_dup')
    copy = ShareableList(sl, name=name)
    try:
        assert copy.shm.name == name
        assert list(copy) == list(sl)
        assert copy.format == sl.format
        copy[-1] = 77
        assert sl[-1] == 4
        tethered = ShareableList(name=sl.shm.name)
        tethered[-1] = 880
        assert sl[-1] == 880
        tethered.shm.close()
    finally:
        for x in (sl, copy):
            x.shm.close()
            x.shm.unlink()


def test_empty_shareable_list():
    empty = ShareableList()
    try:
        assert len(empty) == 0
        assert empty.format == ''
        assert empty.count('any') == 0
        with pytest.raises(ValueError):
            empty.index(None)
        assert list(ShareableList(name=empty.shm.name)) == []
    finally:
        empty.shm.close()
        empty.shm.unlink()


def test_shareable_list_pickling():
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        sl = ShareableList(range(10))
        larger = ShareableList(range(400))
        try:
            data = pickle.dumps(sl, protocol=proto)
            other = pickle.loads(data)
            assert isinstance(other, ShareableList) and other is not sl
            assert other[-1] == 9
            other[4] = 'changed'
            assert sl[4] == 'changed'
            assert len(data) == len(pickle.dumps(larger, protocol=proto))
            other.shm.close()
        finally:
            for x in (sl, larger):
                x.shm.close()
                x.shm.unlink()
        with pytest.raises(FileNotFoundError):
            pickle.loads(data)


def test_shareable_list_generic_alias():
    assert ShareableList[int].__origin__ is ShareableList


def test_shareable_list_across_processes(ctx):
    sl = ShareableList([21, 'x' * 16, 1.5, b''])
    try:
        run(ctx, edit_list, sl)
        assert list(sl[i] for i in range(3)) == [42, 'from child', None]
        run(ctx, edit_list_by_name, sl.shm.name)
        assert sl[3] == b'child'
    finally:
        sl.shm.close()
        sl.shm.unlink()
