"""multiprocessing_c.dummy: the multiprocessing API over threads, and its
connection module over queues."""
import array
import threading
import time

import pytest

import multiprocessing_c.dummy as dummy
from multiprocessing_c.dummy import connection


def test_process_is_a_thread():
    out = []
    p = dummy.Process(target=out.append, args=(5,))
    assert isinstance(p, threading.Thread)
    assert p.exitcode is None
    p.start()
    p.join()
    assert out == [5]
    assert p.exitcode == 0
    assert dummy.current_process() is threading.current_thread()


def test_active_children():
    ev = threading.Event()
    p = dummy.Process(target=ev.wait, args=(10,))
    p.start()
    try:
        assert p in dummy.active_children()
    finally:
        ev.set()
        p.join()
    assert p not in dummy.active_children()


def test_start_from_other_thread_refused():
    p = dummy.Process(target=lambda: None)
    errors = []

    def start():
        try:
            p.start()
        except RuntimeError as e:
            errors.append(e)
    t = threading.Thread(target=start)
    t.start()
    t.join()
    assert errors and 'Parent is' in str(errors[0])


def test_pool_is_a_threadpool():
    from multiprocessing_c.pool import ThreadPool
    with dummy.Pool(3) as p:
        assert isinstance(p, ThreadPool)
        assert p.map(lambda x: x * 2, range(5)) == [0, 2, 4, 6, 8]
        assert p.apply(threading.get_ident) != threading.get_ident()
    p.join()


def test_pool_initializer():
    seen = []
    p = dummy.Pool(2, seen.append, ('x',))
    p.close()
    p.join()
    assert seen == ['x', 'x']


def test_sync_and_queue_types_are_threading_ones():
    import queue
    assert dummy.Lock is threading.Lock
    assert dummy.RLock is threading.RLock
    assert dummy.Event is threading.Event
    assert dummy.Condition is threading.Condition
    assert dummy.Semaphore is threading.Semaphore
    assert dummy.BoundedSemaphore is threading.BoundedSemaphore
    assert dummy.Barrier is threading.Barrier
    assert dummy.Queue is queue.Queue
    q = dummy.JoinableQueue()
    q.put(1)
    assert q.get() == 1
    q.task_done()
    q.join()


def test_value_array_namespace_manager():
    v = dummy.Value('i', 3)
    v.value += 1
    assert v.value == 4
    assert repr(v) == "<Value('i', 4)>"
    a = dummy.Array('i', [1, 2, 3])
    assert isinstance(a, array.array) and list(a) == [1, 2, 3]
    n = dummy.Namespace(name='Bob', _hidden=1)
    n.job = 'Builder'
    assert repr(n) == "Namespace(job='Builder', name='Bob')"
    assert dummy.Manager() is dummy
    assert dummy.Manager().Queue is dummy.Queue
    dummy.shutdown()
    dummy.freeze_support()


def test_pipe_passes_objects():
    a, b = dummy.Pipe()
    obj = object()
    a.send(obj)
    assert b.poll()
    assert b.recv() is obj
    b.send_bytes(b'x')
    assert a.recv_bytes() == b'x'
    assert not a.poll()
    start = time.monotonic()
    assert not a.poll(0.1)
    assert time.monotonic() - start >= 0.09


def test_poll_wakes_on_send():
    a, b = connection.Pipe()
    threading.Timer(0.05, a.send, (1,)).start()
    assert b.poll(None)
    assert b.recv() == 1


def test_listener_client():
    with connection.Listener() as listener:
        def client():
            c = connection.Client(listener.address)
            c.send('hello')
            c.send(c.recv() + 1)
        t = threading.Thread(target=client)
        t.start()
        conn = listener.accept()
        assert conn.recv() == 'hello'
        conn.send(41)
        assert conn.recv() == 42
        t.join()
    with pytest.raises(OSError):
        listener.accept()


def test_api_matches_stdlib_dummy():
    import multiprocessing.dummy as std
    import multiprocessing.dummy.connection as stdc
    assert set(std.__all__) <= set(dummy.__all__)
    for name in std.__all__:
        assert hasattr(dummy, name), name
    for name in ('Client', 'Listener', 'Pipe', 'Connection', 'families'):
        assert hasattr(connection, name) and hasattr(stdc, name)
