"""Synchronization primitives: _mpcore.SemLock and multiprocessing_c.synchronize.

The SemLock tests use os.fork and a fresh interpreter directly, so they
need nothing but the C extension.
"""
import functools
import gc
import glob
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from multiprocessing_c import _mpcore

RECURSIVE_MUTEX, SEMAPHORE = 0, 1


def _sem_files():
    # Only what this test process names: other processes on the machine
    # create and remove semaphores of their own meanwhile.
    return set(glob.glob("/dev/shm/sem.mpc-test-*-%d-*" % os.getpid()))


@pytest.fixture
def no_sem_leak(monkeypatch):
    """Fail if a semaphore this test named is still in /dev/shm after it."""
    from multiprocessing_c import synchronize
    created = []
    make_name = synchronize.SemLock._make_name

    def recording_make_name():
        name = make_name()
        created.append(name)
        return name

    monkeypatch.setattr(synchronize.SemLock, '_make_name',
                        staticmethod(recording_make_name))
    before = _sem_files()
    yield created
    gc.collect()        # named semaphores go when their creator drops them
    leaked = _sem_files() - before
    leaked |= set(n for n in created
                  if os.path.exists('/dev/shm/sem.' + n.lstrip('/')))
    assert not leaked, f"semaphores left behind: {sorted(leaked)}"


def _name(tag):
    return f"/mpc-test-{tag}-{os.getpid()}-{time.monotonic_ns()}"


def _fork_run(fn):
    """Run fn() in a forked child; return its exit status (0 = passed)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# ---------------------------------------------------------------- SemLock


class TestSemLockBasics:
    def test_attributes_unlinked(self, no_sem_leak):
        s = _mpcore.SemLock(SEMAPHORE, 2, 5, _name("attr"), True)
        assert s.kind == SEMAPHORE
        assert s.maxvalue == 5
        assert s.name is None
        assert isinstance(s.handle, int) and s.handle != 0
        assert s._get_value() == 2

    def test_attributes_named(self, no_sem_leak):
        name = _name("named")
        s = _mpcore.SemLock(RECURSIVE_MUTEX, 1, 1, name, False)
        try:
            assert s.name == name
            assert os.path.exists("/dev/shm/sem." + name[1:])
        finally:
            _mpcore.sem_unlink(name)
        with pytest.raises(FileNotFoundError):
            _mpcore.sem_unlink(name)

    def test_constants(self):
        assert _mpcore.SemLock.SEM_VALUE_MAX == os.sysconf("SC_SEM_VALUE_MAX")
        assert _mpcore.flags["HAVE_SEM_OPEN"] == 1
        assert _mpcore.RECURSIVE_MUTEX == 0 and _mpcore.SEMAPHORE == 1

    def test_bad_arguments(self, no_sem_leak):
        with pytest.raises(ValueError, match="unrecognized kind"):
            _mpcore.SemLock(7, 1, 1, _name("k"), True)
        with pytest.raises(ValueError, match=">= 0"):
            _mpcore.SemLock(SEMAPHORE, -1, 1, _name("neg"), True)
        with pytest.raises(ValueError, match="null"):
            _mpcore.SemLock(SEMAPHORE, 1, 1, "/a\0b", True)
        with pytest.raises(TypeError):
            _mpcore.SemLock(SEMAPHORE, 1, 1, None, True)
        with pytest.raises(OverflowError):
            _mpcore.SemLock(SEMAPHORE, 2**40, 1, _name("big"), True)

    def test_create_existing_name_fails(self, no_sem_leak):
        name = _name("dup")
        s = _mpcore.SemLock(SEMAPHORE, 1, 1, name, False)
        try:
            with pytest.raises(FileExistsError):
                _mpcore.SemLock(SEMAPHORE, 1, 1, name, False)
        finally:
            _mpcore.sem_unlink(name)
        del s

    def test_keyword_arguments_and_subclass(self, no_sem_leak):
        class Sub(_mpcore.SemLock):
            pass

        s = Sub(kind=SEMAPHORE, value=0, maxvalue=10, name=_name("sub"), unlink=True)
        assert isinstance(s, Sub)
        s.release()
        assert s._get_value() == 1

    def test_not_picklable_directly(self, no_sem_leak):
        import pickle

        s = _mpcore.SemLock(SEMAPHORE, 1, 1, _name("pkl"), True)
        with pytest.raises(TypeError):
            pickle.dumps(s)


    def test_unlinked_semaphore_never_has_a_file(self, no_sem_leak):
        # With unlink=True nobody opens it by name: it lives in a shared
        # page of its own, and the name is only checked, never used.
        name = _name("anon")
        s = _mpcore.SemLock(SEMAPHORE, 0, 1, name, True)
        assert not os.path.exists("/dev/shm/sem." + name[1:])
        assert s.name is None
        twin = _mpcore.SemLock(SEMAPHORE, 0, 1, name, True)    # no clash
        assert s.handle != twin.handle

        def child():
            s.release()

        assert _fork_run(child) == 0
        assert s.acquire(timeout=5) is True
        assert twin._get_value() == 0

    def test_uninitialized_and_reinitialized(self):
        s = _mpcore.SemLock.__new__(_mpcore.SemLock)
        for call in (s.acquire, s.release, s.__enter__, s._get_value,
                     s._is_zero, lambda: s.acquire(False),
                     lambda: s.__exit__(None, None, None)):
            with pytest.raises(ValueError, match="not initialized"):
                call()
        assert s._count() == 0 and s._is_mine() is False and s.name is None
        _mpcore.SemLock.__init__(s, SEMAPHORE, 1, 1, _name("late"), True)
        assert s.acquire() is True
        s.release()
        with pytest.raises(RuntimeError, match="already initialized"):
            _mpcore.SemLock.__init__(s, SEMAPHORE, 1, 1, _name("again"), True)

    def test_method_argument_errors(self):
        s = _mpcore.SemLock(SEMAPHORE, 1, 1, _name("args"), True)
        with pytest.raises(TypeError, match="no arguments"):
            s.release(1)
        with pytest.raises(TypeError, match="at most 3"):
            s.__exit__(1, 2, 3, 4)
        assert s.__enter__() is True
        assert s.__exit__() is None and s._get_value() == 1
        with pytest.raises(TypeError, match="unexpected keyword"):
            s.acquire(blocking=False)
        with pytest.raises(TypeError, match="multiple values"):
            s.acquire(False, block=False)


class TestSemLockSemantics:
    def test_lock(self, no_sem_leak):
        s = _mpcore.SemLock(SEMAPHORE, 1, 1, _name("lock"), True)
        assert s.acquire() is True
        assert s._is_mine() and s._count() == 1 and s._is_zero()
        assert s.acquire(False) is False
        assert s.acquire(timeout=0) is False
        s.release()
        assert not s._is_mine() and s._count() == 0
        with pytest.raises(ValueError, match="released too many times"):
            s.release()
        assert s._get_value() == 1

    def test_lock_released_by_other_thread(self, no_sem_leak):
        s = _mpcore.SemLock(SEMAPHORE, 1, 1, _name("lockthr"), True)
        s.acquire()
        t = threading.Thread(target=s.release)
        t.start()
        t.join()
        assert s._get_value() == 1

    def test_context_manager(self, no_sem_leak):
        s = _mpcore.SemLock(SEMAPHORE, 1, 1, _name("ctx"), True)
        with s:
            assert s._is_zero()
        assert s._get_value() == 1
        assert s.__enter__() is True
        assert s.__exit__(None, None, None) is None
        assert s._get_value() == 1

    def test_rlock(self, no_sem_leak):
        r = _mpcore.SemLock(RECURSIVE_MUTEX, 1, 1, _name("rlock"), True)
        with pytest.raises(AssertionError, match="not owned"):
            r.release()
        assert r.acquire() and r.acquire() and r.acquire()
        assert r._count() == 3 and r._is_mine()
        assert r._is_zero()

        errors = []

        def other():
            errors.append(r._is_mine())
            errors.append(r.acquire(timeout=0.05))
            try:
                r.release()
            except AssertionError as e:
                errors.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert errors == [False, False, "attempt to release recursive lock not owned by thread"]
        r.release()
        r.release()
        assert r._is_zero()
        r.release()
        assert r._get_value() == 1 and r._count() == 0
        with pytest.raises(AssertionError):
            r.release()

    def test_counting_semaphore(self, no_sem_leak):
        s = _mpcore.SemLock(SEMAPHORE, 2, _mpcore.SemLock.SEM_VALUE_MAX, _name("cnt"), True)
        assert s.acquire() and s.acquire()
        assert not s.acquire(False)
        for _ in range(5):
            s.release()
        assert s._get_value() == 5
        assert s._count() == -3

    def test_bounded_semaphore(self, no_sem_leak):
        s = _mpcore.SemLock(SEMAPHORE, 2, 2, _name("bnd"), True)
        s.acquire()
        s.release()
        with pytest.raises(ValueError, match="released too many times"):
            s.release()
        assert s._get_value() == 2

    def test_timeouts(self, no_sem_leak):
        s = _mpcore.SemLock(SEMAPHORE, 0, 1, _name("tmo"), True)
        t0 = time.monotonic()
        assert s.acquire(True, 0.2) is False
        assert 0.19 <= time.monotonic() - t0 < 2
        t0 = time.monotonic()
        assert s.acquire(False, 5) is False       # no block: timeout ignored
        assert s.acquire(timeout=-1) is False     # negative = poll
        assert time.monotonic() - t0 < 1
        with pytest.raises(TypeError):
            s.acquire(timeout="x")
        with pytest.raises(ValueError):
            s.acquire(timeout=float("nan"))

    def test_blocked_acquire_woken_by_thread(self, no_sem_leak):
        s = _mpcore.SemLock(SEMAPHORE, 0, 1, _name("wake"), True)
        threading.Timer(0.1, s.release).start()
        assert s.acquire(timeout=10) is True

    def test_gil_released_while_blocked(self, no_sem_leak):
        s = _mpcore.SemLock(SEMAPHORE, 0, 1, _name("gil"), True)
        ticks = []

        def spin():
            end = time.monotonic() + 0.3
            while time.monotonic() < end:
                ticks.append(1)
                time.sleep(0.01)

        t = threading.Thread(target=spin)
        t.start()
        assert s.acquire(timeout=0.5) is False
        t.join()
        assert len(ticks) > 5

    def test_after_fork_resets_ownership(self, no_sem_leak):
        r = _mpcore.SemLock(RECURSIVE_MUTEX, 1, 1, _name("af"), True)
        r.acquire()

        def child():
            # Held by the parent: the child must not think it owns it.
            assert not r._is_mine()
            assert r._count() == 0
            assert r.acquire(timeout=0.05) is False
            r._after_fork()
            assert r._count() == 0

        assert _fork_run(child) == 0
        assert r._is_mine()
        r.release()


class TestSemLockAcrossProcesses:
    def test_fork_shares_unlinked_semaphore(self, no_sem_leak):
        s = _mpcore.SemLock(SEMAPHORE, 0, 10, _name("fork"), True)
        done = _mpcore.SemLock(SEMAPHORE, 0, 10, _name("fork2"), True)

        def child():
            assert s.acquire(timeout=10)
            done.release()

        pid = os.fork()
        if pid == 0:
            try:
                child()
            finally:
                os._exit(0)
        s.release()
        assert done.acquire(timeout=10)
        os.waitpid(pid, 0)

    def test_named_semaphore_rebuilt_in_fresh_interpreter(self, no_sem_leak):
        name = _name("spawn")
        s = _mpcore.SemLock(SEMAPHORE, 0, 10, name, False)
        try:
            code = (
                "import sys\n"
                "from multiprocessing_c import _mpcore\n"
                "s = _mpcore.SemLock._rebuild(0, 1, 10, sys.argv[1])\n"
                "assert s.name == sys.argv[1] and s.maxvalue == 10\n"
                "assert s.acquire(timeout=10)\n"
                "s.release(); s.release()\n"
            )
            p = subprocess.Popen([sys.executable, "-c", code, name], cwd=_ROOT)
            s.release()
            assert p.wait(timeout=30) == 0
            assert s._get_value() == 2
        finally:
            _mpcore.sem_unlink(name)

    def test_rebuild_errors(self, no_sem_leak):
        with pytest.raises(ValueError, match="unnamed"):
            _mpcore.SemLock._rebuild(12345, SEMAPHORE, 1, None)
        with pytest.raises(FileNotFoundError):
            _mpcore.SemLock._rebuild(0, SEMAPHORE, 1, _name("missing"))
        with pytest.raises(ValueError):
            _mpcore.SemLock._rebuild(0, 9, 1, _name("missing"))

    def test_no_leak_after_killed_holder(self, no_sem_leak):
        # A child killed while holding an unlinked lock leaves no file.
        s = _mpcore.SemLock(SEMAPHORE, 1, 1, _name("kill"), True)
        ready = _mpcore.SemLock(SEMAPHORE, 0, 1, _name("kill2"), True)
        pid = os.fork()
        if pid == 0:
            s.acquire()
            ready.release()
            time.sleep(60)
            os._exit(0)
        assert ready.acquire(timeout=10)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        # The lock stays taken (a POSIX semaphore has no owner to recover).
        assert s.acquire(timeout=0.05) is False


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TestSemLockSignals:
    def test_eintr_retried(self, no_sem_leak):
        s = _mpcore.SemLock(SEMAPHORE, 0, 1, _name("eintr"), True)
        calls = []
        old = signal.signal(signal.SIGALRM, lambda *a: calls.append(1))
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
            t0 = time.monotonic()
            assert s.acquire(timeout=0.3) is False
            elapsed = time.monotonic() - t0
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, old)
        assert len(calls) >= 3
        # The deadline is absolute: retries neither end early nor drift.
        assert 0.29 <= elapsed < 2

    def test_eintr_then_acquired(self, no_sem_leak):
        s = _mpcore.SemLock(SEMAPHORE, 0, 1, _name("eintr2"), True)
        old = signal.signal(signal.SIGALRM, lambda *a: None)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
            threading.Timer(0.2, s.release).start()
            assert s.acquire() is True
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, old)

    @pytest.mark.parametrize("timeout", [None, 30.0])
    def test_keyboard_interrupt_ends_blocked_acquire(self, no_sem_leak, timeout):
        s = _mpcore.SemLock(SEMAPHORE, 0, 1, _name("kbi"), True)

        def raise_kbi(*a):
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGALRM, raise_kbi)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            t0 = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                s.acquire(timeout=timeout)
            assert time.monotonic() - t0 < 5
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, old)
        assert s._count() == 0


# ------------------------------------------------- multiprocessing_c.synchronize

import pickle  # noqa: E402

import multiprocessing_c  # noqa: E402
from multiprocessing_c import synchronize  # noqa: E402

WAIT = 10      # generous upper bound for anything that should happen


def _join_ok(p):
    p.join(WAIT)
    assert p.exitcode == 0, p.exitcode


# Children (module level, so spawned children can import them).

def child_hold_lock(lock, held, go):
    with lock:
        held.set()
        assert go.wait(WAIT)


def child_release_n(sem, n):
    for _ in range(n):
        sem.release()


def child_wait_condition(cond, sleeping, woken, timeout):
    with cond:
        sleeping.release()
        if cond.wait(timeout):
            woken.release()


def child_wait_for(cond, flag, woken):
    with cond:
        assert cond.wait_for(lambda: flag.get_value() > 0, WAIT)
    woken.release()


def child_wait_event(event, woken):
    assert event.wait(WAIT)
    woken.release()


def child_barrier(barrier, slots):
    # Each party's index is unique: release the semaphore of ours.
    slots[barrier.wait(WAIT)].release()


def child_barrier_broken(barrier, broken):
    try:
        barrier.wait(WAIT)
    except threading.BrokenBarrierError:
        broken.release()


def child_rlock_reentrant(rlock, out):
    with rlock:
        with rlock:
            out.release()


def child_touch(obj):
    pass


def child_report_class(obj, out):
    if obj._semlock is obj and isinstance(obj, _mpcore.SemLock):
        out.put(type(obj).__name__)
    with obj:
        out.put(obj._count())


class TestReprsLikeStdlib:
    def test_reprs(self):
        ctx = multiprocessing_c.get_context('fork')
        lock = ctx.Lock()
        assert repr(lock) == '<Lock(owner=None)>'
        lock.acquire()
        assert repr(lock) == '<Lock(owner=MainProcess)>'
        seen = []
        t = threading.Thread(target=lambda: seen.append(repr(lock)))
        t.start()
        t.join()
        assert seen == ['<Lock(owner=SomeOtherThread)>']
        lock.release()

        rlock = ctx.RLock()
        assert repr(rlock) == '<RLock(None, 0)>'
        rlock.acquire()
        rlock.acquire()
        assert repr(rlock) == '<RLock(MainProcess, 2)>'
        t = threading.Thread(target=lambda: seen.append(repr(rlock)))
        t.start()
        t.join()
        assert seen[-1] == '<RLock(SomeOtherThread, nonzero)>'
        rlock.release()
        rlock.release()

        assert repr(ctx.Semaphore(3)) == '<Semaphore(value=3)>'
        b = ctx.BoundedSemaphore(3)
        b.acquire()
        assert repr(b) == '<BoundedSemaphore(value=2, maxvalue=3)>'
        assert repr(ctx.Condition()) == '<Condition(<RLock(None, 0)>, 0)>'
        e = ctx.Event()
        assert repr(e) == '<Event at %#x unset>' % id(e)
        e.set()
        assert repr(e) == '<Event at %#x set>' % id(e)
        br = ctx.Barrier(3)
        if sys.version_info >= (3, 11):
            assert repr(br) == ('<multiprocessing_c.synchronize.Barrier at %#x: '
                                'waiters=0/3>' % id(br))
        else:   # threading.Barrier had no repr of its own yet
            assert repr(br) == ('<multiprocessing_c.synchronize.Barrier object '
                                'at %#x>' % id(br))

    def test_lock_held_by_thread_repr_names_thread(self):
        lock = multiprocessing_c.Lock()
        seen = []

        def hold():
            with lock:
                seen.append(repr(lock))

        t = threading.Thread(target=hold, name='T1')
        t.start()
        t.join()
        assert seen == ['<Lock(owner=MainProcess|T1)>']


class TestInProcess:
    def test_lock(self):
        lock = multiprocessing_c.Lock()
        assert lock.acquire() is True
        assert lock.acquire(False) is False
        assert lock.release() is None
        with pytest.raises(ValueError):
            lock.release()
        with lock:
            assert lock.acquire(timeout=0.01) is False

    def test_primitives_are_semlocks_with_c_methods(self):
        from multiprocessing_c import synchronize
        for obj in (multiprocessing_c.Lock(), multiprocessing_c.RLock(),
                    multiprocessing_c.Semaphore(), multiprocessing_c.BoundedSemaphore()):
            assert isinstance(obj, _mpcore.SemLock)
            assert obj._semlock is obj
            for meth in ('acquire', 'release', '__enter__', '__exit__'):
                assert getattr(type(obj), meth) is getattr(_mpcore.SemLock, meth)
        assert isinstance(multiprocessing_c.Lock(), synchronize.SemLock)
        rlock = multiprocessing_c.RLock()
        with rlock as got:
            assert got is True and rlock._count() == 1
        assert rlock._count() == 0

    def test_not_picklable_outside_process_creation(self):
        import pickle
        for obj in (multiprocessing_c.Lock(), multiprocessing_c.RLock(),
                    multiprocessing_c.Semaphore()):
            with pytest.raises(RuntimeError, match='through inheritance'):
                pickle.dumps(obj)

    def test_rlock(self):
        rlock = multiprocessing_c.RLock()
        for _ in range(3):
            assert rlock.acquire() is True
        for _ in range(3):
            rlock.release()
        with pytest.raises(AssertionError):
            rlock.release()

    def test_semaphores(self):
        sem = multiprocessing_c.Semaphore(2)
        assert sem.acquire() and sem.acquire()
        assert sem.acquire(False) is False
        assert sem.get_value() == 0
        for _ in range(4):
            sem.release()
        assert sem.get_value() == 4
        bsem = multiprocessing_c.BoundedSemaphore(2)
        bsem.acquire()
        bsem.release()
        with pytest.raises(ValueError, match='released too many times'):
            bsem.release()
        with pytest.raises(ValueError):
            multiprocessing_c.Semaphore(-1)

    def test_semaphore_timeouts(self):
        sem = multiprocessing_c.Semaphore(0)
        t0 = time.monotonic()
        assert sem.acquire(False) is False
        assert sem.acquire(False, None) is False
        assert sem.acquire(False, 5) is False
        assert time.monotonic() - t0 < 1
        t0 = time.monotonic()
        assert sem.acquire(True, 0.2) is False
        assert sem.acquire(timeout=0.1) is False
        assert 0.29 <= time.monotonic() - t0 < 3

    def test_condition_errors_and_timeout(self):
        cond = multiprocessing_c.Condition()
        with pytest.raises(AssertionError, match='must acquire'):
            cond.wait()
        with pytest.raises(AssertionError, match='not owned'):
            cond.notify()
        with cond:
            t0 = time.monotonic()
            assert cond.wait(0.2) is False
            assert time.monotonic() - t0 >= 0.19
            # The RLock is held again, at the same depth.
            assert cond._lock._semlock._count() == 1
            assert cond.wait_for(lambda: 0, 0.1) == 0
            assert cond.wait_for(lambda: 'yes', 0.1) == 'yes'
            cond.notify()
            cond.notify_all()
        assert repr(cond) == '<Condition(<RLock(None, 0)>, 0)>'

    def test_condition_between_threads(self):
        cond = multiprocessing_c.Condition(multiprocessing_c.Lock())
        state = []

        def waiter():
            with cond:
                state.append(cond.wait_for(lambda: state, WAIT))

        threads = [threading.Thread(target=waiter) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.1)
        with cond:
            state.append('go')
            cond.notify_all()
        for t in threads:
            t.join(WAIT)
        assert state[0] == 'go' and len(state) == 4

    def test_event(self):
        e = multiprocessing_c.Event()
        assert not e.is_set()
        assert e.wait(0.05) is False
        e.set()
        assert e.is_set() and e.wait() is True and e.wait(0) is True
        e.set()
        e.clear()
        assert not e.is_set()
        threading.Timer(0.1, e.set).start()
        assert e.wait(WAIT) is True

    def test_barrier_basics(self):
        b = multiprocessing_c.Barrier(2, timeout=0.1)
        assert b.parties == 2 and b.n_waiting == 0 and not b.broken
        with pytest.raises(threading.BrokenBarrierError):
            b.wait()
        assert b.broken
        b.reset()
        assert not b.broken
        b.abort()
        assert b.broken
        with pytest.raises(threading.BrokenBarrierError):
            b.wait()
        assert synchronize.Barrier.__mro__[1] is threading.Barrier

    def test_barrier_threads_and_action(self):
        calls = []
        b = multiprocessing_c.Barrier(3, action=lambda: calls.append(1))
        got = []
        threads = [threading.Thread(target=lambda: got.append(b.wait(WAIT)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        got.append(b.wait(WAIT))
        for t in threads:
            t.join()
        assert sorted(got) == [0, 1, 2] and calls == [1]
        assert b.n_waiting == 0 and not b.broken

    @pytest.mark.parametrize('factory', [
        lambda: multiprocessing_c.Lock(), lambda: multiprocessing_c.RLock(),
        lambda: multiprocessing_c.Semaphore(), lambda: multiprocessing_c.Condition(),
        lambda: multiprocessing_c.Event(), lambda: multiprocessing_c.Barrier(2),
    ], ids=['Lock', 'RLock', 'Semaphore', 'Condition', 'Event', 'Barrier'])
    def test_pickling_outside_process_creation_fails(self, factory):
        obj = factory()
        with pytest.raises(RuntimeError,
                           match='only be shared between processes through inheritance'):
            pickle.dumps(obj)

    def test_keyboard_interrupt_out_of_lock_acquire(self):
        lock = multiprocessing_c.Lock()
        lock.acquire()

        def raise_kbi(*a):
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGALRM, raise_kbi)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            with pytest.raises(KeyboardInterrupt):
                lock.acquire()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, old)
        lock.release()


class TestAcrossProcesses:
    def test_lock(self, ctx, no_sem_leak):
        lock, held, go = ctx.Lock(), ctx.Event(), ctx.Event()
        p = ctx.Process(target=child_hold_lock, args=(lock, held, go))
        p.start()
        assert held.wait(WAIT)
        assert lock.acquire(timeout=0.1) is False
        assert 'SomeOther' in repr(lock)
        go.set()
        assert lock.acquire(timeout=WAIT) is True
        lock.release()
        _join_ok(p)
        del lock, held, go

    def test_child_gets_the_same_class(self, ctx, no_sem_leak):
        out = ctx.SimpleQueue()
        for obj in (ctx.Lock(), ctx.RLock(), ctx.BoundedSemaphore(2)):
            p = ctx.Process(target=child_report_class, args=(obj, out))
            p.start()
            assert out.get() == type(obj).__name__
            assert out.get() == 1
            _join_ok(p)
        out.close()

    def test_rlock(self, ctx, no_sem_leak):
        rlock, out = ctx.RLock(), ctx.Semaphore(0)
        rlock.acquire()
        p = ctx.Process(target=child_rlock_reentrant, args=(rlock, out))
        p.start()
        assert out.acquire(timeout=0.2) is False
        rlock.release()
        assert out.acquire(timeout=WAIT)
        _join_ok(p)
        del rlock, out

    def test_semaphore(self, ctx, no_sem_leak):
        sem = ctx.Semaphore(0)
        p = ctx.Process(target=child_release_n, args=(sem, 5))
        p.start()
        for _ in range(5):
            assert sem.acquire(timeout=WAIT)
        assert sem.acquire(False) is False
        _join_ok(p)
        bsem = ctx.BoundedSemaphore(1)
        p = ctx.Process(target=child_release_n, args=(bsem, 1))
        p.start()
        p.join(WAIT)
        assert p.exitcode == 1          # ValueError in the child
        assert bsem.get_value() == 1
        del sem, bsem

    def test_condition_notify_n_and_all(self, ctx, no_sem_leak):
        cond = ctx.Condition()
        sleeping, woken = ctx.Semaphore(0), ctx.Semaphore(0)
        procs = [ctx.Process(target=child_wait_condition,
                             args=(cond, sleeping, woken, WAIT))
                 for _ in range(3)]
        for p in procs:
            p.start()
        for _ in procs:
            assert sleeping.acquire(timeout=WAIT)
        time.sleep(0.1)         # let them reach wait()
        with cond:
            cond.notify(2)
        assert woken.acquire(timeout=WAIT) and woken.acquire(timeout=WAIT)
        assert woken.acquire(timeout=0.3) is False
        with cond:
            cond.notify_all()
        assert woken.acquire(timeout=WAIT)
        for p in procs:
            _join_ok(p)
        del cond, sleeping, woken

    def test_notify_survives_a_killed_waiter(self, ctx, no_sem_leak):
        cond = ctx.Condition()
        cond._notify_grace = 0.5
        sleeping, woken = ctx.Semaphore(0), ctx.Semaphore(0)
        p = ctx.Process(target=child_wait_condition,
                        args=(cond, sleeping, woken, WAIT))
        p.start()
        assert sleeping.acquire(timeout=WAIT)
        time.sleep(0.2)         # inside wait(), lock released
        p.kill()
        p.join(WAIT)
        t0 = time.monotonic()
        with cond:
            cond.notify_all()   # must not wait forever for the dead one
        assert time.monotonic() - t0 < 5
        t0 = time.monotonic()
        with cond:
            cond.notify_all()   # and the next notify does not stall at all
        assert time.monotonic() - t0 < 0.4
        # A live waiter is still woken as usual.
        p = ctx.Process(target=child_wait_condition,
                        args=(cond, sleeping, woken, WAIT))
        p.start()
        assert sleeping.acquire(timeout=WAIT)
        time.sleep(0.2)
        with cond:
            cond.notify()
        assert woken.acquire(timeout=WAIT)
        _join_ok(p)
        del cond, sleeping, woken

    def test_condition_wait_timeout(self, ctx, no_sem_leak):
        cond = ctx.Condition()
        sleeping, woken = ctx.Semaphore(0), ctx.Semaphore(0)
        p = ctx.Process(target=child_wait_condition,
                        args=(cond, sleeping, woken, 0.2))
        p.start()
        _join_ok(p)
        assert sleeping.get_value() == 1 and woken.get_value() == 0
        # A waiter that timed out must not swallow a later notify.
        assert repr(cond).endswith(', 0)>')
        del cond, sleeping, woken

    def test_condition_wait_for(self, ctx, no_sem_leak):
        cond, flag, woken = ctx.Condition(), ctx.Semaphore(0), ctx.Semaphore(0)
        p = ctx.Process(target=child_wait_for, args=(cond, flag, woken))
        p.start()
        time.sleep(0.1)
        with cond:
            flag.release()
            cond.notify()
        assert woken.acquire(timeout=WAIT)
        _join_ok(p)
        del cond, flag, woken

    def test_event(self, ctx, no_sem_leak):
        event, woken = ctx.Event(), ctx.Semaphore(0)
        procs = [ctx.Process(target=child_wait_event, args=(event, woken))
                 for _ in range(2)]
        for p in procs:
            p.start()
        assert woken.acquire(timeout=0.2) is False
        event.set()
        for p in procs:
            assert woken.acquire(timeout=WAIT)
            _join_ok(p)
        del event, woken

    def test_barrier(self, ctx, no_sem_leak):
        calls = ctx.Semaphore(0)
        barrier = ctx.Barrier(3, action=functools.partial(child_release_n, calls, 1))
        slots = [ctx.Semaphore(0) for _ in range(3)]
        procs = [ctx.Process(target=child_barrier, args=(barrier, slots))
                 for _ in range(2)]
        for p in procs:
            p.start()
        slots[barrier.wait(WAIT)].release()
        for p in procs:
            _join_ok(p)
        assert [s.get_value() for s in slots] == [1, 1, 1]
        assert calls.get_value() == 1       # the action ran once
        assert barrier.n_waiting == 0 and not barrier.broken
        del barrier, slots, calls

    def test_barrier_abort_and_reset(self, ctx, no_sem_leak):
        barrier = ctx.Barrier(3)
        broken = ctx.Semaphore(0)
        p = ctx.Process(target=child_barrier_broken, args=(barrier, broken))
        p.start()
        deadline = time.monotonic() + WAIT
        while barrier.n_waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert barrier.n_waiting == 1
        barrier.abort()
        assert broken.acquire(timeout=WAIT)
        _join_ok(p)
        assert barrier.broken
        barrier.reset()
        assert not barrier.broken and barrier.n_waiting == 0
        del barrier, broken

    def test_barrier_timeout_breaks_it_everywhere(self, ctx, no_sem_leak):
        barrier = ctx.Barrier(3, timeout=0.2)
        broken = ctx.Semaphore(0)
        p = ctx.Process(target=child_barrier_broken, args=(barrier, broken))
        p.start()
        with pytest.raises(threading.BrokenBarrierError):
            barrier.wait()      # the default timeout: 2 of 3 parties only
        assert broken.acquire(timeout=WAIT)
        _join_ok(p)
        del barrier, broken


class TestNamesAndLeaks:
    def test_fork_context_leaves_no_names(self, no_sem_leak):
        ctx = multiprocessing_c.get_context('fork')
        objs = [ctx.Lock(), ctx.RLock(), ctx.Condition(), ctx.Event(), ctx.Barrier(2)]
        assert no_sem_leak and not any(
            os.path.exists('/dev/shm/sem.' + n.lstrip('/')) for n in no_sem_leak)
        assert all(o._semlock.name is None
                   for o in objs[:2])
        del objs

    def test_spawn_names_use_semprefix_and_are_unlinked(self, no_sem_leak):
        ctx = multiprocessing_c.get_context('spawn')
        lock = ctx.Lock()
        name = lock._semlock.name
        prefix = multiprocessing_c.current_process()._config['semprefix']
        assert name.startswith(prefix + '-')
        assert os.path.exists('/dev/shm/sem.' + name.lstrip('/'))
        del lock
        import gc
        gc.collect()
        assert not os.path.exists('/dev/shm/sem.' + name.lstrip('/'))

    def test_fork_lock_to_spawn_child_is_refused(self):
        lock = multiprocessing_c.get_context('fork').Lock()
        p = multiprocessing_c.get_context('spawn').Process(
            target=child_touch, args=(lock,))
        with pytest.raises(RuntimeError, match='A SemLock created in a fork'):
            p.start()

    def test_killed_holder_leaves_nothing(self, ctx, no_sem_leak):
        lock, held, go = ctx.Lock(), ctx.Event(), ctx.Event()
        p = ctx.Process(target=child_hold_lock, args=(lock, held, go))
        p.start()
        assert held.wait(WAIT)
        p.kill()
        p.join(WAIT)
        assert lock.acquire(timeout=0.05) is False
        del lock, held, go


def test_killed_creator_semaphore_removed_by_resource_tracker(tmp_path):
    pytest.importorskip('multiprocessing_c.resource_tracker',
                        reason='the resource tracker (issue 7) is not merged yet')
    import subprocess
    from testutil import child_env
    code = ("import os, signal, multiprocessing_c as m\n"
            "lock = m.get_context('spawn').Lock()\n"
            "print(lock._semlock.name, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.run([sys.executable, '-c', code], env=child_env(),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL
    name = p.stdout.strip()
    assert name.startswith('/')
    path = '/dev/shm/sem.' + name[1:]
    deadline = time.monotonic() + 10
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(path)
