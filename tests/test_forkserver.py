"""The forkserver start method and its server (docs: "Contexts and start
methods"; issue 8): children, exit codes, preloads, the server's own
lifetime (restart after a kill, exit with its program), robustness against
bad clients, no zombies, and the socket's privacy."""
import os
import signal
import socket
import stat
import struct
import sys
import time

import pytest

import multiprocessing_c
from multiprocessing_c import _mpcore
from multiprocessing_c import forkserver
from multiprocessing_c.forkserver import _forkserver

from testutil import (check_child_preparation, check_main_run_with_dash_m,
                      check_missing_main_guard, check_no_stray_fds,
                      run_python, write_script)

ctx = multiprocessing_c.get_context('forkserver')


# ---- targets: module level, so that forkserver children can import them ----

def exit_with(code):
    sys.exit(code)


def sleep_for(secs):
    time.sleep(secs)


def report_pids(path):
    with open(path, 'w') as f:
        f.write('%d %d' % (os.getpid(), os.getppid()))


def send_over_socket(sock, text):
    sock.sendall(text.encode())
    sock.close()


def _pid_alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(') ', 1)[1][0] != 'Z'
    except FileNotFoundError:
        return False


def _children_of(pid):
    """(pid, state) of every process whose parent is `pid`."""
    found = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % name) as f:
                fields = f.read().rsplit(') ', 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append((int(name), fields[0]))
    return found


def _wait_until(cond, timeout=10):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _start(target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    return p


# ------------------------------------------------------------------ tests

def test_forkserver_is_an_available_start_method():
    assert 'forkserver' in multiprocessing_c.get_all_start_methods()
    assert ctx.get_start_method() == 'forkserver'
    assert ctx.Process._start_method == 'forkserver'


def test_child_is_forked_by_the_server(tmp_path):
    out = tmp_path / 'pids'
    p = _start(report_pids, str(out))
    p.join()
    assert p.exitcode == 0
    pid, ppid = map(int, out.read_text().split())
    assert pid == p.pid
    assert ppid == _forkserver._forkserver_pid != os.getpid()


@pytest.mark.parametrize('code', [0, 1, 3, 255])
def test_exit_codes(code):
    p = _start(exit_with, code)
    p.join()
    assert p.exitcode == code


@pytest.mark.parametrize('how, sig', [('terminate', signal.SIGTERM),
                                      ('kill', signal.SIGKILL)])
def test_terminate_and_kill_give_negative_signal(how, sig):
    p = _start(sleep_for, 30)
    assert p.is_alive()
    getattr(p, how)()
    p.join(10)
    assert p.exitcode == -sig
    assert not p.is_alive()


def test_join_timeout_and_sentinel():
    import select
    p = _start(sleep_for, 30)
    p.join(0.1)
    assert p.exitcode is None and p.is_alive()
    assert select.select([p.sentinel], [], [], 0)[0] == []
    p.terminate()
    assert select.select([p.sentinel], [], [], 10)[0] == [p.sentinel]
    p.join()
    assert p.exitcode == -signal.SIGTERM
    # Ready for good once the process has ended, as with fork.
    for _ in range(3):
        assert select.select([p.sentinel], [], [], 0)[0] == [p.sentinel]


def test_sentinels_of_joined_children_stay_ready():
    from multiprocessing_c import connection
    procs = [_start(exit_with, 0) for _ in range(10)]
    for p in procs:
        p.join()
    sentinels = [p.sentinel for p in procs]
    assert connection.wait(sentinels, 0) == sentinels


def echo_upper(conn):
    conn.send(conn.recv().upper())
    conn.close()


def test_connection_passed_to_child():
    a, b = multiprocessing_c.Pipe()
    p = _start(echo_upper, b)
    b.close()
    a.send('hello')
    assert a.poll(10)
    assert a.recv() == 'HELLO'
    a.close()
    p.join()
    assert p.exitcode == 0


def test_many_children_at_once():
    procs = [ctx.Process(target=exit_with, args=(i % 7,)) for i in range(50)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [i % 7 for i in range(50)]


def test_no_zombies_and_no_fd_leaks():
    forkserver.ensure_running()
    before = len(os.listdir('/proc/self/fd'))
    procs = [_start(exit_with, 0) for _ in range(10)]
    for p in procs:
        p.join()
        p.close()
    del procs
    # The server reports an exit code only after reaping the child.
    server = _forkserver._forkserver_pid
    assert [s for _, s in _children_of(server) if s == 'Z'] == []
    assert len(os.listdir('/proc/self/fd')) == before
    # (The check sees the server's children while they run.)
    p = _start(sleep_for, 30)
    assert [s for pid, s in _children_of(server) if pid == p.pid] in (
        ['S'], ['R'])
    p.kill()
    p.join()
    assert p.pid not in [pid for pid, _ in _children_of(server)]


def test_socket_directory_is_private():
    forkserver.ensure_running()
    address = _forkserver._forkserver_address
    st = os.stat(os.path.dirname(address))
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == os.getuid()
    assert stat.S_ISSOCK(os.stat(address).st_mode)
    assert stat.S_IMODE(os.stat(address).st_mode) & 0o077 == 0


def _raw_client():
    forkserver.ensure_running()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(_forkserver._forkserver_address)
    return s


def _request(nfds, token=None, magic=None):
    return struct.pack('=II32s',
                       _mpcore.FORKSERVER_MAGIC if magic is None else magic,
                       nfds, _forkserver._token if token is None else token)


def _assert_server_serves():
    p = _start(exit_with, 5)
    p.join(10)
    assert p.exitcode == 5


def test_bad_clients_are_dropped_and_the_server_keeps_serving():
    # Disconnects mid-request.
    s = _raw_client()
    pid = _forkserver._forkserver_pid
    s.sendall(_request(1)[:10])
    s.close()
    # Connects and stalls, staying connected while others are served.
    stalled = _raw_client()
    stalled.sendall(b'\0')
    # Garbage.
    g = _raw_client()
    g.sendall(os.urandom(200))
    # A wrong token, a wrong magic, and an fd count that lies: each with a
    # pipe end the server must close, and no pid in answer.
    for req in (_request(1, token=b'x' * 32), _request(1, magic=1),
                _request(3)):
        r, w = os.pipe()
        c = _raw_client()
        socket.send_fds(c, [req], [w])
        os.close(w)
        c.settimeout(10)
        assert c.recv(8) == b''             # dropped: EOF, no pid
        os.set_blocking(r, False)
        assert _wait_until(lambda: _read_eof(r))   # its copy of w is closed
        os.close(r)
        c.close()
    _assert_server_serves()
    g.close()
    stalled.close()
    assert _forkserver._forkserver_pid == pid


def _read_eof(fd):
    try:
        return os.read(fd, 1) == b''
    except BlockingIOError:
        return False


def test_more_fds_than_allowed_are_refused():
    with pytest.raises(ValueError):
        forkserver.connect_to_new_process(list(range(forkserver.MAXFDS_TO_SEND)))


def test_killed_server_is_restarted():
    forkserver.ensure_running()
    old = _forkserver._forkserver_pid
    running = _start(sleep_for, 0.5)
    os.kill(old, signal.SIGKILL)
    # Straight away, before the kill is even noticed.
    _assert_server_serves()
    assert _forkserver._forkserver_pid not in (None, old)
    assert not _pid_alive(old)
    # The child the dead server was watching lives on; its exit code was
    # lost with the server (the stdlib says 255 too).
    running.join(10)
    assert running.exitcode in (0, 255)
    assert not running.is_alive()


def test_killed_server_with_many_threads_starting():
    import threading
    forkserver.ensure_running()
    os.kill(_forkserver._forkserver_pid, signal.SIGKILL)
    results, errors = [], []

    def worker(k):
        try:
            procs = [_start(exit_with, k) for _ in range(3)]
            for p in procs:
                p.join(30)
                results.append(p.exitcode)
        except Exception as e:          # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == sorted(k for k in range(4) for _ in range(3))


def test_server_ignores_sigint():
    forkserver.ensure_running()
    pid = _forkserver._forkserver_pid
    os.kill(pid, signal.SIGINT)
    time.sleep(0.1)
    assert _pid_alive(pid)
    _assert_server_serves()
    assert _forkserver._forkserver_pid == pid


def test_stop_ends_the_server():
    forkserver.ensure_running()
    pid = _forkserver._forkserver_pid
    address = _forkserver._forkserver_address
    _forkserver._stop()
    assert not _pid_alive(pid)
    assert not os.path.exists(address)
    _assert_server_serves()


def test_server_exits_with_its_program(tmp_path):
    script = write_script(tmp_path / 'parent.py', '''
        import os, sys, time, multiprocessing_c as mp
        from multiprocessing_c.forkserver import _forkserver
        def f(): time.sleep(0.1)
        if __name__ == '__main__':
            p = mp.get_context('forkserver').Process(target=f)
            p.start(); p.join()
            print(_forkserver._forkserver_pid, flush=True)
            if sys.argv[1] == 'kill':
                os.kill(os.getpid(), 9)
    ''')
    for how in ('exit', 'kill'):
        r = run_python([script, how])
        server = int(r.stdout.split()[0])
        assert _wait_until(lambda: not _pid_alive(server)), how


def test_set_forkserver_preload_checks_names():
    with pytest.raises(TypeError, match='module_names must be a list of strings'):
        ctx.set_forkserver_preload([1, 2])


def test_preloaded_modules_are_imported_by_the_server(tmp_path):
    (tmp_path / 'fs_probe_mod.py').write_text(
        'import os\nIMPORTED_IN = os.getpid()\n')
    script = write_script(tmp_path / 'pre.py', '''
        import os, sys, multiprocessing_c as mp
        MAIN_LOADED_IN = os.getpid()
        def f():
            import __main__, fs_probe_mod
            from multiprocessing_c.forkserver import _forkserver
            server = os.getppid()
            ok = (fs_probe_mod.IMPORTED_IN == server
                  and __main__.MAIN_LOADED_IN == server)
            sys.exit(0 if ok else 9)
        if __name__ == '__main__':
            ctx = mp.get_context('forkserver')
            ctx.set_forkserver_preload(['__main__', 'fs_probe_mod',
                                        'no_such_module_anywhere'])
            p = ctx.Process(target=f)
            p.start(); p.join()
            print('exitcode', p.exitcode)
    ''')
    r = run_python([script], cwd=str(tmp_path))
    assert 'exitcode 0' in r.stdout, r.stderr


def test_socket_passed_to_child():
    a, b = socket.socketpair()
    with a, b:
        p = _start(send_over_socket, b, 'hello from the child')
        b.close()
        a.settimeout(10)
        got = b''
        while True:
            chunk = a.recv(100)
            if not chunk:
                break
            got += chunk
        p.join()
    assert got == b'hello from the child'
    assert p.exitcode == 0


def test_forkserver_serve_argument_errors():
    with pytest.raises(TypeError):
        _mpcore.forkserver_serve(0, 0)
    with pytest.raises(ValueError):
        _mpcore.forkserver_serve(0, 0, b'short')
    with pytest.raises(ValueError):
        _mpcore.forkserver_serve(-1, 0, b'x' * _mpcore.FORKSERVER_TOKEN_LEN)


def test_runner_alias_reaches_server_and_children(tmp_path):
    script = write_script(tmp_path / 'prog.py', '''
        import sys, multiprocessing, _multiprocessing
        def child():
            import multiprocessing as m
            print('child', m.__name__, _multiprocessing.__name__, flush=True)
        if __name__ == '__main__':
            p = multiprocessing.get_context('forkserver').Process(target=child)
            p.start(); p.join()
            sys.exit(p.exitcode)
    ''')
    r = run_python(['-m', 'multiprocessing_c', script])
    assert r.returncode == 0, r.stderr
    assert 'child multiprocessing_c multiprocessing_c._mpcore' in r.stdout


def test_child_is_prepared_like_a_spawned_one(tmp_path):
    check_child_preparation(tmp_path, 'forkserver')


def test_main_run_with_dash_m(tmp_path):
    check_main_run_with_dash_m(tmp_path, 'forkserver')


def test_missing_main_guard_gives_clear_runtime_error(tmp_path):
    check_missing_main_guard(tmp_path, 'forkserver')


def test_child_inherits_no_stray_fds(tmp_path):
    # stdio, the parent-liveness fd, the resource tracker's fd, the output
    # file and the fd the listing opens.
    check_no_stray_fds(tmp_path, 'forkserver', most=7)


def run_subprocess_and_exit():
    # A child must have SIGCHLD back at its default (the server handles
    # it), or waiting for its own subprocesses would fail.
    import subprocess
    r = subprocess.run([sys.executable, '-c', 'import sys; sys.exit(4)'])
    sys.exit(10 + r.returncode)


def test_child_can_wait_for_its_own_subprocesses():
    p = _start(run_subprocess_and_exit)
    p.join(30)
    assert p.exitcode == 14


def raise_keyboard_interrupt_on_sigint(path):
    try:
        with open(path, 'w') as f:
            f.write('ready')
        time.sleep(30)
    except KeyboardInterrupt:
        sys.exit(21)


def test_child_gets_keyboard_interrupt_back(tmp_path):
    # The server ignores SIGINT; its children must not.
    path = str(tmp_path / 'ready')
    p = _start(raise_keyboard_interrupt_on_sigint, path)
    assert _wait_until(lambda: os.path.exists(path))
    os.kill(p.pid, signal.SIGINT)
    p.join(10)
    assert p.exitcode == 21


def test_starts_from_many_threads_at_once():
    import threading
    results = []

    def worker(k):
        procs = [_start(exit_with, k) for _ in range(5)]
        for p in procs:
            p.join(30)
            results.append((k, p.exitcode))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted((k, k) for k in range(4) for _ in range(5))


def test_forked_child_starts_its_own_server(tmp_path):
    script = write_script(tmp_path / 'forked.py', '''
        import os, sys, multiprocessing_c as mp
        from multiprocessing_c.forkserver import _forkserver
        def f():
            sys.exit(3)
        def via_fork(parent_server):
            p = mp.get_context('forkserver').Process(target=f)
            p.start(); p.join()
            mine = _forkserver._forkserver_pid
            sys.exit(0 if p.exitcode == 3 and mine not in (None, parent_server)
                     else 1)
        if __name__ == '__main__':
            p = mp.get_context('forkserver').Process(target=f)
            p.start(); p.join()
            q = mp.get_context('fork').Process(target=via_fork,
                                               args=(_forkserver._forkserver_pid,))
            q.start(); q.join()
            print('exitcodes', p.exitcode, q.exitcode)
    ''')
    r = run_python([script])
    assert 'exitcodes 3 0' in r.stdout, r.stderr


def test_start_and_join_survive_signal_storms():
    # SIGALRM every millisecond while starting and joining: the blocking
    # calls on our side are retried, none fails with EINTR.
    hits = []
    old = signal.signal(signal.SIGALRM, lambda *a: hits.append(1))
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        procs = [_start(sleep_for, 0.05) for _ in range(10)]
        for p in procs:
            p.join()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert [p.exitcode for p in procs] == [0] * 10
    assert hits


# ---- objects passed at process creation ----

def add_under_lock(lock, counter, n):
    for _ in range(n):
        with lock:
            counter.value += 1


def test_lock_and_value_passed_to_children():
    lock = ctx.Lock()
    counter = ctx.Value('i', 0, lock=False)
    procs = [_start(add_under_lock, lock, counter, 200) for _ in range(4)]
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 4
    assert counter.value == 800


def fill_array(arr, q):
    for i in range(len(arr)):
        arr[i] = i * i
    q.put(('done', sum(arr)))


def test_array_and_queue_passed_to_child():
    arr = ctx.Array('i', 10)
    q = ctx.Queue()
    p = _start(fill_array, arr, q)
    assert q.get(timeout=10) == ('done', sum(i * i for i in range(10)))
    p.join(10)
    assert p.exitcode == 0
    assert arr[:] == [i * i for i in range(10)]
    q.close()
    q.join_thread()


def write_shared_memory(name):
    from multiprocessing_c import shared_memory
    shm = shared_memory.SharedMemory(name)
    shm.buf[:5] = b'hello'
    shm.close()


def test_shared_memory_used_by_child():
    from multiprocessing_c import shared_memory
    shm = shared_memory.SharedMemory(create=True, size=64)
    try:
        p = _start(write_shared_memory, shm.name)
        p.join(10)
        assert p.exitcode == 0
        assert bytes(shm.buf[:5]) == b'hello'
    finally:
        shm.close()
        shm.unlink()


def test_fork_context_lock_is_refused():
    lock = multiprocessing_c.get_context('fork').Lock()
    p = ctx.Process(target=add_under_lock, args=(lock, None, 0))
    with pytest.raises(RuntimeError, match='SemLock created in a fork'):
        p.start()


def sleep_then_set(evt, delay):
    time.sleep(delay)
    evt.set()


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGKILL])
def test_server_death_during_a_child(sig):
    # As CPython's check_forkserver_death: a child started before the
    # server died finishes its work; the next one gets a new server.
    forkserver.ensure_running()
    evt = ctx.Event()
    first = _start(sleep_then_set, evt, 0.5)
    os.kill(_forkserver._forkserver_pid, sig)
    time.sleep(1.0)
    evt2 = ctx.Event()
    second = _start(sleep_then_set, evt2, 0)
    second.join(10)
    assert evt2.is_set() and second.exitcode == 0
    first.join(10)
    assert evt.is_set()
    assert first.exitcode in (0, 255)


def test_cpython_mp_preload_script_under_the_runner():
    # CPython's test_preload_resources: a preloaded module that makes a
    # Lock at import, run with `multiprocessing` resolved to us everywhere
    # (the server imports test.mp_preload through the alias).
    import importlib.util
    spec = importlib.util.find_spec('test.mp_preload')
    if spec is None:
        pytest.skip("this interpreter ships without CPython's test package")
    r = run_python(['-m', 'multiprocessing_c', spec.origin])
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip() == 'ok'
    assert r.stderr == ''


def check_payload(data, n):
    sys.exit(0 if len(data) == n and data[-3:] == b'end' else 1)


def test_big_arguments_reach_the_child():
    # Far more than a pipe holds: the parent writes while the child reads.
    data = b'x' * (8 << 20) + b'end'
    p = _start(check_payload, data, len(data))
    p.join(30)
    assert p.exitcode == 0


def test_socket_default_timeout_does_not_break_start(tmp_path):
    # CPython's TestTimeouts sets a 0.1 s default socket timeout, which
    # would make the request socket (the child's sentinel) non-blocking.
    script = write_script(tmp_path / 'deftimeout.py', '''
        import socket, time, multiprocessing_c as mp
        def f():
            time.sleep(0.3)
        if __name__ == '__main__':
            socket.setdefaulttimeout(0.1)
            ctx = mp.get_context('forkserver')
            for _ in range(3):
                p = ctx.Process(target=f); p.start(); p.join()
                print(p.exitcode)
    ''')
    r = run_python([script])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['0', '0', '0']
