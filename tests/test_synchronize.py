"""Synchronization primitives: _mpcore.SemLock and multiprocessing_c.synchronize.

The SemLock tests use os.fork and a fresh interpreter directly, so they
need nothing but the C extension.
"""
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
    return set(glob.glob("/dev/shm/sem.*"))


@pytest.fixture
def no_sem_leak():
    before = _sem_files()
    yield
    leaked = _sem_files() - before
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
