"""The shared heap: _mpcore.Arena/Heap/Block and multiprocessing_c.heap."""
import ctypes
import gc
import mmap
import os
import random
import sys
import weakref

import pytest

from multiprocessing_c import _mpcore
from multiprocessing_c import heap


def check_layout(h):
    """Every arena is tiled exactly by its used and free extents."""
    total_used = total_free = 0
    for arena in h._arenas:
        used = arena._used_blocks()
        free = arena._free_blocks()
        extents = sorted([(s, e, 'u') for s, e in used] +
                         [(s, e, 'f') for s, e in free])
        pos = 0
        for start, stop, _ in extents:
            assert start == pos, (arena, extents)
            pos = stop
        assert pos == arena.size
        for a, b in zip(free, free[1:]):
            # Coalescing: two free extents never touch.
            assert a[1] < b[0]
        total_used += sum(e - s for s, e in used)
        total_free += sum(e - s for s, e in free)
    assert total_used + total_free == sum(a.size for a in h._arenas)


# ---------------------------------------------------------------------------
# Arena


def test_arena_is_a_shared_buffer():
    a = heap.Arena(mmap.PAGESIZE)
    assert a.size == mmap.PAGESIZE
    assert a.fd >= 0
    m = memoryview(a)
    assert m.nbytes == a.size and not m.readonly
    assert bytes(m[:16]) == bytes(16)
    m[0:5] = b'hello'
    # Another mapping of the same file sees the bytes.
    b = heap.Arena(a.size, os.dup(a.fd))
    assert bytes(memoryview(b)[:5]) == b'hello'
    m.release()


def test_arena_ctypes_from_buffer():
    a = heap.Arena(4096)
    arr = (ctypes.c_int * 10).from_buffer(a)
    arr[3] = 77
    assert memoryview(a).cast('i')[3] == 77


def test_arena_bad_arguments():
    with pytest.raises(ValueError):
        heap.Arena(0)
    with pytest.raises(ValueError):
        heap.Arena(-5)
    with pytest.raises(TypeError):
        heap.Arena('big')
    with pytest.raises(OSError):
        heap.Arena(4096, 999999)
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError):
            heap.Arena(4096, r)     # a pipe has no size
    finally:
        os.close(r)
        os.close(w)


def test_arena_attach_checks_size():
    a = heap.Arena(4096)
    fd = os.dup(a.fd)
    try:
        with pytest.raises(ValueError, match='less than'):
            heap.Arena(8192, fd)
    finally:
        os.close(fd)


def test_arena_closes_its_fd():
    a = heap.Arena(4096)
    fd = a.fd
    os.fstat(fd)
    del a
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_arena_block_view_bounds():
    a = heap.Arena(4096)
    b = a._block(100, 50)
    assert len(b) == 50 and b.start == 100
    with pytest.raises(ValueError):
        a._block(4000, 200)
    with pytest.raises(ValueError):
        a._block(-1, 2)


# ---------------------------------------------------------------------------
# Heap allocator


def test_malloc_returns_zeroed_aligned_blocks():
    h = heap.Heap()
    blocks = [h.malloc(n) for n in (1, 7, 16, 100, 5000)]
    for b in blocks:
        assert b.start % 16 == 0
        assert b.stop - b.start >= len(b)
        assert bytes(memoryview(b)) == bytes(len(b))
    check_layout(h)


def test_malloc_zero_and_errors():
    h = heap.Heap()
    b = h.malloc(0)
    assert len(b) == 0 and b.stop > b.start
    with pytest.raises(ValueError):
        h.malloc(-1)
    with pytest.raises(OverflowError):
        h.malloc(sys.maxsize)
    with pytest.raises(TypeError):
        h.malloc(1.5)
    with pytest.raises(MemoryError):
        h.malloc(2 ** 50)       # more than any test machine's memory
    with pytest.raises(MemoryError):
        heap.Arena(2 ** 50)


def test_reused_space_is_zeroed():
    h = heap.Heap()
    for _ in range(3):
        b = h.malloc(4096)
        assert bytes(memoryview(b)) == bytes(4096)
        memoryview(b)[:] = b'\xff' * 4096
        del b


def test_many_small_blocks():
    h = heap.Heap()
    blocks = [h.malloc(8) for _ in range(20000)]
    starts = {(id(b.arena), b.start) for b in blocks}
    assert len(starts) == len(blocks)       # no overlap
    check_layout(h)
    assert h._n_mallocs == 20000
    del blocks
    assert h._n_frees == 20000
    assert h._allocated_blocks == {}
    # Everything coalesced back to one free extent per arena.
    for arena in h._arenas:
        assert arena._free_blocks() == [(0, arena.size)]


def test_few_huge_blocks():
    h = heap.Heap()
    sizes = [64 << 20, 10 << 20, 3 << 20 | 5]
    blocks = [h.malloc(n) for n in sizes]
    for b, n in zip(blocks, sizes):
        assert len(b) == n
        m = memoryview(b)
        m[0] = 1
        m[n - 1] = 2
        assert m[0] == 1 and m[n - 1] == 2
    check_layout(h)


def test_free_and_reuse_same_space():
    h = heap.Heap()
    a = h.malloc(1000)
    b = h.malloc(1000)
    where = (a.arena, a.start)
    del a
    c = h.malloc(500)       # fits in the hole a left
    assert (c.arena, c.start) == where
    del b, c
    check_layout(h)


def test_huge_arena_reused_after_free():
    h = heap.Heap()
    b = h.malloc(8_000_000)
    arena = b.arena
    memoryview(b)[:4] = b'dirt'
    del b
    assert h._arenas == [arena]     # kept for reuse
    b = h.malloc(8_000_000)
    assert b.arena is arena
    assert bytes(memoryview(b)[:4]) == bytes(4)


def test_discard_threshold_unmaps_empty_arenas():
    h = heap.Heap()
    h._DISCARD_FREE_SPACE_LARGER_THAN = 0
    b = h.malloc(100)
    r = weakref.ref(b.arena)
    del b
    assert h._arenas == []
    assert r() is None


def test_block_keeps_arena_alive_through_views():
    h = heap.Heap()
    h._DISCARD_FREE_SPACE_LARGER_THAN = 0
    b = h.malloc(64)
    arr = (ctypes.c_char * 64).from_buffer(b)
    del b
    assert h._n_frees == 0          # arr still uses it
    arr.value = b'still mapped'
    assert arr.value == b'still mapped'
    del arr
    assert h._n_frees == 1
    assert h._arenas == []


def test_random_pattern_like_the_stdlib_suite():
    # The shape of CPython's _TestHeap.test_heap, on our heap.
    h = heap.Heap()
    h._DISCARD_FREE_SPACE_LARGER_THAN = 0
    rnd = random.Random(1234)
    blocks = []
    for _ in range(5000):
        blocks.append(h.malloc(int(rnd.lognormvariate(0, 1) * 1000)))
        if len(blocks) > 50:
            del blocks[rnd.randrange(50)]
    with h._lock:
        check_layout(h)
        free = sum(e - s for L in h._len_to_seq.values() for _, s, e in L)
        occupied = sum(e - s for S in h._allocated_blocks.values()
                       for s, e in S)
        assert free + occupied == sum(a.size for a in h._arenas)
    rnd.shuffle(blocks)
    blocks.clear()
    assert h._n_frees == h._n_mallocs
    assert h._pending_free_blocks == []
    assert h._arenas == []
    assert h._allocated_blocks == {}
    assert h._len_to_seq == {}


def test_buffer_wrapper():
    w = heap.BufferWrapper(100)
    m = w.create_memoryview()
    assert m.nbytes == 100
    (arena, start, stop), size = w._state
    assert size == 100 and stop - start >= 100
    with pytest.raises(ValueError):
        heap.BufferWrapper(-1)
    with pytest.raises(OverflowError):
        heap.BufferWrapper(sys.maxsize)


def test_free_from_gc_with_cycles():
    # Frees run from the GC; there is no Python lock to deadlock on.
    old = gc.get_threshold()
    gc.set_threshold(10)
    try:
        h = heap.BufferWrapper._heap
        before = h._n_frees
        for _ in range(3000):
            a = heap.BufferWrapper(1)
            b = heap.BufferWrapper(1)
            a.buddy = b
            b.buddy = a
        del a, b
        gc.collect()
        assert h._n_frees - before == 6000
    finally:
        gc.set_threshold(*old)


def test_arena_pickles_only_when_spawning():
    import pickle
    a = heap.Arena(4096)
    with pytest.raises(RuntimeError):
        pickle.dumps(a)


# ---------------------------------------------------------------------------
# fork


def _fork_and_wait(fn):
    pid = os.fork()
    if pid == 0:
        try:
            code = fn()
        except BaseException:
            code = 99
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_blocks_survive_fork_and_child_gets_fresh_arenas():
    h = heap.Heap()
    b = h.malloc(8)
    m = memoryview(b).cast('q')
    m[0] = 1

    def child():
        m[0] = 42
        c = h.malloc(8)
        # The child must never carve from the parent's arenas.
        return 0 if c.arena is not b.arena else 1

    assert _fork_and_wait(child) == 0
    assert m[0] == 42
    # The parent still allocates normally in its arena.
    d = h.malloc(8)
    assert d.arena is b.arena
    m.release()


def test_child_freeing_inherited_blocks_is_harmless():
    h = heap.Heap()
    blocks = [h.malloc(32) for _ in range(10)]

    def child():
        blocks.clear()
        gc.collect()
        c = h.malloc(32)
        memoryview(c)[:] = b'x' * 32
        return 0

    assert _fork_and_wait(child) == 0
    for b in blocks:
        assert bytes(memoryview(b)) == bytes(32)
    check_layout(h)


def test_blocks_never_overlap_under_churn():
    # Each live block holds its own byte pattern; any overlap between
    # blocks, or a dirty reused block, shows up as a wrong byte.
    h = heap.Heap()
    h._DISCARD_FREE_SPACE_LARGER_THAN = 1 << 20
    rnd = random.Random(99)
    live = {}
    for i in range(4000):
        if live and rnd.random() < 0.45:
            del live[rnd.choice(list(live))]
            continue
        size = rnd.choice([1, 8, 24, 100, 1000, 5000, 70000])
        b = h.malloc(size)
        assert bytes(memoryview(b)) == bytes(size)
        tag = i % 251 + 1
        memoryview(b)[:] = bytes([tag]) * size
        live[i] = (b, tag)
        if i % 500 == 0:
            for blk, t in live.values():
                assert bytes(memoryview(blk)) == bytes([t]) * len(blk)
    for blk, t in live.values():
        assert bytes(memoryview(blk)) == bytes([t]) * len(blk)
    check_layout(h)
    del b, blk
    live.clear()
    assert h._allocated_blocks == {}


# ---------------------------------------------------------------------------
# the C types themselves


def test_c_signatures_are_introspectable():
    import inspect
    assert list(inspect.signature(_mpcore.Heap.malloc).parameters) == [
        'self', 'size']
    assert list(inspect.signature(_mpcore.shm_open).parameters) == [
        'path', 'flags', 'mode']
    assert list(inspect.signature(_mpcore.shm_unlink).parameters) == ['path']
    if sys.version_info >= (3, 10):
        # 3.9 drops the signature from a heap type's docstring.
        assert list(inspect.signature(_mpcore.Arena).parameters) == ['size', 'fd']


def test_c_types_are_immutable_and_blocks_not_instantiable():
    # Py_TPFLAGS_IMMUTABLETYPE came with 3.10: 3.9's heap types are mutable.
    for tp in (_mpcore.Arena, _mpcore.Block) if sys.version_info >= (3, 10) else ():
        with pytest.raises(TypeError):
            tp.foo = 1
    with pytest.raises(TypeError):
        _mpcore.Block()


def test_fresh_module_has_its_own_types():
    import importlib.util
    spec = importlib.util.find_spec('multiprocessing_c._mpcore')
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh.Heap is not _mpcore.Heap
    b = fresh.Heap().malloc(10)
    assert type(b) is fresh.Block and type(b.arena) is fresh.Arena


def test_arena_fd_is_close_on_exec():
    a = heap.Arena(4096)
    assert not os.get_inheritable(a.fd)


def _open_fds():
    return len(os.listdir('/proc/self/fd'))


def test_no_fd_or_mapping_leak():
    from multiprocessing_c import sharedctypes
    gc.collect()
    before = _open_fds()
    for _ in range(50):
        h = heap.Heap()
        blocks = [h.malloc(n) for n in (10, 300_000, 5_000_000)]
        arr = sharedctypes.RawArray('d', 100_000)
        del blocks, arr, h
    gc.collect()
    assert _open_fds() <= before + 2    # the shared heap may add an arena


def test_threads_allocate_and_free_concurrently():
    import threading
    h = heap.Heap()
    errors = []

    def work(seed):
        rnd = random.Random(seed)
        mine = []
        try:
            for i in range(300):
                size = rnd.choice([16, 1000, 2 << 20])
                b = h.malloc(size)
                memoryview(b)[:1] = bytes([seed])
                mine.append(b)
                if len(mine) > 5:
                    victim = mine.pop(rnd.randrange(len(mine)))
                    assert memoryview(victim)[0] == seed
        except BaseException as e:      # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    check_layout(h)
