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

from . import heap

__all__ = ['RawValue', 'RawArray', 'Value', 'Array', 'copy', 'synchronized']

typecode_to_type = {
    'c': ctypes.c_char, 'u': ctypes.c_wchar,
    'b': ctypes.c_byte, 'B': ctypes.c_ubyte,
    'h': ctypes.c_short, 'H': ctypes.c_ushort,
    'i': ctypes.c_int, 'I': ctypes.c_uint,
    'l': ctypes.c_long, 'L': ctypes.c_ulong,
    'q': ctypes.c_longlong, 'Q': ctypes.c_ulonglong,
    'f': ctypes.c_float, 'd': ctypes.c_double,
}

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


def _lock_for(lock, ctx):
    if lock in (True, None):
        return _default_context(ctx).RLock()
    if not hasattr(lock, 'acquire'):
        raise AttributeError("%r has no method 'acquire'" % lock)
    return lock


def Value(typecode_or_type, *args, lock=True, ctx=None):
    '''
    Return a synchronization wrapper for a Value
    '''
    obj = RawValue(typecode_or_type, *args)
    if lock is False:
        return obj
    lock = _lock_for(lock, ctx)
    return synchronized(obj, lock, ctx=ctx)


def Array(typecode_or_type, size_or_initializer, *, lock=True, ctx=None):
    '''
    Return a synchronization wrapper for a RawArray
    '''
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    lock = _lock_for(lock, ctx)
    return synchronized(obj, lock, ctx=ctx)


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
    if isinstance(obj, ctypes._SimpleCData):
        return Synchronized(obj, lock, ctx)
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock, ctx)
        return SynchronizedArray(obj, lock, ctx)
    cls = type(obj)
    try:
        scls = class_cache[cls]
    except KeyError:
        namespace = {name: _locked_property(name)
                     for name in (f[0] for f in cls._fields_)}
        scls = type('Synchronized' + cls.__name__, (SynchronizedBase,),
                    namespace)
        class_cache[cls] = scls
    return scls(obj, lock, ctx)


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


# How make_property() guards a field, in words (kept because the stdlib
# module exposes a `template`; nothing here executes it).
template = """
# property %(name)s of a synchronized wrapper:
#   read:  acquire the wrapper's lock, read obj.%(name)s, release
#   write: acquire the wrapper's lock, set obj.%(name)s, release
"""

prop_cache = {}


def _locked(op):
    """A wrapper method that applies op(wrapped_object, *args) while
    holding the wrapper's lock.  acquire/release are the lock's own
    methods bound on the wrapper: cheaper than a `with` block."""
    def method(self, *args):
        self.acquire()
        try:
            return op(self._obj, *args)
        finally:
            self.release()
    return method


def make_property(name):
    """A property reading and writing field `name` of the wrapped object
    under the wrapper's lock."""
    prop = prop_cache.get(name)
    if prop is None:
        prop = prop_cache[name] = property(
            _locked(operator.attrgetter(name)),
            _locked(lambda obj, value: setattr(obj, name, value)),
            None, 'the locked field %r' % name)
    return prop


_locked_property = make_property


class SynchronizedBase:
    """A ctypes object in shared memory and the lock that guards it."""

    def __init__(self, obj, lock=None, ctx=None):
        self._obj = obj
        self._lock = lock if lock else _default_context(ctx).RLock()
        self.acquire, self.release = self._lock.acquire, self._lock.release

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()

    def __reduce__(self):
        # Only while starting a child: both halves travel together.
        from .context import assert_spawning
        assert_spawning(self)
        return synchronized, (self._obj, self._lock)

    def get_obj(self):
        """The wrapped ctypes object (no locking)."""
        return self._obj

    def get_lock(self):
        """The lock that guards the wrapped object."""
        return self._lock

    def __repr__(self):
        return '<%s wrapper for %s>' % (type(self).__name__, self._obj)


class Synchronized(SynchronizedBase):
    value = _locked_property('value')


def _get_slice(obj, start, stop):
    return obj[start:stop]


def _set_slice(obj, start, stop, values):
    obj[start:stop] = values


class SynchronizedArray(SynchronizedBase):

    def __len__(self):
        return len(self._obj)

    __getitem__ = _locked(operator.getitem)
    __setitem__ = _locked(operator.setitem)
    __getslice__ = _locked(_get_slice)
    __setslice__ = _locked(_set_slice)


class SynchronizedString(SynchronizedArray):
    value = _locked_property('value')
    raw = _locked_property('raw')
