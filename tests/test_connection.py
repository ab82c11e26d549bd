"""Pipes and Connection objects: framing, limits, polling, wait(), signals,
fd passing, and wire compatibility with the stdlib's Connection."""
import array
import errno
import gc
import os
import signal
import socket
import struct
import sys
import threading
import time

import pytest

import multiprocessing.connection as std_connection
import multiprocessing.reduction as std_reduction

from multiprocessing_c import _mpcore


def open_fds():
    return len(os.listdir('/proc/self/fd'))


@pytest.fixture
def fd_guard():
    """The test must not leave file descriptors open."""
    gc.collect()
    before = open_fds()
    yield
    gc.collect()
    assert open_fds() == before


def raw_pair():
    """A C Connection and the raw socket at the other end."""
    a, b = socket.socketpair()
    return _mpcore.Connection(a.detach()), b


def std_pair():
    """A C Connection and a stdlib Connection over one socketpair."""
    a, b = socket.socketpair()
    return _mpcore.Connection(a.detach()), std_connection.Connection(b.detach())


def in_thread(func, *args):
    t = threading.Thread(target=func, args=args, daemon=True)
    t.start()
    return t


# ---------------------------------------------------------------- C layer


class TestFraming:

    @pytest.mark.parametrize('size', [0, 1, 3, 4, 5, 4095, 4096, 4097,
                                      65535, 65536, 65537, 1 << 20])
    def test_roundtrip_sizes(self, size, fd_guard):
        a, b = socket.socketpair()
        c1, c2 = _mpcore.Connection(a.detach()), _mpcore.Connection(b.detach())
        msg = os.urandom(size)
        t = in_thread(c1.send_bytes, msg)
        assert c2.recv_bytes() == msg
        t.join()
        c1.close()
        c2.close()

    def test_header_is_4_byte_big_endian(self, fd_guard):
        c, raw = raw_pair()
        c.send_bytes(b'hello')
        assert raw.recv(100) == b'\x00\x00\x00\x05hello'
        raw.sendall(struct.pack('!i', 3) + b'abc')
        assert c.recv_bytes() == b'abc'
        c.close()
        raw.close()

    def test_long_header_is_parsed(self, fd_guard):
        # A frame using the > 2 GiB header form (-1, then 8-byte length)
        # but carrying a short payload: the reader must accept either form.
        c, raw = raw_pair()
        raw.sendall(struct.pack('!iQ', -1, 5) + b'hello')
        assert c.recv_bytes() == b'hello'
        c.close()
        raw.close()

    def test_huge_length_header_is_bounded(self, fd_guard):
        # A header claiming 2**40 bytes followed by EOF: no huge
        # allocation, a clear error instead.
        c, raw = raw_pair()
        raw.sendall(struct.pack('!iQ', -1, 1 << 40) + b'x' * 100)
        raw.close()
        with pytest.raises(OSError, match='end of file during message'):
            c.recv_bytes()
        c.close()

    def test_long_form_sent_over_2gib(self, fd_guard):
        # Send 2 GiB + 1 from a lazily mapped (unpopulated) buffer and read
        # back only the header: the writer must use the long form.
        import mmap
        m = mmap.mmap(-1, 0x80000001)
        c, raw = raw_pair()
        errors = []

        def send():
            try:
                c.send_bytes(m)
            except OSError as e:
                errors.append(e)
        t = in_thread(send)
        hdr = b''
        while len(hdr) < 12:
            hdr += raw.recv(12 - len(hdr))
        raw.close()
        t.join()
        assert struct.unpack('!iQ', hdr) == (-1, 0x80000001)
        assert isinstance(errors[0], (BrokenPipeError, ConnectionResetError))
        c.close()
        m.close()

    @pytest.mark.parametrize('kind', ['socket', 'pipe'])
    @pytest.mark.parametrize('first', [0, 10, 1024, 1025, 70000])
    def test_never_reads_past_the_frame(self, kind, first, fd_guard):
        # Several processes may share a read end: recv_bytes must leave
        # the next frame untouched in the kernel.
        if kind == 'socket':
            a, b = socket.socketpair()
            rfd, wfd = a.detach(), b.detach()
        else:
            rfd, wfd = os.pipe()
        second = struct.pack('!i', 3) + b'two'
        data = struct.pack('!i', first) + b'1' * first + second
        t = in_thread(lambda: os.write(wfd, data) if len(data) < 4096
                      else [os.write(wfd, data[i:i + 4096])
                            for i in range(0, len(data), 4096)])
        c = _mpcore.Connection(rfd)
        assert c.recv_bytes() == b'1' * first
        t.join()
        assert os.read(rfd, 100) == second
        c.close()
        os.close(wfd)

    def test_message_over_growth_limit(self, fd_guard):
        # Bigger than what recv_bytes allocates up front (64 MiB): the
        # buffer grows as data arrives.
        a, b = socket.socketpair()
        c1, c2 = _mpcore.Connection(a.detach()), _mpcore.Connection(b.detach())
        msg = b'0123456789abcdef' * (5 << 20)     # 80 MiB
        t = in_thread(c1.send_bytes, msg)
        assert c2.recv_bytes() == msg
        t.join()
        c1.close()
        c2.close()

    @pytest.mark.parametrize('size', [1, 100, 1024, 1025, 5000])
    def test_frame_arriving_in_pieces(self, size, fd_guard):
        # Header and payload split across writes with pauses between:
        # short reads at every point of the frame.
        c, raw = raw_pair()
        frame = struct.pack('!i', size) + os.urandom(size)

        def dribble():
            for cut in (2, 4, 5, 4 + size // 2, len(frame)):
                raw.sendall(frame[dribble.pos:cut])
                dribble.pos = max(dribble.pos, cut)
                time.sleep(0.02)
        dribble.pos = 0
        t = in_thread(dribble)
        assert c.recv_bytes() == frame[4:]
        t.join()
        c.close()
        raw.close()

    def test_negative_header_is_an_error(self, fd_guard):
        c, raw = raw_pair()
        raw.sendall(struct.pack('!i', -7))
        with pytest.raises(OSError, match='bad message length'):
            c.recv_bytes()
        c.close()
        raw.close()

    def test_eof_at_boundary_is_eoferror(self, fd_guard):
        c, raw = raw_pair()
        raw.sendall(struct.pack('!i', 2) + b'ok')
        raw.close()
        assert c.recv_bytes() == b'ok'
        with pytest.raises(EOFError):
            c.recv_bytes()
        c.close()

    @pytest.mark.parametrize('data', [b'\x00', b'\x00\x00\x00',
                                      struct.pack('!i', 10) + b'12345',
                                      struct.pack('!i', -1) + b'\x00\x00'])
    def test_truncated_frame(self, data, fd_guard):
        c, raw = raw_pair()
        raw.sendall(data)
        raw.close()
        with pytest.raises(OSError, match='end of file during message'):
            c.recv_bytes()
        c.close()

    def test_maxlength(self, fd_guard):
        c, raw = raw_pair()
        raw.sendall(struct.pack('!i', 5) + b'12345')
        raw.sendall(struct.pack('!i', 6) + b'123456')
        assert c.recv_bytes(5) == b'12345'
        with pytest.raises(OSError, match='bad message length'):
            c.recv_bytes(5)
        # The stream is no longer at a boundary: reading is refused.
        assert not c.readable and c.writable
        with pytest.raises(OSError):
            c.recv_bytes()
        with pytest.raises(ValueError):
            c.send_bytes(b'x', -1)
        c.close()
        raw.close()

    def test_maxlength_on_read_only_closes(self, fd_guard):
        r, w = os.pipe()
        c = _mpcore.Connection(r, writable=False)
        os.write(w, struct.pack('!i', 100))
        with pytest.raises(OSError, match='bad message length'):
            c.recv_bytes(10)
        assert c.closed
        os.close(w)

    def test_negative_maxlength(self, fd_guard):
        c, raw = raw_pair()
        with pytest.raises(ValueError, match='negative maxlength'):
            c.recv_bytes(-1)
        c.close()
        raw.close()

    def test_send_bytes_offset_and_size(self, fd_guard):
        a, b = socket.socketpair()
        c1, c2 = _mpcore.Connection(a.detach()), _mpcore.Connection(b.detach())
        msg = b'abcdefghijklmnopqrstuvwxyz'
        for args, want in [((), msg), ((5,), msg[5:]), ((7, 8), msg[7:15]),
                           ((26,), b''), ((26, 0), b'')]:
            c1.send_bytes(msg, *args)
            assert c2.recv_bytes() == want
        c1.send_bytes(msg, size=3, offset=1)
        assert c2.recv_bytes() == b'bcd'
        for args in [(27,), (22, 5), (26, 1), (-1,), (4, -1)]:
            with pytest.raises(ValueError):
                c1.send_bytes(msg, *args)
        # Item size > 1: offsets count bytes.
        arr = array.array('i', [1, 2, 3])
        c1.send_bytes(arr, 4)
        assert c2.recv_bytes() == arr.tobytes()[4:]
        with pytest.raises(TypeError):
            c1.send_bytes('text')
        with pytest.raises(TypeError):
            c1.send_bytes(msg, bogus=1)
        c1.close()
        c2.close()

    def test_recv_bytes_into(self, fd_guard):
        a, b = socket.socketpair()
        c1, c2 = _mpcore.Connection(a.detach()), _mpcore.Connection(b.detach())
        arr = array.array('i', range(4))
        buf = array.array('i', [0] * 10)
        c1.send_bytes(arr)
        assert c2.recv_bytes_into(buf) == 16
        assert list(buf) == [0, 1, 2, 3] + [0] * 6
        buf = array.array('i', [0] * 10)
        c1.send_bytes(arr)
        assert c2.recv_bytes_into(buf, 3 * buf.itemsize) == 16
        assert list(buf) == [0, 0, 0, 0, 1, 2, 3, 0, 0, 0]
        # Exactly fits.
        buf = bytearray(5)
        c1.send_bytes(b'12345')
        assert c2.recv_bytes_into(buf) == 5 and buf == b'12345'
        with pytest.raises(ValueError, match='negative offset'):
            c2.recv_bytes_into(buf, -1)
        with pytest.raises(ValueError, match='offset too large'):
            c2.recv_bytes_into(buf, 6)
        with pytest.raises((TypeError, BufferError)):
            c2.recv_bytes_into(b'read-only')
        c1.close()
        c2.close()

    def test_buffer_too_short_carries_message(self, fd_guard):
        from multiprocessing_c.context import BufferTooShort
        a, b = socket.socketpair()
        c1, c2 = _mpcore.Connection(a.detach()), _mpcore.Connection(b.detach())
        c1.send_bytes(b'x' * 50)
        c1.send_bytes(b'next')
        with pytest.raises(BufferTooShort) as info:
            c2.recv_bytes_into(bytearray(40))
        assert info.value.args == (b'x' * 50,)
        # The too-long message was consumed: the stream is still in step.
        assert c2.recv_bytes() == b'next'
        c1.send_bytes(b'abc')
        with pytest.raises(BufferTooShort):
            c2.recv_bytes_into(bytearray(4), 2)
        c1.close()
        c2.close()


class TestConnectionObject:

    def test_signatures(self):
        import inspect
        sig = lambda f: list(inspect.signature(f).parameters)
        if sys.version_info >= (3, 10):
            # 3.9 drops the signature from a heap type's docstring.
            assert sig(_mpcore.Connection) == ['handle', 'readable', 'writable']
        assert sig(_mpcore.Connection.send_bytes) == ['self', 'buf', 'offset', 'size']
        assert sig(_mpcore.Connection.recv_bytes) == ['self', 'maxlength']
        assert sig(_mpcore.Connection.recv_bytes_into) == ['self', 'buf', 'offset']
        assert sig(_mpcore.Connection.poll) == ['self', 'timeout']
        assert sig(_mpcore.wait) == ['object_list', 'timeout']
        assert sig(_mpcore.sendfds) == ['sock', 'fds']
        assert sig(_mpcore.recvfds) == ['sock', 'n']

    def test_constructor_checks(self):
        with pytest.raises(ValueError, match='invalid handle'):
            _mpcore.Connection(-1)
        with pytest.raises(ValueError):
            _mpcore.Connection(0, readable=False, writable=False)
        with pytest.raises(TypeError):
            _mpcore.Connection('3')

    def test_closed_and_directions(self, fd_guard):
        r, w = os.pipe()
        cr = _mpcore.Connection(r, writable=False)
        cw = _mpcore.Connection(w, readable=False)
        assert (cr.readable, cr.writable, cw.readable, cw.writable) == \
            (True, False, False, True)
        with pytest.raises(OSError, match='read-only'):
            cr.send_bytes(b'x')
        with pytest.raises(OSError, match='write-only'):
            cw.recv_bytes()
        with pytest.raises(OSError, match='write-only'):
            cw.poll()
        assert cr.fileno() == r and cr._handle == r
        cw.close()
        cw.close()      # a second close is harmless
        assert cw.closed and cw._handle is None
        for call in (cw.fileno, cw.recv_bytes, cw.poll,
                     lambda: cw.send_bytes(b'')):
            with pytest.raises(OSError, match='closed'):
                call()
        with pytest.raises(EOFError):
            cr.recv_bytes()
        del cr
        gc.collect()
        with pytest.raises(OSError) as info:
            os.fstat(r)     # the Connection closed its fd when collected
        assert info.value.errno == errno.EBADF

    def test_forget_handle(self, fd_guard):
        r, w = os.pipe()
        c = _mpcore.Connection(r)
        c._handle = None      # the stdlib's way to keep the fd open
        del c
        os.fstat(r)
        os.close(r)
        os.close(w)

    def test_invalid_handle_poll(self):
        c = _mpcore.Connection(44977608)
        with pytest.raises(OSError):
            c.poll()
        c._handle = None

    def test_subclass(self, fd_guard):
        class Sub(_mpcore.Connection):
            pass
        r, w = os.pipe()
        s = Sub(r)
        s.attr = 1
        s.close()
        os.close(w)


class TestPoll:

    def test_poll_timeouts(self, fd_guard):
        c, raw = raw_pair()
        t0 = time.monotonic()
        assert c.poll() is False
        assert c.poll(-1) is False
        assert time.monotonic() - t0 < 3
        t0 = time.monotonic()
        assert c.poll(0.2) is False
        assert time.monotonic() - t0 >= 0.2
        raw.sendall(b'\x00\x00\x00\x00')
        assert c.poll(None) is True
        assert c.poll(timeout=0) is True     # polling consumes nothing
        assert c.recv_bytes() == b''
        raw.close()
        assert c.poll(1) is True             # EOF is readable
        with pytest.raises(EOFError):
            c.recv_bytes()
        with pytest.raises(TypeError):
            c.poll('soon')
        c.close()

    def test_poll_wakes_on_data(self, fd_guard):
        c, raw = raw_pair()
        timer = threading.Timer(0.1, raw.sendall, (b'\x00\x00\x00\x01x',))
        timer.start()
        t0 = time.monotonic()
        assert c.poll(10) is True
        assert time.monotonic() - t0 < 5
        timer.join()
        assert c.recv_bytes() == b'x'
        c.close()
        raw.close()


class TestWait:

    def test_wait_many(self, fd_guard):
        pairs = [socket.socketpair() for _ in range(100)]
        conns = [_mpcore.Connection(a.detach()) for a, _ in pairs]
        assert _mpcore.wait(conns, 0) == []
        for i in (3, 50, 99):
            pairs[i][1].sendall(b'\x00\x00\x00\x01x')
        assert _mpcore.wait(conns, timeout=5) == [conns[3], conns[50], conns[99]]
        # Ints and sockets mix with connections.
        sock = pairs[0][1]
        fd = conns[50].fileno()
        ready = _mpcore.wait([sock, fd, conns[3], conns[4]], None)
        assert ready == [fd, conns[3]]
        for c in conns:
            c.close()
        for _, b in pairs:
            b.close()

    def test_wait_timeout_and_negative(self, fd_guard):
        a, b = socket.socketpair()
        t0 = time.monotonic()
        assert _mpcore.wait([a], 0.2) == []
        assert time.monotonic() - t0 >= 0.2
        t0 = time.monotonic()
        assert _mpcore.wait([a], timeout=-1) == []
        assert time.monotonic() - t0 < 3
        b.close()
        assert _mpcore.wait([a]) == [a]
        a.close()

    def test_wait_bad_objects(self, fd_guard):
        with pytest.raises(TypeError):
            _mpcore.wait([object()])
        with pytest.raises(TypeError):
            _mpcore.wait(5)
        r, w = os.pipe()
        c = _mpcore.Connection(r)
        c.close()
        with pytest.raises((OSError, ValueError)):
            _mpcore.wait([c], 0)
        os.close(w)


# ------------------------------------------------------------------ EINTR

@pytest.fixture
def alarm_spam():
    """SIGALRM every millisecond while the test runs (eintr_tester style);
    yields a list that counts delivered signals."""
    hits = []
    old = signal.signal(signal.SIGALRM, lambda *a: hits.append(1))
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        yield hits
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)


class TestEINTR:

    def _delayed_writer(self, sock, data, delay=0.3):
        def run():
            time.sleep(delay)
            sock.sendall(data)
        return in_thread(run)

    def test_recv_bytes_survives_signals(self, alarm_spam, fd_guard):
        c, raw = raw_pair()
        payload = os.urandom(300000)
        t = self._delayed_writer(raw, struct.pack('!i', len(payload)) + payload)
        assert c.recv_bytes() == payload
        t.join()
        assert len(alarm_spam) > 10
        c.close()
        raw.close()

    def test_small_recv_survives_signals(self, alarm_spam, fd_guard):
        c, raw = raw_pair()

        def run():
            for piece in (b'\x00\x00', b'\x00\x05', b'he', b'llo'):
                time.sleep(0.1)
                raw.sendall(piece)
        t = in_thread(run)
        assert c.recv_bytes() == b'hello'
        t.join()
        assert len(alarm_spam) > 10
        c.close()
        raw.close()

    def test_send_bytes_survives_signals(self, alarm_spam, fd_guard):
        c, raw = raw_pair()
        payload = os.urandom(4 << 20)     # more than the socket buffer

        def drain():
            time.sleep(0.2)
            got = b''
            while len(got) < len(payload) + 4:
                got += raw.recv(1 << 20)
            box.append(got)
        box = []
        t = in_thread(drain)
        c.send_bytes(payload)
        t.join()
        assert box[0] == struct.pack('!i', len(payload)) + payload
        assert len(alarm_spam) > 10
        c.close()
        raw.close()

    def test_poll_and_wait_survive_signals(self, alarm_spam, fd_guard):
        c, raw = raw_pair()
        t0 = time.monotonic()
        assert c.poll(0.3) is False
        assert _mpcore.wait([c], 0.3) == []
        # Retries recompute the remaining time: no drift past the deadline.
        assert 0.6 <= time.monotonic() - t0 < 10
        t = self._delayed_writer(raw, b'\x00\x00\x00\x00', 0.2)
        assert c.poll(None) is True
        assert _mpcore.wait([c]) == [c]
        t.join()
        assert len(alarm_spam) > 10
        c.close()
        raw.close()

    @pytest.mark.parametrize('call', ['recv_bytes', 'poll', 'wait',
                                      'recv_bytes_into', 'recvfds'])
    def test_raising_handler_propagates(self, call, fd_guard):
        class Boom(Exception):
            pass

        def handler(*args):
            raise Boom
        c, raw = raw_pair()
        old = signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        try:
            with pytest.raises(Boom):
                if call == 'recv_bytes':
                    c.recv_bytes()
                elif call == 'poll':
                    c.poll(None)
                elif call == 'wait':
                    _mpcore.wait([c])
                elif call == 'recv_bytes_into':
                    c.recv_bytes_into(bytearray(10))
                else:
                    _mpcore.recvfds(c.fileno(), 1)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        c.close()
        raw.close()


# --------------------------------------------------------------- fd passing

class TestFdPassing:

    def test_roundtrip(self, fd_guard):
        a, b = socket.socketpair()
        r, w = os.pipe()
        _mpcore.sendfds(a, [r, w])
        got = _mpcore.recvfds(b.fileno(), 2)
        assert len(got) == 2 and not set(got) & {r, w}
        assert not os.get_inheritable(got[0])     # MSG_CMSG_CLOEXEC
        os.write(got[1], b'via passed fd')
        assert os.read(r, 100) == b'via passed fd'
        for fd in got + [r, w]:
            os.close(fd)
        a.close()
        b.close()

    def test_interop_with_stdlib(self, fd_guard):
        a, b = socket.socketpair()
        r, w = os.pipe()
        _mpcore.sendfds(a, [w])
        [w2] = std_reduction.recvfds(b, 1)
        std_reduction.sendfds(b, [r])
        [r2] = _mpcore.recvfds(a, 1)
        os.write(w2, b'ok')
        assert os.read(r2, 10) == b'ok'
        for fd in (r, w, r2, w2):
            os.close(fd)
        a.close()
        b.close()

    def test_missing_and_extra_fds(self, fd_guard):
        a, b = socket.socketpair()
        a.send(b'\x00')
        with pytest.raises(RuntimeError, match='without file descriptors'):
            _mpcore.recvfds(b, 1)
        r, w = os.pipe()
        _mpcore.sendfds(a, [r, w, r])
        with pytest.raises(RuntimeError, match='truncated'):
            _mpcore.recvfds(b, 2)       # and nothing that arrived leaks
        _mpcore.sendfds(a, [r])
        with pytest.raises(RuntimeError, match='expected 2'):
            _mpcore.recvfds(b, 2)
        a.close()
        with pytest.raises(EOFError):
            _mpcore.recvfds(b, 1)
        b.close()
        os.close(r)
        os.close(w)

    def test_argument_checks(self, fd_guard):
        a, b = socket.socketpair()
        with pytest.raises(ValueError):
            _mpcore.sendfds(a, [])
        with pytest.raises(ValueError):
            _mpcore.sendfds(a, [0] * 254)
        with pytest.raises(ValueError):
            _mpcore.sendfds(a, [-1])
        with pytest.raises(ValueError):
            _mpcore.recvfds(b, 0)
        with pytest.raises(ValueError):
            _mpcore.recvfds(b, 254)
        with pytest.raises(OSError):
            _mpcore.sendfds(a, [987654])       # EBADF from the kernel
        a.close()
        b.close()

    def test_many_fds(self, fd_guard):
        a, b = socket.socketpair()
        r, w = os.pipe()
        _mpcore.sendfds(a, [w] * 253)
        got = _mpcore.recvfds(b, 253)
        assert len(set(got)) == 253
        for fd in got:
            os.close(fd)
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


# ------------------------------------------------------- stdlib interop

class TestStdlibInterop:

    @pytest.mark.parametrize('size', [0, 1, 16384, 16385, 1 << 20])
    def test_bytes_both_ways(self, size, fd_guard):
        ours, std = std_pair()
        msg = os.urandom(size)
        t = in_thread(ours.send_bytes, msg)
        assert std.recv_bytes() == msg
        t.join()
        t = in_thread(std.send_bytes, msg)
        assert ours.recv_bytes() == msg
        t.join()
        ours.close()
        std.close()

    def test_pipe_both_ways(self, fd_guard):
        r, w = os.pipe()
        ours_w = _mpcore.Connection(w, readable=False)
        std_r = std_connection.Connection(r, writable=False)
        ours_w.send_bytes(b'one way')
        assert std_r.recv_bytes() == b'one way'
        ours_w.close()
        std_r.close()
        r, w = os.pipe()
        std_w = std_connection.Connection(w, readable=False)
        ours_r = _mpcore.Connection(r, writable=False)
        std_w.send_bytes(b'other way')
        assert ours_r.recv_bytes() == b'other way'
        std_w.close()
        with pytest.raises(EOFError):
            ours_r.recv_bytes()
        ours_r.close()

    def test_recv_bytes_into_from_stdlib(self, fd_guard):
        ours, std = std_pair()
        std.send_bytes(array.array('d', [1.5, 2.5]))
        buf = array.array('d', [0.0] * 3)
        assert ours.recv_bytes_into(buf, 8) == 16
        assert list(buf) == [0.0, 1.5, 2.5]
        ours.close()
        std.close()


# ------------------------------------------------- the Python-level API

from multiprocessing_c import connection, reduction    # noqa: E402


def child_echo(conn):
    for msg in iter(conn.recv_bytes, b''):
        conn.send_bytes(msg)
    conn.close()


def child_use_passed_conns(conn):
    # Receives Connections over an existing pipe (resource sharer path).
    w = conn.recv()
    w.send('all is well')
    w.close()
    r = conn.recv()
    conn.send(r.recv() * 2)
    conn.close()


def child_write_to_received_fd(conn, data):
    fd = reduction.recv_handle(conn)
    os.write(fd, data)
    os.close(fd)


def child_use_passed_socket(conn):
    sock = conn.recv()
    sock.sendall(b'through a pickled socket')
    sock.close()
    conn.close()


def child_send_some(w, n):
    for i in range(n):
        w.send((i, os.getpid()))
    w.close()


class TestPipe:

    def test_duplex(self, fd_guard):
        a, b = connection.Pipe()
        assert type(a) is connection.Connection
        assert a.readable and a.writable
        seq = [1, 2.25, None, 'x' * 1000]
        a.send(seq)
        assert b.recv() == seq
        b.send_bytes(b'back')
        assert a.recv_bytes() == b'back'
        a.close()
        with pytest.raises(EOFError):
            b.recv()
        b.close()

    def test_one_way(self, fd_guard):
        r, w = connection.Pipe(duplex=False)
        w.send(1)
        assert r.recv() == 1
        assert (r.readable, r.writable, w.readable, w.writable) == \
            (True, False, False, True)
        with pytest.raises(OSError):
            r.send(2)
        with pytest.raises(OSError):
            w.recv()
        with pytest.raises(OSError):
            w.poll()
        r.close()
        w.close()

    def test_context_manager(self, fd_guard):
        a, b = connection.Pipe()
        with a, b:
            a.send(1729)
            assert b.recv() == 1729
            assert not a.closed and not b.closed
        assert a.closed and b.closed
        with pytest.raises(OSError):
            a.recv()

    def test_big_object(self, fd_guard):
        a, b = connection.Pipe()
        big = list(range(200000))
        t = in_thread(a.send, big)
        assert b.recv() == big
        t.join()
        a.close()
        b.close()

    def test_plain_pickle_refuses_connection(self, fd_guard):
        import pickle
        a, b = connection.Pipe()
        with pytest.raises(TypeError):
            pickle.dumps(a)
        a.close()
        b.close()

    def test_stdlib_objects_both_ways(self, fd_guard):
        # send()/recv() pickles are plain pickles: the stdlib reads them.
        a, b = socket.socketpair()
        ours = connection.Connection(a.detach())
        std = std_connection.Connection(b.detach())
        ours.send({'k': [1, 2]})
        assert std.recv() == {'k': [1, 2]}
        std.send(('tuple', None))
        assert ours.recv() == ('tuple', None)
        ours.close()
        std.close()

    def test_reused_picklers(self, fd_guard):
        # send() reuses picklers: a failed dump, a reducer registered
        # later and a send from inside a reducer must all still work.
        a, b = connection.Pipe()
        with pytest.raises(Exception):
            a.send(lambda: None)           # not picklable
        a.send([1, 2])
        assert b.recv() == [1, 2]

        class Late:
            pass
        reduction.register(Late, lambda obj: (str, ('late-reduced',)))
        try:
            a.send(Late())
            assert b.recv() == 'late-reduced'
        finally:
            del reduction.ForkingPickler._extra_reducers[Late]

        class Nested:
            def __reduce__(self):
                a.send('inner')            # re-entrant send
                return (str, ('outer',))
        a.send(Nested())
        assert b.recv() == 'inner'
        assert b.recv() == 'outer'
        big = b'z' * (1 << 20)
        a_t = in_thread(a.send, [big, big])
        assert b.recv() == [big, big]
        a_t.join()
        a.close()
        b.close()

    def test_wait_on_pipes(self, fd_guard):
        pairs = [connection.Pipe(duplex=False) for _ in range(5)]
        readers = [r for r, _ in pairs]
        assert connection.wait(readers, 0.05) == []
        pairs[2][1].send('x')
        assert connection.wait(readers, timeout=5) == [readers[2]]
        for r, w in pairs:
            r.close()
            w.close()

    def test_poll_semantics(self, fd_guard):
        a, b = connection.Pipe()
        assert a.poll() is False
        b.send_bytes(b'')
        assert a.poll() is True and a.poll() is True
        assert a.recv_bytes() == b''
        b.send_bytes(b'a')
        b.send_bytes(b'bc')
        assert a.recv_bytes() == b'a'
        assert a.poll(1.0) is True
        assert a.recv_bytes() == b'bc'
        assert a.poll(0.0) is False
        a.close()
        b.close()


class TestProcesses:

    def test_echo_child(self, ctx):
        conn, child_conn = ctx.Pipe()
        p = ctx.Process(target=child_echo, args=(child_conn,))
        p.start()
        child_conn.close()
        for msg in (b'hello', b'x' * 100000, b'y' * (16 << 20)):
            conn.send_bytes(msg)
            assert conn.recv_bytes() == msg
        conn.send_bytes(b'')
        p.join(10)
        assert p.exitcode == 0
        with pytest.raises(EOFError):
            conn.recv_bytes()
        conn.close()

    def test_pickle_connections_to_running_child(self, ctx):
        conn, child_conn = ctx.Pipe()
        p = ctx.Process(target=child_use_passed_conns, args=(child_conn,))
        p.start()
        child_conn.close()
        r, w = ctx.Pipe(duplex=False)
        conn.send(w)
        w.close()
        assert r.recv() == 'all is well'
        r.close()
        r, w = ctx.Pipe(duplex=False)
        conn.send(r)
        r.close()
        w.send('foobar')
        w.close()
        assert conn.recv() == 'foobar' * 2
        p.join(10)
        assert p.exitcode == 0
        conn.close()

    def test_pickle_socket_to_running_child(self, ctx):
        conn, child_conn = ctx.Pipe()
        p = ctx.Process(target=child_use_passed_socket, args=(child_conn,))
        p.start()
        child_conn.close()
        a, b = socket.socketpair()
        conn.send(b)
        b.close()
        assert a.recv(100) == b'through a pickled socket'
        p.join(10)
        assert p.exitcode == 0
        a.close()
        conn.close()

    def test_send_handle(self, ctx, tmp_path):
        conn, child_conn = ctx.Pipe()
        p = ctx.Process(target=child_write_to_received_fd,
                        args=(child_conn, b'foo'))
        p.start()
        path = tmp_path / 'out'
        with open(path, 'wb') as f:
            reduction.send_handle(conn, f.fileno(), p.pid)
        p.join(10)
        assert p.exitcode == 0
        assert path.read_bytes() == b'foo'
        conn.close()
        child_conn.close()

    def test_wait_for_children(self, ctx):
        readers, procs = [], []
        for _ in range(3):
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=child_send_some, args=(w, 10))
            p.start()
            w.close()
            readers.append(r)
            procs.append(p)
        messages = []
        while readers:
            for r in connection.wait(readers, 10):
                try:
                    messages.append(r.recv())
                except EOFError:
                    readers.remove(r)
                    r.close()
        for p in procs:
            p.join(10)
        assert sorted(messages) == sorted((i, p.pid) for i in range(10)
                                          for p in procs)
        sentinels = [p.sentinel for p in procs]
        assert connection.wait(sentinels, 0) == sentinels


def test_resource_sharer_stop():
    from multiprocessing_c import resource_sharer
    a, b = connection.Pipe()
    df = resource_sharer.DupFd(a.fileno())     # starts the sharer
    fd = df.detach()
    os.fstat(fd)
    os.close(fd)
    unclaimed = resource_sharer.DupFd(a.fileno())
    pending = list(resource_sharer._resource_sharer._pending.values())
    assert pending
    before = open_fds()
    resource_sharer.stop(timeout=5)
    assert resource_sharer._resource_sharer._server is None
    # Its listener and the unclaimed duplicate are closed (the garbage
    # collector may close unrelated fds meanwhile, hence <=).
    for fd in pending:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert open_fds() <= before - 2
    a.close()
    b.close()


def test_resource_sharer_ticket_is_single_use():
    from multiprocessing_c import resource_sharer
    a, b = connection.Pipe()
    df = resource_sharer.DupFd(a.fileno())
    fd = df.detach()
    assert os.path.sameopenfile(fd, a.fileno())
    os.close(fd)
    with pytest.raises(EOFError):
        df.detach()          # already claimed: refused, not hung
    a.close()
    b.close()


class _Cyclic:
    pass


def test_forking_pickler_dumps_survives_a_reference_cycle():
    # On 3.12+ a view of a BytesIO collected in a cycle made gc.collect()
    # raise BufferError (or report it as unraisable); 3.13.0 could crash.
    data = reduction.ForkingPickler.dumps({'k': list(range(100))})
    assert isinstance(data, memoryview)
    holder = _Cyclic()
    holder.data, holder.me = data, holder
    del data, holder
    gc.collect()
    big = reduction.ForkingPickler.dumps(b'x' * (1 << 20))
    assert std_reduction.ForkingPickler.loads(big) == b'x' * (1 << 20)
