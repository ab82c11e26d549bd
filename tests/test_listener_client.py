"""Listeners and Clients: AF_UNIX (files and abstract names), AF_INET on
127.0.0.1, authentication keys, and interop with the stdlib's Listener
and Client in both directions, in threads and in real child processes."""
import hmac
import os
import threading

import pytest

import multiprocessing.connection as std_connection

from multiprocessing_c import connection
from multiprocessing_c.context import AuthenticationError

FAMILY_ADDRESSES = {
    'AF_UNIX': None,            # an arbitrary_address() path
    'AF_INET': ('127.0.0.1', 0),
    'abstract': '\0mpc-test-%d' % os.getpid(),
}


def listen(kind, authkey=None, listener_class=None):
    cls = listener_class or connection.Listener
    if kind == 'AF_UNIX':
        return cls(family='AF_UNIX', authkey=authkey)
    return cls(FAMILY_ADDRESSES[kind], authkey=authkey)


def in_thread(func, *args):
    box = []

    def run():
        try:
            box.append(func(*args))
        except BaseException as e:
            box.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


# Module level so that spawned children can import them.

def child_client(address, authkey, msg):
    with connection.Client(address, authkey=authkey) as c:
        c.send(msg)
        assert c.recv() == msg.upper()


def child_listener(conn, family, authkey):
    with connection.Listener(family=family, authkey=authkey) as l:
        conn.send(l.address)
        with l.accept() as c:
            c.send(c.recv() * 2)


@pytest.mark.parametrize('kind', ['AF_UNIX', 'AF_INET', 'abstract'])
@pytest.mark.parametrize('authkey', [None, b'secret'])
def test_listener_client(kind, authkey):
    with listen(kind, authkey) as l:
        t, box = in_thread(child_client, l.address, authkey, 'hello')
        with l.accept() as c:
            assert c.recv() == 'hello'
            c.send('HELLO')
        t.join()
        assert box == [None]
        if kind == 'AF_INET':
            assert l.address[0] == '127.0.0.1'
            assert l.last_accepted[0] == '127.0.0.1'
        address = l.address
    if kind == 'AF_UNIX':
        assert not os.path.exists(address)   # the socket file went with it
    with pytest.raises(OSError):
        l.accept()


def test_families_and_address_types():
    assert sorted(connection.families) == ['AF_INET', 'AF_UNIX']
    assert connection.default_family == 'AF_UNIX'
    assert connection.address_type(('127.0.0.1', 5)) == 'AF_INET'
    assert connection.address_type('/tmp/x') == 'AF_UNIX'
    assert connection.address_type(b'\0abstract') == 'AF_UNIX'
    assert connection.address_type('\\\\.\\pipe\\x') == 'AF_PIPE'
    with pytest.raises(ValueError):
        connection.address_type(42)
    with pytest.raises(ValueError):
        connection.Listener(r'\\.\test')        # AF_PIPE is Windows-only
    with pytest.raises(ValueError):
        connection.Listener(family='AF_BOGUS')
    a = connection.arbitrary_address('AF_UNIX')
    assert a != connection.arbitrary_address('AF_UNIX')
    assert connection.arbitrary_address('AF_INET') == ('localhost', 0)


def test_multiple_bind():
    for family in connection.families:
        with connection.Listener(family=family) as l:
            with pytest.raises(OSError):
                connection.Listener(l.address, family)


def test_bad_authkey_type():
    with pytest.raises(TypeError):
        connection.Listener(family='AF_INET', authkey='text')
    with pytest.raises(TypeError):
        connection.Client(('127.0.0.1', 1), authkey='text')


@pytest.mark.parametrize('kind', ['AF_UNIX', 'AF_INET'])
def test_wrong_authkey(kind):
    with listen(kind, b'right') as l:
        t, box = in_thread(connection.Client, l.address, None, b'wrong')
        with pytest.raises(AuthenticationError):
            l.accept()
        t.join()
        assert isinstance(box[0], AuthenticationError)


def test_client_with_key_listener_without():
    # The Client expects a challenge but gets application data.
    with connection.Listener(family='AF_INET') as l:
        t, box = in_thread(connection.Client, l.address, None, b'key')
        with l.accept() as c:
            c.send_bytes(b'not a challenge')
            t.join()
        assert isinstance(box[0], AuthenticationError)


def test_deliver_challenge_rejects_bogus_reply():
    class Fake:
        sent = []

        def recv_bytes(self, maxlength=None):
            return b'something bogus'

        def send_bytes(self, data):
            self.sent.append(bytes(data))
    with pytest.raises(AuthenticationError):
        connection.deliver_challenge(Fake(), b'abc')
    assert Fake.sent[-1] == connection.FAILURE
    with pytest.raises(ValueError):
        connection.deliver_challenge(Fake(), 'not bytes')


def test_challenge_wire_format():
    # What goes on the wire is what the running Python's stdlib sends.
    a, b = connection.Pipe()
    t, box = in_thread(connection.deliver_challenge, a, b'k')
    msg = b.recv_bytes()
    assert msg.startswith(b'#CHALLENGE#')
    payload = msg[len(b'#CHALLENGE#'):]
    import sys
    if sys.version_info >= (3, 12):
        assert payload.startswith(b'{sha256}') and len(payload) == 48
        reply = b'{sha256}' + hmac.digest(b'k', payload, 'sha256')
    else:
        assert len(payload) == 20
        reply = hmac.digest(b'k', payload, 'md5')
    b.send_bytes(reply)
    assert b.recv_bytes() == b'#WELCOME#'
    t.join()
    assert box == [None]
    # Both reply forms are understood, and the answer follows the challenge.
    for payload, want in [(b'x' * 20, hmac.digest(b'k', b'x' * 20, 'md5')),
                          (b'{sha256}' + b'y' * 40,
                           b'{sha256}' + hmac.digest(b'k', b'{sha256}' + b'y' * 40, 'sha256'))]:
        t, box = in_thread(connection.answer_challenge, a, b'k')
        b.send_bytes(b'#CHALLENGE#' + payload)
        assert b.recv_bytes() == want
        b.send_bytes(b'#WELCOME#')
        t.join()
        assert box == [None]
    a.close()
    b.close()


@pytest.mark.parametrize('family', ['AF_UNIX', 'AF_INET'])
@pytest.mark.parametrize('authkey', [None, b'shared'])
def test_stdlib_client_to_our_listener(family, authkey):
    with connection.Listener(family=family, authkey=authkey) as l:
        def client():
            with std_connection.Client(l.address, authkey=authkey) as c:
                c.send(['from', 'stdlib'])
                return c.recv_bytes()
        t, box = in_thread(client)
        with l.accept() as c:
            assert c.recv() == ['from', 'stdlib']
            c.send_bytes(b'ack')
        t.join()
        assert box == [b'ack']


@pytest.mark.parametrize('family', ['AF_UNIX', 'AF_INET'])
@pytest.mark.parametrize('authkey', [None, b'shared'])
def test_our_client_to_stdlib_listener(family, authkey):
    with std_connection.Listener(family=family, authkey=authkey) as l:
        def client():
            with connection.Client(l.address, authkey=authkey) as c:
                c.send({'from': 'ours'})
                return c.recv_bytes()
        t, box = in_thread(client)
        with l.accept() as c:
            assert c.recv() == {'from': 'ours'}
            c.send_bytes(b'ack')
        t.join()
        assert box == [b'ack']


def test_wrong_key_against_stdlib():
    with std_connection.Listener(family='AF_INET', authkey=b'right') as l:
        t, box = in_thread(connection.Client, l.address, None, b'wrong')
        with pytest.raises(std_connection.AuthenticationError):
            l.accept()
        t.join()
        assert isinstance(box[0], AuthenticationError)
    with connection.Listener(family='AF_INET', authkey=b'right') as l:
        t, box = in_thread(std_connection.Client, l.address, None, b'wrong')
        with pytest.raises(AuthenticationError):
            l.accept()
        t.join()
        assert isinstance(box[0], std_connection.AuthenticationError)


def test_xml_listener_client():
    with connection.XmlListener(family='AF_INET') as l:
        t, box = in_thread(lambda: connection.XmlClient(l.address).send([1, 'two']))
        c = l.accept()
        assert c.recv() == [1, 'two']
        c.close()
        t.join()


@pytest.mark.parametrize('kind', ['AF_UNIX', 'AF_INET', 'abstract'])
def test_child_process_client(ctx, kind):
    authkey = b'child key'
    with listen(kind, authkey) as l:
        p = ctx.Process(target=child_client, args=(l.address, authkey, 'via child'))
        p.start()
        with l.accept() as c:
            assert c.recv() == 'via child'
            c.send('VIA CHILD')
        p.join(10)
    assert p.exitcode == 0


@pytest.mark.parametrize('family', ['AF_UNIX', 'AF_INET'])
def test_child_process_listener(ctx, family):
    parent, child = ctx.Pipe()
    p = ctx.Process(target=child_listener, args=(child, family, b'k'))
    p.start()
    address = parent.recv()
    with connection.Client(address, authkey=b'k') as c:
        c.send('ab')
        assert c.recv() == 'abab'
    p.join(10)
    assert p.exitcode == 0
    parent.close()
    child.close()
