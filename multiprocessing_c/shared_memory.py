"""Named POSIX shared memory (docs: multiprocessing.shared_memory).

Segments are the OS's own named objects (``/dev/shm/<name>`` on Linux),
opened with ``_mpcore.shm_open``, so a segment made here can be attached by
the stdlib's ``multiprocessing.shared_memory`` and the other way round.
ShareableList uses the same binary layout as the stdlib's for the same
reason.
"""

import errno  # noqa: F401  (the stdlib module offers it)
import mmap
import operator
import os
import secrets
import struct
import types

from . import _mpcore

__all__ = ['SharedMemory', 'ShareableList']

_USE_POSIX = True

# Segment names: the prefix, then random hex digits, 13 characters in all,
# short enough for every POSIX system's limit (14, counting the slash).
_SHM_SAFE_NAME_LENGTH = 14
_SHM_NAME_PREFIX = '/psm_'
_NAME_RANDOM_BYTES = (_SHM_SAFE_NAME_LENGTH - len(_SHM_NAME_PREFIX)) // 2

_O_CREX = os.O_CREAT | os.O_EXCL

_encoding = 'utf8'


def _make_filename():
    """A random name for a new segment."""
    return _SHM_NAME_PREFIX + secrets.token_hex(_NAME_RANDOM_BYTES)


def _argument_error(name, flags, create, size):
    """What is wrong with SharedMemory's arguments (the stdlib's messages,
    checked in its order), or None."""
    if not size >= 0:
        return "'size' must be a positive integer"
    if create and size == 0:
        return "'size' must be a positive number different from zero"
    if name is None and not flags & os.O_EXCL:
        return "'name' can only be None if create=True"
    return None


def _open_fresh(flags, mode):
    """Create a segment under a new random name: (name, fd)."""
    for name in iter(_make_filename, None):
        try:
            return name, _mpcore.shm_open(name, flags, mode=mode)
        except FileExistsError:
            continue    # taken: draw another name


def _map_whole(fd, new_size, shown_name):
    """Map all of the segment open on `fd`, first giving a segment we just
    created its size (`new_size`; 0 when attaching)."""
    if new_size:
        os.ftruncate(fd, new_size)
    size = os.fstat(fd).st_size
    if not size:
        raise ValueError('cannot attach to the empty segment %r'
                         % shown_name)
    return mmap.mmap(fd, size)


class SharedMemory:
    """A block of named shared memory.

    ``SharedMemory(name=None, create=False, size=0)`` attaches to the
    segment `name`, or with ``create=True`` makes a new one of `size`
    bytes (under a random name if `name` is None).  The creating process
    registers the segment with the resource tracker, which unlinks it at
    the end of the program if nobody called ``unlink()``.
    """

    # How segments are opened (a subclass may change them: CPython's suite
    # attaches-or-creates with _flags = O_CREAT | O_RDWR).
    _flags = os.O_RDWR
    _mode = 0o600
    _prepend_leading_slash = True
    # What an instance holds; the defaults let close() and unlink() run on
    # one whose __init__ failed half way.
    _name = _mmap = _buf = None
    _fd = -1
    _size = 0
    _track = True

    def __init__(self, name=None, create=False, size=0, *, track=True):
        flags = _O_CREX | os.O_RDWR if create else self._flags
        problem = _argument_error(name, flags, create, size)
        if problem:
            raise ValueError(problem)
        self._flags = flags
        self._track = track
        if name is None:
            name, fd = _open_fresh(flags, self._mode)
        else:
            if self._prepend_leading_slash and not name.startswith('/'):
                name = '/' + name
            fd = _mpcore.shm_open(name, flags, mode=self._mode)
        try:
            mapping = _map_whole(fd, size if create else 0, name.lstrip('/'))
        except BaseException:
            os.close(fd)
            if create:
                _mpcore.shm_unlink(name)
            raise
        self._name, self._fd, self._mmap = name, fd, mapping
        self._size = len(mapping)
        self._buf = memoryview(mapping)
        if create and track:
            from . import resource_tracker
            resource_tracker.register(name, 'shared_memory')

    buf = property(operator.attrgetter('_buf'),
                   doc='A memoryview of contents of the shared memory block.')
    size = property(operator.attrgetter('_size'), doc='Size in bytes.')

    @property
    def name(self):
        "Unique name that identifies the shared memory block."
        name = self._name
        if name and self._prepend_leading_slash and name[0] == '/':
            return name[1:]
        return name

    def __repr__(self):
        return '%s(%r, size=%d)' % (type(self).__name__, self.name, self.size)

    def close(self):
        """Closes access to the shared memory from this instance but does
        not destroy the shared memory block."""
        # The view goes before the map it exports, the map before its fd;
        # each is forgotten only once it is closed (a BufferError from a
        # view still in use leaves the rest open).
        for attr, shut in (('_buf', memoryview.release),
                           ('_mmap', mmap.mmap.close)):
            obj = getattr(self, attr)
            if obj is not None:
                shut(obj)
                setattr(self, attr, None)
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def unlink(self):
        """Requests that the underlying shared memory block be destroyed.

        Call it once, from one process, whatever the number of attached
        instances."""
        if self._name:
            _mpcore.shm_unlink(self._name)
            if self._track:
                from . import resource_tracker
                resource_tracker.unregister(self._name, 'shared_memory')

    def __reduce__(self):
        # Unpickled, it attaches to the same segment by name.
        return type(self), (self.name, False, self.size)

    def __del__(self):
        try:
            self.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------
# ShareableList
#
# Layout of the segment (native byte order, 8-byte slots):
#   q                  number of items n
#   q * (n + 1)        offsets of the items' slots from the data start
#   data               each item in its slot (str/bytes slots are a multiple
#                      of 8 bytes, longer than the value's length)
#   8s * n             each item's struct format, NUL padded
#   b * n              how to turn the unpacked value back into an item

_INT, _STR, _BYTES, _NONE = 0, 1, 2, 3
_ALIGN = 8


def _slot_size(nbytes):
    return _ALIGN * (nbytes // _ALIGN + 1)


def _encode_item(value, slot=None):
    """Returns (format, back-transform code, value to pack, slot size)."""
    if value is None:
        return 'xxxxxx?x', _NONE, False, _ALIGN
    if isinstance(value, bool):
        return 'xxxxxxx?', _INT, value, _ALIGN
    if isinstance(value, int):
        return 'q', _INT, value, _ALIGN
    if isinstance(value, float):
        return 'd', _INT, value, _ALIGN
    if isinstance(value, str):
        raw, code = value.encode(_encoding), _STR
    elif isinstance(value, bytes):
        raw, code = value, _BYTES
    else:
        raise TypeError('ShareableList items must be int, float, bool, '
                        'str, bytes or None, not %s' % type(value).__name__)
    if slot is None:
        # The stdlib sizes a str slot by its characters; keep its layout
        # (and formats) wherever the UTF-8 bytes fit, and grow the slot
        # only where it would cut the string short.
        slot = _slot_size(len(value))
        if len(raw) > slot:
            slot = _slot_size(len(raw))
    elif len(raw) > slot:
        raise ValueError('bytes/str item exceeds available storage')
    return '%ds' % slot, code, raw, slot


def _decode_item(value, code):
    if code == _STR:
        return value.rstrip(b'\x00').decode(_encoding)
    if code == _BYTES:
        return value.rstrip(b'\x00')
    if code == _NONE:
        return None
    return value


class ShareableList:
    """A fixed-length list of int, float, bool, str, bytes and None in
    shared memory.  ``ShareableList(sequence)`` makes a new one,
    ``ShareableList(name=name)`` attaches to an existing one."""

    _alignment = _ALIGN
    _types_mapping = {int: 'q', float: 'd', bool: 'xxxxxxx?', str: '%ds',
                      bytes: '%ds', type(None): 'xxxxxx?x'}
    _back_transforms_mapping = {
        _INT: lambda value: value,
        _STR: lambda value: value.rstrip(b'\x00').decode(_encoding),
        _BYTES: lambda value: value.rstrip(b'\x00'),
        _NONE: lambda _value: None,
    }

    def __init__(self, sequence=None, *, name=None):
        if name is None or sequence is not None:
            items = [_encode_item(v) for v in (sequence or ())]
            n = len(items)
            offsets = [0]
            for _, _, _, slot in items:
                offsets.append(offsets[-1] + slot)
            data_start = _ALIGN * (n + 2)
            size = data_start + offsets[-1] + _ALIGN * n + n
            self.shm = SharedMemory(name, create=True, size=size)
            buf = self.shm.buf
            struct.pack_into('q%dq' % (n + 1), buf, 0, n, *offsets)
            formats_at = data_start + offsets[-1]
            for i, (fmt, code, value, _) in enumerate(items):
                struct.pack_into(fmt, buf, data_start + offsets[i], value)
                struct.pack_into('8s', buf, formats_at + _ALIGN * i,
                                 fmt.encode('ascii'))
                struct.pack_into('b', buf, formats_at + _ALIGN * n + i, code)
        else:
            self.shm = SharedMemory(name)
            buf = self.shm.buf
            (n,) = struct.unpack_from('q', buf, 0)
            offsets = list(struct.unpack_from('%dq' % (n + 1), buf, _ALIGN))
        self._n = n
        self._allocated_offsets = offsets
        self._data_start = _ALIGN * (n + 2)

    # -- the three regions of the segment --

    @property
    def _offset_data_start(self):
        return self._data_start

    @property
    def _offset_packing_formats(self):
        return self._data_start + self._allocated_offsets[-1]

    @property
    def _offset_back_transform_codes(self):
        return self._offset_packing_formats + _ALIGN * self._n

    @property
    def _format_size_metainfo(self):
        return 'q' * (self._n + 1)

    @property
    def _format_packing_metainfo(self):
        return '8s' * self._n

    @property
    def _format_back_transform_codes(self):
        return 'b' * self._n

    def _position(self, position):
        if not isinstance(position, int):
            raise TypeError('ShareableList indices must be integers, not %s'
                            % type(position).__name__)
        if position < 0:
            position += self._n
        if not 0 <= position < self._n:
            raise IndexError('ShareableList index out of range')
        return position

    def _get_packing_format(self, position):
        position = self._position(position)
        (fmt,) = struct.unpack_from(
            '8s', self.shm.buf, self._offset_packing_formats + _ALIGN * position)
        return fmt.rstrip(b'\x00').decode('ascii')

    def _get_back_transform(self, position):
        position = self._position(position)
        (code,) = struct.unpack_from(
            'b', self.shm.buf, self._offset_back_transform_codes + position)
        return self._back_transforms_mapping[code]

    def _set_packing_format_and_transform(self, position, fmt, code):
        position = self._position(position)
        buf = self.shm.buf
        struct.pack_into('8s', buf,
                         self._offset_packing_formats + _ALIGN * position,
                         fmt.encode('ascii'))
        struct.pack_into('b', buf,
                         self._offset_back_transform_codes + position, code)

    def __getitem__(self, position):
        position = self._position(position)
        buf = self.shm.buf
        fmt = self._get_packing_format(position)
        (value,) = struct.unpack_from(
            fmt, buf, self._data_start + self._allocated_offsets[position])
        (code,) = struct.unpack_from(
            'b', buf, self._offset_back_transform_codes + position)
        return _decode_item(value, code)

    def __setitem__(self, position, value):
        position = self._position(position)
        offsets = self._allocated_offsets
        slot = offsets[position + 1] - offsets[position]
        fmt, code, packed, _ = _encode_item(value, slot)
        # Check the value packs before touching the format.
        data = struct.pack(fmt, packed)
        self._set_packing_format_and_transform(position, fmt, code)
        start = self._data_start + offsets[position]
        self.shm.buf[start:start + len(data)] = data

    def __reduce__(self):
        return _attach_list, (type(self), self.shm.name)

    def __len__(self):
        return self._n

    def __repr__(self):
        return '%s(%s, name=%r)' % (type(self).__name__, list(self),
                                    self.shm.name)

    @property
    def format(self):
        "The struct packing format used by all currently stored items."
        return ''.join(self._get_packing_format(i) for i in range(self._n))

    def count(self, value):
        "L.count(value) -> integer -- return number of occurrences of value."
        return list(self).count(value)

    def index(self, value):
        """L.index(value) -> integer -- return first index of value.
        Raises ValueError if the value is not present."""
        items = list(self)
        if value in items:
            return items.index(value)
        raise ValueError('%r not in this container' % (value,))

    __class_getitem__ = classmethod(types.GenericAlias)


def _attach_list(cls, name):
    return cls(name=name)
