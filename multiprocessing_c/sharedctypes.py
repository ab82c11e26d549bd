"""ctypes objects allocated in shared memory.

Every object lives in a block of the shared heap (``heap.BufferWrapper``)
and is made with ``from_buffer``, so it is visible to forked children as
is and can be passed to spawned children at creation time.  The block is
freed when the ctypes object (and anything viewing its memory) is gone.
"""

import array
import ctypes
import operator
import weakref

from . import _mpcore, heap

__all__ = ['RawValue', 'RawArray', 'Value', 'Array', 'copy', 'synchronized']

# Each array typecode and the ctypes type of its items.
typecode_to_type = {
    code: getattr(ctypes, 'c_' + name) for code, name in zip(
        'cubBhHiIlLqQfd',
        'char wchar byte ubyte short ushort int uint long ulong longlong '
        'ulonglong float double'.split())}

# ctypes type -> array typecode whose items have the same size and
# meaning, for initialising big arrays at C speed.
_array_code = {}
for _code, _type in typecode_to_type.items():
    if _code in 'cu':
        continue
    if array.array(_code).itemsize == ctypes.sizeof(_type):
        _array_code[_type] = _code
del _code, _type


def _new_value(type_):
    size = ctypes.sizeof(type_)
    wrapper = heap.BufferWrapper(size)
    return rebuild_ctype(type_, wrapper, None)


def _as_type(typecode_or_type):
    return typecode_to_type.get(typecode_or_type, typecode_or_type)


def RawValue(typecode_or_type, *args):
    '''
    Returns a ctypes object allocated from shared memory
    '''
    type_ = _as_type(typecode_or_type)
    obj = _new_value(type_)
    if args:
        obj.__init__(*args)
    return obj


def _fill_fast(obj, item_type, initializer):
    """Copies `initializer` into the array `obj` through array.array.

    Returns False when ctypes' own rules must decide (values array.array
    rejects, like out-of-range integers that ctypes silently wraps)."""
    code = _array_code.get(item_type)
    if code is None:
        return False
    try:
        src = array.array(code, initializer)
    except (TypeError, OverflowError, ValueError):
        return False
    if len(src) != len(obj):
        return False
    memoryview(obj).cast('B')[:] = memoryview(src).cast('B')
    return True


def RawArray(typecode_or_type, size_or_initializer):
    '''
    Returns a ctypes array allocated from shared memory
    '''
    type_ = _as_type(typecode_or_type)
    if isinstance(size_or_initializer, int):
        return _new_value(type_ * size_or_initializer)
    initializer = size_or_initializer
    if not hasattr(initializer, '__len__'):
        initializer = list(initializer)
    obj = _new_value(type_ * len(initializer))
    if not _fill_fast(obj, type_, initializer):
        obj.__init__(*initializer)
    return obj


def _default_context(ctx):
    if ctx is None:
        from . import context
        ctx = context._default_context.get_context()
    return ctx


def _guard(obj, lock, ctx):
    """`obj` as Value() and Array() hand it out: bare for lock=False,
    else synchronized with `lock` (a new RLock for True or None)."""
    if lock is False:
        return obj
    if lock in (True, None):
        lock = _default_context(ctx).RLock()
    elif not hasattr(lock, 'acquire'):
        raise AttributeError("%r has no method 'acquire'" % lock)
    return synchronized(obj, lock, ctx=ctx)


def Value(typecode_or_type, *args, lock=True, ctx=None):
    """Return a synchronization wrapper for a Value"""
    return _guard(RawValue(typecode_or_type, *args), lock, ctx)


def Array(typecode_or_type, size_or_initializer, *, lock=True, ctx=None):
    """Return a synchronization wrapper for a RawArray"""
    return _guard(RawArray(typecode_or_type, size_or_initializer), lock, ctx)


def copy(obj):
    '''
    Return a copy of the ctypes object `obj` in shared memory
    '''
    new_obj = _new_value(type(obj))
    ctypes.memmove(ctypes.addressof(new_obj), ctypes.addressof(obj),
                   ctypes.sizeof(obj))
    return new_obj


def synchronized(obj, lock=None, ctx=None):
    '''
    Wrap the ctypes object `obj` with a lock (a new RLock by default)
    '''
    if isinstance(obj, SynchronizedBase):
        raise TypeError('object already synchronized')
    return _wrapper_class(obj)(obj, lock, ctx)


def _wrapper_class(obj):
    # Simple values and arrays have fixed wrappers; a structure gets a
    # class of its own, with a locked property per field.
    if isinstance(obj, ctypes._SimpleCData):
        return Synchronized
    if not isinstance(obj, ctypes.Array):
        return _structure_wrapper(type(obj))
    if obj._type_ is ctypes.c_char:
        return SynchronizedString
    return SynchronizedArray


def _structure_wrapper(cls):
    scls = class_cache.get(cls)
    if scls is None:
        fields = {f[0]: make_property(f[0]) for f in cls._fields_}
        scls = class_cache[cls] = type('Synchronized' + cls.__name__,
                                       (SynchronizedBase,), fields)
    return scls


class_cache = weakref.WeakKeyDictionary()

#
# Pickling: only to a child being spawned (the arena's fd goes with it)
#


def reduce_ctype(obj):
    from .context import assert_spawning
    assert_spawning(obj)
    if isinstance(obj, ctypes.Array):
        return rebuild_ctype, (obj._type_, obj._wrapper, obj._length_)
    return rebuild_ctype, (type(obj), obj._wrapper, None)


_registered = set()


def _register_reducer(type_):
    # A type made here (e.g. c_int * 10) pickles through its shared block.
    if type_ in _registered:
        return
    try:
        from .reduction import ForkingPickler
    except ImportError:     # pickling needs the foundation; nothing to do
        return
    ForkingPickler.register(type_, reduce_ctype)
    _registered.add(type_)


def rebuild_ctype(type_, wrapper, length):
    if length is not None:
        type_ = type_ * length
    _register_reducer(type_)
    obj = type_.from_buffer(wrapper._block)
    obj._wrapper = wrapper
    return obj

#
# Synchronized wrappers
#


# How a synchronized wrapper guards a field, in words (kept because the
# stdlib module exposes a `template`; nothing here executes it).
template = """
# field %(name)s of a synchronized wrapper is an _mpcore.LockedField:
#   read:  wrapper.acquire(); wrapper._obj.%(name)s; wrapper.release()
#   write: wrapper.acquire(); wrapper._obj.%(name)s = value; wrapper.release()
"""

prop_cache = {}


def make_property(name):
    """The descriptor reading and writing field `name` of a wrapper's
    object with the wrapper's lock held (in C, see _mpcore.LockedField)."""
    try:
        return prop_cache[name]
    except KeyError:
        field = prop_cache[name] = _mpcore.LockedField(
            name, 'the locked field %r' % name)
        return field



class SynchronizedBase:
    """A ctypes object in shared memory and the lock that guards it.

    ``acquire``/``release`` are the lock's own bound methods, so the
    wrapper is used like its lock, as a context manager too."""

    def __init__(self, obj, lock=None, ctx=None):
        if not lock:
            lock = _default_context(ctx).RLock()
        self._lock, self._obj = lock, obj
        self.acquire, self.release = lock.acquire, lock.release

    def __repr__(self):
        return '<%s wrapper for %s>' % (type(self).__name__, self._obj)

    def get_lock(self):
        """The lock that guards the wrapped object."""
        return self._lock

    def get_obj(self):
        """The wrapped ctypes object (no locking)."""
        return self._obj

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()

    def __reduce__(self):
        # Only while starting a child: both halves travel together.
        from .context import assert_spawning
        assert_spawning(self)
        return synchronized, (self._obj, self._lock)


def _under_lock(op, name):
    """Wrapper method `name`: op(wrapped object, *args) with the wrapper's
    lock held (through the lock's own context manager: C methods for the
    locks of synchronize)."""
    def method(self, *args):
        with self._lock:
            return op(self._obj, *args)
    method.__name__ = method.__qualname__ = name
    return method


def _slice_op(op):
    # The Python 2 slice protocol, kept as the stdlib keeps it.
    return lambda obj, start, stop, *rest: op(obj, slice(start, stop), *rest)


class SynchronizedArray(SynchronizedBase):
    __getitem__ = _under_lock(operator.getitem, '__getitem__')
    __setitem__ = _under_lock(operator.setitem, '__setitem__')
    __getslice__ = _under_lock(_slice_op(operator.getitem), '__getslice__')
    __setslice__ = _under_lock(_slice_op(operator.setitem), '__setslice__')

    def __len__(self):
        return len(self._obj)


class Synchronized(SynchronizedBase):
    value = make_property('value')


class SynchronizedString(SynchronizedArray):
    value = make_property('value')
    raw = make_property('raw')
