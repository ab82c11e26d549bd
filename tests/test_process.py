"""Process objects (docs: "Process and exceptions"), under each start method."""
import os
import signal
import sys
import time

import pytest

import multiprocessing_c
from multiprocessing_c import process as mp_process

from testutil import run_python, write_script


# ---- targets: module level, so that spawned children can import them ----

def write_file(path, text):
    # Atomically, so that a reader polling for the file never sees it empty.
    with open(path + '.tmp', 'w') as f:
        f.write(text)
    os.replace(path + '.tmp', path)


def report_self(path, *args, **kwargs):
    me = multiprocessing_c.current_process()
    parent = multiprocessing_c.parent_process()
    write_file(path, repr({
        'args': args, 'kwargs': kwargs, 'name': me.name, 'pid': os.getpid(),
        'me_pid': me.pid, 'ident': me.ident, 'authkey': bytes(me.authkey),
        'daemon': me.daemon, 'parent_pid': parent.pid,
        'parent_name': parent.name, 'parent_alive': parent.is_alive(),
        'children': multiprocessing_c.active_children(),
        'start_method': multiprocessing_c.get_start_method(),
    }))


def read_report(path):
    with open(path) as f:
        return eval(f.read())


def sleep_forever():
    time.sleep(60)


def exit_with(code):
    sys.exit(code)


def raise_error():
    raise ValueError('boom from the child')


def wait_for_file(path, timeout=10):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise AssertionError('child never wrote %s' % path)
        time.sleep(0.01)


class Doubler(multiprocessing_c.Process):
    """A subclass overriding run(), as the docs show."""

    def __init__(self, path, value):
        super().__init__()
        self.path = path
        self.value = value

    def run(self):
        write_file(self.path, str(self.value * 2))


# ------------------------------------------------------------------ tests

def test_target_args_kwargs_name_and_identity(ctx, tmp_path):
    out = str(tmp_path / 'out')
    p = ctx.Process(target=report_self, args=(out, 1, 'two'),
                    kwargs={'three': 3.0}, name='Worker')
    assert p.name == 'Worker'
    assert p.pid is None and p.ident is None and p.exitcode is None
    assert not p.is_alive()
    p.start()
    p.join()
    assert p.exitcode == 0
    r = read_report(out)
    assert r['args'] == (1, 'two')
    assert r['kwargs'] == {'three': 3.0}
    assert r['name'] == 'Worker'
    assert r['pid'] == p.pid == p.ident == r['me_pid'] == r['ident']
    assert r['authkey'] == bytes(multiprocessing_c.current_process().authkey)
    assert r['parent_pid'] == os.getpid()
    assert r['parent_name'] == 'MainProcess'
    assert r['parent_alive'] is True
    assert r['children'] == []
    assert r['start_method'] == ctx.get_start_method()


def test_list_args_are_accepted(ctx, tmp_path):
    out = str(tmp_path / 'out')
    p = ctx.Process(target=report_self, args=[out, [1]])
    p.start()
    p.join()
    assert read_report(out)['args'] == ([1],)


def test_default_names_count_up(ctx):
    a = ctx.Process(target=exit_with, args=(0,))
    b = ctx.Process(target=exit_with, args=(0,))
    prefix = type(a).__name__ + '-'
    assert a.name.startswith(prefix) and b.name.startswith(prefix)
    assert int(b.name.rsplit('-', 1)[1]) == int(a.name.rsplit('-', 1)[1]) + 1


def test_an_empty_name_gets_the_default(ctx):
    p = ctx.Process(target=exit_with, args=(0,), name='')
    assert p.name.startswith(type(p).__name__ + '-')


@pytest.mark.parametrize('code', [0, 1, 7, 255])
def test_sys_exit_codes(ctx, code):
    p = ctx.Process(target=exit_with, args=(code,))
    p.start()
    p.join()
    assert p.exitcode == code


def test_sys_exit_with_message_is_printed_and_gives_1(ctx, tmp_path):
    script = write_script(tmp_path / 'msg.py', '''
        import sys, multiprocessing_c as mp
        def f():
            sys.exit('goodbye message')
        if __name__ == '__main__':
            p = mp.get_context(sys.argv[1]).Process(target=f)
            p.start(); p.join()
            print('exitcode', p.exitcode)
    ''')
    r = run_python([script, ctx.get_start_method()])
    assert 'exitcode 1' in r.stdout
    assert 'goodbye message' in r.stderr


def test_child_exception_prints_traceback_and_exitcode_1(ctx, tmp_path):
    script = write_script(tmp_path / 'exc.py', '''
        import sys, multiprocessing_c as mp
        def f():
            raise ValueError('boom from the child')
        if __name__ == '__main__':
            p = mp.get_context(sys.argv[1]).Process(target=f, name='Bad')
            p.start(); p.join()
            print('exitcode', p.exitcode)
    ''')
    r = run_python([script, ctx.get_start_method()])
    assert 'exitcode 1' in r.stdout
    assert 'Process Bad:' in r.stderr
    assert 'Traceback (most recent call last)' in r.stderr
    assert 'ValueError: boom from the child' in r.stderr


def test_terminate_gives_minus_sigterm(ctx):
    p = ctx.Process(target=sleep_forever, daemon=True)
    p.start()
    assert p.is_alive()
    assert p in multiprocessing_c.active_children()
    p.terminate()
    p.join(10)
    assert p.exitcode == -signal.SIGTERM
    assert not p.is_alive()
    assert p not in multiprocessing_c.active_children()
    assert 'exitcode=-SIGTERM' in repr(p)


def test_kill_gives_minus_sigkill(ctx):
    p = ctx.Process(target=sleep_forever)
    p.start()
    p.kill()
    p.join(10)
    assert p.exitcode == -signal.SIGKILL


def test_join_timeout_returns_while_running(ctx):
    p = ctx.Process(target=sleep_forever)
    p.start()
    t0 = time.monotonic()
    p.join(0.2)
    elapsed = time.monotonic() - t0
    assert p.is_alive() and p.exitcode is None
    assert 0.15 < elapsed < 5
    p.join(0)
    p.join(-1)
    assert p.is_alive()
    p.terminate()
    p.join()


def test_sentinel(ctx):
    import select
    p = ctx.Process(target=sleep_forever)
    with pytest.raises(ValueError):
        p.sentinel
    p.start()
    s = p.sentinel
    assert isinstance(s, int)
    assert select.select([s], [], [], 0)[0] == []
    p.terminate()
    p.join()
    assert select.select([s], [], [], 1)[0] == [s]


def test_close(ctx):
    p = ctx.Process(target=sleep_forever)
    p.start()
    with pytest.raises(ValueError):
        p.close()
    p.kill()
    p.join()
    p.close()
    for call in (p.is_alive, p.join, p.terminate, p.kill):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError):
        p.exitcode
    p.close()  # a second close is harmless
    assert 'closed' in repr(p)


def test_start_twice_and_join_unstarted(ctx):
    p = ctx.Process(target=exit_with, args=(0,))
    with pytest.raises(AssertionError):
        p.join()
    p.start()
    with pytest.raises(AssertionError):
        p.start()
    p.join()


def test_daemon_flag(ctx, tmp_path):
    assert ctx.Process(target=exit_with).daemon is False
    assert ctx.Process(target=exit_with, daemon=True).daemon is True
    out = str(tmp_path / 'out')
    p = ctx.Process(target=report_self, args=(out,))
    p.daemon = True
    p.start()
    with pytest.raises(AssertionError):
        p.daemon = False
    p.join()
    assert read_report(out)['daemon'] is True


def start_grandchild():
    p = multiprocessing_c.Process(target=exit_with, args=(0,))
    p.start()


def test_daemonic_process_cannot_have_children(ctx, tmp_path):
    script = write_script(tmp_path / 'd.py', '''
        import sys, multiprocessing_c as mp
        def inner(): pass
        def outer():
            mp.Process(target=inner).start()
        if __name__ == '__main__':
            p = mp.get_context(sys.argv[1]).Process(target=outer, daemon=True)
            p.start(); p.join(); print('exitcode', p.exitcode)
    ''')
    r = run_python([script, ctx.get_start_method()])
    assert 'exitcode 1' in r.stdout
    assert 'daemonic processes are not allowed to have children' in r.stderr


def test_subclass_run_default_context(tmp_path):
    out = str(tmp_path / 'out')
    p = Doubler(out, 21)
    p.start()
    p.join()
    assert p.exitcode == 0
    with open(out) as f:
        assert f.read() == '42'


def test_subclass_run_in_context_process_class(ctx, tmp_path):
    out = str(tmp_path / 'out')

    p = ContextDoubler[ctx.get_start_method()](out, 5)
    p.start()
    p.join()
    with open(out) as f:
        assert f.read() == '10'


def _make_doubler(base):
    class _D(base):
        def __init__(self, path, value):
            super().__init__()
            self.path, self.value = path, value

        def run(self):
            write_file(self.path, str(self.value * 2))
    return _D


ForkDoubler = _make_doubler(multiprocessing_c.get_context('fork').Process)
ForkDoubler.__qualname__ = ForkDoubler.__name__ = 'ForkDoubler'
SpawnDoubler = _make_doubler(multiprocessing_c.get_context('spawn').Process)
SpawnDoubler.__qualname__ = SpawnDoubler.__name__ = 'SpawnDoubler'
ForkServerDoubler = _make_doubler(
    multiprocessing_c.get_context('forkserver').Process)
ForkServerDoubler.__qualname__ = ForkServerDoubler.__name__ = 'ForkServerDoubler'
ContextDoubler = {'fork': ForkDoubler, 'spawn': SpawnDoubler,
                  'forkserver': ForkServerDoubler}


def test_repr_states(ctx):
    p = ctx.Process(target=exit_with, args=(0,), name='R')
    assert repr(p) == "<%s name='R' parent=%d initial>" % (
        type(p).__name__, os.getpid())
    p.start()
    p.join()
    assert repr(p) == "<%s name='R' pid=%d parent=%d stopped exitcode=0>" % (
        type(p).__name__, p.pid, os.getpid())
    main = multiprocessing_c.current_process()
    assert repr(main) == "<_MainProcess name='MainProcess' parent=None started>"


def test_current_process_in_main():
    me = multiprocessing_c.current_process()
    assert me.name == 'MainProcess'
    assert me.is_alive()
    assert me.ident == me.pid == os.getpid()
    assert me.exitcode is None
    assert isinstance(me.authkey, bytes) and len(me.authkey) >= 32
    assert multiprocessing_c.parent_process() is None


def test_authkey_is_inherited_and_settable(ctx, tmp_path):
    out = str(tmp_path / 'out')
    p = ctx.Process(target=report_self, args=(out,))
    p.authkey = b'secret key'
    assert p.authkey == b'secret key'
    p.start()
    p.join()
    assert read_report(out)['authkey'] == b'secret key'


def test_authkey_does_not_pickle_outside_spawning():
    import pickle
    with pytest.raises(TypeError):
        pickle.dumps(multiprocessing_c.current_process().authkey)


def parent_watcher(path):
    # Report whether the parent is alive, wait for it to die, report again.
    parent = multiprocessing_c.parent_process()
    write_file(path + '.1', str(parent.is_alive()))
    parent.join(timeout=20)
    write_file(path + '.2', str(parent.is_alive()))


def start_watcher_then_sleep(path, method):
    p = multiprocessing_c.get_context(method).Process(
        target=parent_watcher, args=(path,))
    p.start()
    time.sleep(60)


def test_parent_process_sees_parent_death(ctx, tmp_path):
    path = str(tmp_path / 'w')
    p = ctx.Process(target=start_watcher_then_sleep,
                    args=(path, ctx.get_start_method()))
    p.start()
    wait_for_file(path + '.1')
    with open(path + '.1') as f:
        assert f.read() == 'True'
    p.terminate()
    p.join()
    wait_for_file(path + '.2', timeout=20)
    with open(path + '.2') as f:
        assert f.read() == 'False'


def test_active_children_reaps(ctx):
    p = ctx.Process(target=exit_with, args=(0,))
    assert p not in multiprocessing_c.active_children()
    p.start()
    deadline = time.monotonic() + 10
    while p in multiprocessing_c.active_children():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert p.exitcode == 0
    assert isinstance(multiprocessing_c.active_children(), list)


def test_many_processes(ctx):
    n = 30 if ctx.get_start_method() == 'fork' else 4
    procs = [ctx.Process(target=exit_with, args=(i % 5,)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [i % 5 for i in range(n)]


class Target:
    def __call__(self):
        pass


def test_target_reference_dropped_after_start(ctx):
    import gc
    import weakref

    t = Target()
    ref = weakref.ref(t)
    p = ctx.Process(target=t)
    del t
    p.start()
    gc.collect()
    assert ref() is None
    p.join()


def test_group_must_be_none():
    with pytest.raises(AssertionError):
        multiprocessing_c.Process(group=object())


def test_process_is_in_dangling_until_collected(ctx):
    p = ctx.Process(target=exit_with, args=(0,))
    assert p in mp_process._dangling


def test_stdin_is_devnull_in_child(ctx, tmp_path):
    script = write_script(tmp_path / 'stdin.py', '''
        import sys, multiprocessing_c as mp
        def f(path):
            with open(path, 'w') as out:
                out.write(repr(sys.stdin.read()))
        if __name__ == '__main__':
            p = mp.get_context(sys.argv[1]).Process(target=f, args=(sys.argv[2],))
            p.start(); p.join(); print('exitcode', p.exitcode)
    ''')
    out = tmp_path / 'read'
    r = subprocess_with_stdin(script, ctx.get_start_method(), str(out))
    assert 'exitcode 0' in r.stdout, r.stderr
    assert out.read_text() == "''"


def register_atexit_writer(path):
    import atexit
    atexit.register(write_file, path, 'ran')


def test_atexit_handlers_registered_in_child(ctx, tmp_path):
    # A spawned child ends as an interpreter does, so its atexit handlers
    # run; a forked one (fork, forkserver) runs them from Python 3.13 on,
    # as the stdlib's, and not before.
    path = str(tmp_path / 'atexit')
    p = ctx.Process(target=register_atexit_writer, args=(path,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    expected = sys.version_info >= (3, 13) or ctx.get_start_method() == 'spawn'
    assert os.path.exists(path) == expected


def subprocess_with_stdin(script, *args):
    import subprocess
    from testutil import child_env
    return subprocess.run([sys.executable, script] + list(args),
                          input='parent input\n', capture_output=True,
                          text=True, env=child_env(), timeout=60)


def test_daemon_children_terminated_and_others_joined_at_exit(ctx, tmp_path):
    script = write_script(tmp_path / 'exit.py', '''
        import os, sys, time, multiprocessing_c as mp
        def daemon_child(path):
            # Atomically: the parent exits as soon as the file exists.
            with open(path + '.tmp', 'w') as f:
                f.write(str(os.getpid()))
            os.replace(path + '.tmp', path)
            time.sleep(60)
        def normal_child(path):
            time.sleep(0.5)
            with open(path, 'w') as f:
                f.write('done')
        if __name__ == '__main__':
            ctx = mp.get_context(sys.argv[1])
            d = ctx.Process(target=daemon_child, args=(sys.argv[2],), daemon=True)
            n = ctx.Process(target=normal_child, args=(sys.argv[3],))
            d.start(); n.start()
            while not os.path.exists(sys.argv[2]):
                time.sleep(0.01)
            print('main exits')
    ''')
    dpath, npath = tmp_path / 'daemon', tmp_path / 'normal'
    r = run_python([script, ctx.get_start_method(), str(dpath), str(npath)])
    assert r.returncode == 0, r.stderr
    assert 'main exits' in r.stdout
    # The non-daemonic child was joined, so it finished its work...
    assert npath.read_text() == 'done'
    # ...and the daemonic one was terminated rather than left running.
    pid = int(dpath.read_text())
    deadline = time.monotonic() + 10
    while _pid_alive(pid):
        assert time.monotonic() < deadline, 'daemonic child still running'
        time.sleep(0.05)


def _pid_alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().split(') ')[1][0] != 'Z'
    except FileNotFoundError:
        return False
