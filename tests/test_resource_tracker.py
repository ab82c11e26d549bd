"""The resource tracker: one process per program that unlinks the named
semaphores and shared memory segments a program leaks."""
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time

import pytest

import multiprocessing_c
from multiprocessing_c import resource_tracker
from multiprocessing_c.shared_memory import SharedMemory

from testutil import child_env, run_python, write_script


def shm_exists(name):
    return os.path.exists('/dev/shm/' + name.lstrip('/'))


def wait_gone(path, timeout=10):
    deadline = time.monotonic() + timeout
    while os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def tracker():
    """A private tracker, so tests never disturb the session's one."""
    rt = resource_tracker.ResourceTracker()
    yield rt
    rt._stop()


def send(rt, line):
    os.write(rt.getfd(), line.encode() + b'\n')


def dead_pid():
    """The pid of a process that has exited and been reaped."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def make_segment(tag):
    name = '/mpc_rt_%s_%d' % (tag, os.getpid())
    from multiprocessing_c import _mpcore
    fd = _mpcore.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(fd)
    return name


# ---- children (module level for spawn) ----

def report_tracker(path, parent_tracker_pid):
    rt = resource_tracker._resource_tracker
    rt.ensure_running()
    reused = rt._pid in (None, parent_tracker_pid) and rt._check_alive()
    with open(path, 'w') as f:
        f.write('reused' if reused else 'new %r' % rt._pid)


# ---- API ----

def test_module_api():
    for name in ('ResourceTracker', 'ensure_running', 'register',
                 'unregister', 'getfd', 'main', '_resource_tracker',
                 '_CLEANUP_FUNCS'):
        assert hasattr(resource_tracker, name), name
    assert {'noop', 'semaphore', 'shared_memory'} <= set(
        resource_tracker._CLEANUP_FUNCS)


def test_bad_messages_are_refused():
    with pytest.raises(ValueError):
        resource_tracker.register('a' * (512 - len('shared_memory')),
                                  'shared_memory')
    with pytest.raises(ValueError):
        resource_tracker.register('/x', 'no_such_type')
    with pytest.raises(ValueError):
        resource_tracker.register('/x\nREGISTER', 'shared_memory')


def test_cleanup_funcs_raise_enoent():
    for rtype in ('semaphore', 'shared_memory'):
        with pytest.raises(FileNotFoundError):
            resource_tracker._CLEANUP_FUNCS[rtype]('/mpc_absent_%d'
                                                   % os.getpid())


def test_one_tracker_per_program(tracker):
    fd = tracker.getfd()
    pid = tracker._pid
    tracker.ensure_running()
    assert (tracker.getfd(), tracker._pid) == (fd, pid)


# ---- what the tracker does at the end ----

def test_leaked_segment_is_unlinked_with_warning(tracker, capfd):
    name = make_segment('leak')
    # Registered by a process that is gone, as when a program ends.
    send(tracker, 'REGISTER:shared_memory:%d:%s' % (dead_pid(), name))
    tracker._stop()
    err = capfd.readouterr().err
    assert not shm_exists(name)
    assert 'There appear to be 1 leaked shared_memory objects' in err
    assert repr(name) in err


def test_unregistered_segment_is_left_alone(tracker, capfd):
    name = make_segment('kept')
    pid = dead_pid()
    try:
        send(tracker, 'REGISTER:shared_memory:%d:%s' % (pid, name))
        send(tracker, 'UNREGISTER:shared_memory:%d:%s' % (pid, name))
        tracker._stop()
        assert shm_exists(name)
        assert 'leaked' not in capfd.readouterr().err
    finally:
        os.unlink('/dev/shm' + name)


def test_unlinked_segment_is_forgotten(tracker, capfd):
    # The usual life: created, unlinked by another process, unregistered.
    name = make_segment('gone')
    send(tracker, 'REGISTER:shared_memory:%d:%s' % (dead_pid(), name))
    os.unlink('/dev/shm' + name)
    tracker.unregister(name, 'shared_memory')   # from another pid: us
    tracker._stop()
    assert 'leaked' not in capfd.readouterr().err


def test_registrations_are_counted_per_process(tracker, capfd):
    # One process stops tracking a segment another one still registered:
    # the other registration keeps it tracked.
    name = make_segment('count')
    other, me = dead_pid(), dead_pid()
    send(tracker, 'REGISTER:shared_memory:%d:%s' % (other, name))
    send(tracker, 'REGISTER:shared_memory:%d:%s' % (me, name))
    send(tracker, 'UNREGISTER:shared_memory:%d:%s' % (me, name))
    tracker._stop()
    err = capfd.readouterr().err
    assert not shm_exists(name)
    assert 'There appear to be 1 leaked shared_memory objects' in err
    assert 'pid %d' % other in err


def test_never_unlinks_what_a_live_process_registered(tracker, capfd):
    name = make_segment('live')
    tracker.ensure_running()        # the child shares it
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        # Register, then drop the tracker's pipe but stay alive.
        try:
            os.close(r)
            tracker.register(name, 'shared_memory')
            os.close(tracker._fd)
            os.write(w, b'x')
            time.sleep(5)
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b'x'
        tracker._stop()     # EOF: the child still runs
        err = capfd.readouterr().err
        assert shm_exists(name)
        assert 'still running' in err and repr(name) in err
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        os.unlink('/dev/shm' + name)


def test_liveness_check_is_not_fooled_by_pid_reuse():
    state, started = resource_tracker._proc_stat(os.getpid())
    assert resource_tracker._pid_alive(os.getpid(), started)
    # Same pid, another start time: a different process reusing the pid.
    assert not resource_tracker._pid_alive(os.getpid(), started + 1)
    assert not resource_tracker._pid_alive(dead_pid())


def test_leaked_semaphore_is_unlinked(tracker, capfd):
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6',
                       use_errno=True)
    libc.sem_open.restype = ctypes.c_void_p
    name = '/mpc_rt_sem_%d' % os.getpid()
    sem = libc.sem_open(name.encode(), os.O_CREAT | os.O_EXCL, 0o600, 1)
    assert sem not in (None, 0)
    libc.sem_close(ctypes.c_void_p(sem))
    path = '/dev/shm/sem.' + name[1:]
    assert os.path.exists(path)
    send(tracker, 'REGISTER:semaphore:%d:%s' % (dead_pid(), name))
    tracker._stop()
    assert not os.path.exists(path)
    assert 'There appear to be 1 leaked semaphore objects' in \
        capfd.readouterr().err


# ---- the tracker process itself ----

@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_tracker_ignores_sigint_and_sigterm(tracker, signum):
    tracker.ensure_running()
    os.kill(tracker._pid, signum)      # at once: even during its start-up
    time.sleep(0.5)
    assert tracker._check_alive()


def test_tracker_relaunched_after_sigkill(tracker):
    tracker.ensure_running()
    pid = tracker._pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while tracker._check_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.warns(UserWarning, match='resource_tracker: process died'):
        tracker.ensure_running()
    assert tracker._pid != pid
    assert tracker._check_alive()


def test_children_share_the_tracker(ctx, tmp_path):
    resource_tracker.ensure_running()
    out = tmp_path / 'out'
    p = ctx.Process(target=report_tracker,
                    args=(str(out), resource_tracker._resource_tracker._pid))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert out.read_text() == 'reused'


# ---- whole programs ----

KILLED_CHILD = '''
import os, signal, sys, time
import multiprocessing_c as mp
from multiprocessing_c.shared_memory import SharedMemory

def child(path):
    sm = SharedMemory(create=True, size=10)
    with open(path + '.tmp', 'w') as f:
        f.write(sm._name)
    os.rename(path + '.tmp', path)
    time.sleep(60)

if __name__ == '__main__':
    method, path = sys.argv[1], sys.argv[2]
    p = mp.get_context(method).Process(target=child, args=(path,))
    p.start()
    while not os.path.exists(path):
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    print('exitcode', p.exitcode)
'''


def test_segment_of_sigkilled_child_is_unlinked(start_method, tmp_path):
    script = write_script(tmp_path / 'killed.py', KILLED_CHILD)
    path = str(tmp_path / 'name')
    r = run_python([script, start_method, path])
    assert r.returncode == 0, r.stderr
    assert 'exitcode %d' % -signal.SIGKILL in r.stdout
    with open(path) as f:
        name = f.read()
    assert wait_gone('/dev/shm' + name), 'segment %s leaked' % name
    assert 'There appear to be 1 leaked shared_memory objects' in r.stderr
    assert repr(name) in r.stderr


KILLED_MAIN = '''
import os, sys, time
from multiprocessing_c.shared_memory import SharedMemory
a = SharedMemory(create=True, size=10)
b = SharedMemory(create=True, size=10)
b.unlink()                              # not leaked: must not be reported
print(a._name, flush=True)
time.sleep(60)
'''


def test_segments_of_sigkilled_program_are_unlinked(tmp_path):
    script = write_script(tmp_path / 'main.py', KILLED_MAIN)
    p = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=child_env())
    try:
        name = p.stdout.readline().decode().strip()
        assert shm_exists(name)
        p.kill()
        p.wait()
        err = p.stderr.read().decode()     # EOF once the tracker is done
    finally:
        p.stdout.close()
        p.stderr.close()
    assert not shm_exists(name)
    assert 'There appear to be 1 leaked shared_memory objects' in err
    assert repr(name) in err


CLEAN_PROGRAM = '''
import multiprocessing_c as mp
from multiprocessing_c.shared_memory import SharedMemory, ShareableList

def child(name):
    sm = SharedMemory(name)
    sm.buf[0] = 7
    sm.close()

if __name__ == '__main__':
    sm = SharedMemory(create=True, size=10)
    sl = ShareableList([1, 2])
    for method in ('fork', 'spawn'):
        p = mp.get_context(method).Process(target=child, args=(sm.name,))
        p.start()
        p.join()
    assert sm.buf[0] == 7
    sm.close(); sm.unlink()
    sl.shm.close(); sl.shm.unlink()
'''


def test_clean_program_reports_nothing(tmp_path):
    script = write_script(tmp_path / 'clean.py', CLEAN_PROGRAM)
    r = run_python([script])
    assert r.returncode == 0, r.stderr
    assert r.stderr == ''


def test_concurrent_writers_never_interleave(tracker, capfd):
    # Many processes register and unregister at once through one pipe;
    # every line must arrive whole, so nothing is left registered.
    tracker.ensure_running()
    pids = []
    for k in range(6):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for i in range(200):
                    name = '/mpc_never_made_%d_%d_%s' % (k, i, 'x' * 100)
                    tracker.register(name, 'shared_memory')
                    tracker.unregister(name, 'shared_memory')
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    tracker._stop()
    err = capfd.readouterr().err
    assert 'leaked' not in err and 'Traceback' not in err
