"""The shared-memory heap that sharedctypes allocates from.

The allocator lives in C (``_mpcore.Heap``): arenas are anonymous shared
files mapped MAP_SHARED, blocks are ``_mpcore.Block`` objects that export
their bytes through the buffer protocol and give their space back when they
are collected.  This module adds the stdlib's names on top: ``Arena``,
``Heap`` (with the introspection attributes tests read) and
``BufferWrapper``, plus pickling of arenas for spawned children.
"""

import copyreg
import os
import threading
import weakref

from . import _mpcore

__all__ = ['BufferWrapper']

Arena = _mpcore.Arena

# Arenas already mapped in this process, by the file's identity, so that
# several objects in one arena passed to a child map it once.
_attached = weakref.WeakValueDictionary()


def _arena_key(fd):
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def reduce_arena(a):
    from .context import assert_spawning
    from .reduction import DupFd
    assert_spawning(a)
    if a.fd < 0:
        raise ValueError('Arena is unpicklable because it has no fd')
    return rebuild_arena, (a.size, DupFd(a.fd))


def rebuild_arena(size, dupfd):
    fd = dupfd.detach()
    try:
        key = _arena_key(fd)
    except OSError:
        key = None
    if key is not None:
        known = _attached.get(key)
        if known is not None:
            if known.fd != fd:
                os.close(fd)
            return known
    arena = Arena(size, fd)
    if key is not None:
        _attached[key] = arena
    return arena


copyreg.pickle(Arena, reduce_arena)


class Heap(_mpcore.Heap):
    """The process's allocator of shared blocks (see ``_mpcore.Heap``).

    Blocks are freed synchronously by the C allocator when collected, so
    there is never a pending free list, and the lock exists only for code
    that wants a stable view of the introspection attributes.
    """

    _alignment = 16

    def __init__(self, size=None):
        super().__init__()
        self._lock = threading.RLock()
        self._pending_free_blocks = []

    @property
    def _arenas(self):
        return self._get_arenas()

    @property
    def _len_to_seq(self):
        """{length: [(arena, start, stop), ...]} of free space."""
        d = {}
        for arena in self._get_arenas():
            for start, stop in arena._free_blocks():
                d.setdefault(stop - start, []).append((arena, start, stop))
        return d

    @property
    def _allocated_blocks(self):
        """{arena: {(start, stop), ...}} for arenas holding live blocks."""
        d = {}
        for arena in self._get_arenas():
            used = arena._used_blocks()
            if used:
                d[arena] = set(used)
        return d

    def __repr__(self):
        return '<%s arenas=%d mallocs=%d frees=%d>' % (
            type(self).__name__, len(self._get_arenas()),
            self._n_mallocs, self._n_frees)


def _rebuild_wrapper(arena, start, size):
    obj = BufferWrapper.__new__(BufferWrapper)
    obj._block = arena._block(start, size)
    obj.size = size
    return obj


class BufferWrapper(object):
    """A block of ``size`` zeroed shared bytes from the process's heap."""

    _heap = Heap()

    def __init__(self, size):
        # Heap.malloc checks the size: ValueError below zero,
        # OverflowError past what an address space can hold.
        self._block = self._heap.malloc(size)
        self.size = size

    @property
    def _state(self):
        b = self._block
        return ((b.arena, b.start, b.stop), self.size)

    def create_memoryview(self):
        return memoryview(self._block)

    def __reduce__(self):
        b = self._block
        return _rebuild_wrapper, (b.arena, b.start, self.size)
