"""multiprocessing_c.util (docs: "Logging" and the util helpers)."""
import gc
import logging
import os
import sys

import pytest

import multiprocessing_c
from multiprocessing_c import util

from testutil import run_python, write_script


def test_levels_and_logger():
    assert (util.SUBDEBUG, util.DEBUG, util.INFO, util.SUBWARNING) == (5, 10, 20, 25)
    assert multiprocessing_c.SUBDEBUG == 5 and multiprocessing_c.SUBWARNING == 25
    logger = multiprocessing_c.get_logger()
    assert logger is util.get_logger()
    assert logger.name == 'multiprocessing'
    assert logger.propagate is False
    assert logging.getLevelName(util.SUBDEBUG) == 'SUBDEBUG'
    assert logging.getLevelName(util.SUBWARNING) == 'SUBWARNING'


def test_log_to_stderr_in_parent_and_spawned_child(tmp_path):
    script = write_script(tmp_path / 'log.py', '''
        import logging, sys, multiprocessing_c as mp
        def f():
            mp.get_logger().warning('hello from child, level %s',
                                    mp.get_logger().getEffectiveLevel())
        if __name__ == '__main__':
            logger = mp.log_to_stderr(logging.INFO)
            logger.info('hello from parent')
            p = mp.get_context(sys.argv[1]).Process(target=f, name='Kid')
            p.start(); p.join()
    ''')
    for method in ('fork', 'spawn', 'forkserver'):
        r = run_python([script, method])
        assert r.returncode == 0, r.stderr
        assert '[INFO/MainProcess] hello from parent' in r.stderr
        assert '[WARNING/Kid] hello from child, level 20' in r.stderr
        # The package logs its own life cycle at INFO.
        assert '[INFO/Kid] child process calling self.run()' in r.stderr
        assert '[INFO/Kid] process exiting with exitcode 0' in r.stderr


def test_finalize_order_and_once(tmp_path):
    script = write_script(tmp_path / 'fin.py', '''
        import gc, sys
        from multiprocessing_c import util
        class Obj: pass
        out = []
        a = Obj(); util.Finalize(a, out.append, args=('a',))
        del a; gc.collect()
        b = Obj(); fb = util.Finalize(b, out.append, args=('b',))
        assert fb.still_active()
        fb(); fb()
        assert not fb.still_active()
        del b; gc.collect()
        c = Obj(); fc = util.Finalize(c, out.append, args=('c',), exitpriority=5)
        fc.cancel()
        keep = []
        for name, prio in [('p1', 1), ('p0a', 0), ('p0b', 0), ('m10', -10)]:
            o = Obj(); keep.append(o)
            util.Finalize(o, out.append, args=(name,), exitpriority=prio)
        util.Finalize(None, lambda: print(' '.join(out)), exitpriority=-100)
        no_prio = Obj(); util.Finalize(no_prio, out.append, args=('never',))
    ''')
    r = run_python([script])
    assert r.returncode == 0, r.stderr
    # Collected and called ones ran once; at exit: by priority, then the
    # newest first; a cancelled one and one without priority never ran.
    assert r.stdout.split() == ['a', 'b', 'p1', 'p0b', 'p0a', 'm10']


def test_finalize_needs_priority_without_object():
    # As the stdlib: no object and no priority is a ValueError, a priority
    # that is not an int a TypeError.
    with pytest.raises(ValueError):
        util.Finalize(None, print)
    with pytest.raises(TypeError):
        util.Finalize(None, print, exitpriority='high')


def test_finalize_runs_only_in_its_own_process(tmp_path):
    script = write_script(tmp_path / 'finpid.py', '''
        import os, sys
        from multiprocessing_c import util
        import multiprocessing_c as mp
        def child():
            pass
        if __name__ == '__main__':
            util.Finalize(None, lambda: print('finalizer in', os.getpid(), flush=True),
                          exitpriority=1)
            p = mp.get_context('fork').Process(target=child)
            p.start(); p.join()
            print('parent', os.getpid(), flush=True)
    ''')
    r = run_python([script])
    lines = r.stdout.split('\n')
    parent_pid = [l for l in lines if l.startswith('parent')][0].split()[1]
    ran = [l.split()[2] for l in lines if l.startswith('finalizer in')]
    assert ran == [parent_pid]


def test_register_after_fork(tmp_path):
    script = write_script(tmp_path / 'af.py', '''
        import multiprocessing_c as mp
        from multiprocessing_c import util
        class Thing:
            reset_in_child = False
        def reset(obj):
            obj.reset_in_child = True
        thing = Thing()
        util.register_after_fork(thing, reset)
        def f():
            print('child sees', thing.reset_in_child, flush=True)
        if __name__ == '__main__':
            p = mp.get_context('fork').Process(target=f); p.start(); p.join()
            print('parent sees', thing.reset_in_child)
    ''')
    r = run_python([script])
    assert 'child sees True' in r.stdout, r.stderr
    assert 'parent sees False' in r.stdout


def test_fork_aware_thread_lock_and_local():
    lock = util.ForkAwareThreadLock()
    with lock:
        assert not lock.acquire(False)
    assert lock.acquire(False)
    lock.release()
    local = util.ForkAwareLocal()
    local.x = 1
    assert local.x == 1


def test_get_temp_dir_created_once_and_removed_at_exit(tmp_path):
    script = write_script(tmp_path / 'tmp.py', '''
        import os
        from multiprocessing_c import util
        d = util.get_temp_dir()
        assert d == util.get_temp_dir()
        assert os.path.isdir(d) and os.path.basename(d).startswith('pymp-')
        print(d)
    ''')
    r = run_python([script])
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(r.stdout.strip())


def test_is_exiting():
    assert util.is_exiting() is False


def test_close_all_fds_except_in_child(tmp_path):
    script = write_script(tmp_path / 'close.py', '''
        import os
        from multiprocessing_c import util
        a = os.open(os.devnull, os.O_RDONLY)
        b = os.open(os.devnull, os.O_RDONLY)
        util.close_all_fds_except([0, 1, 2, b])
        try:
            os.fstat(a)
        except OSError:
            print('a closed')
        os.fstat(b)
        print('b open')
    ''')
    r = run_python([script])
    assert r.stdout.split() == ['a', 'closed', 'b', 'open'], r.stderr


def test_abstract_socket_helpers():
    assert util.abstract_sockets_supported is True
    assert util.is_abstract_socket_namespace('\0name')
    assert util.is_abstract_socket_namespace(b'\0name')
    assert not util.is_abstract_socket_namespace('/tmp/name')
    with pytest.raises(TypeError):
        util.is_abstract_socket_namespace(123)


def test_fork_aware_objects_are_renewed_in_a_forked_child(tmp_path):
    script = write_script(tmp_path / 'fa.py', '''
        import multiprocessing_c as mp
        from multiprocessing_c import util
        lock = util.ForkAwareThreadLock()
        local = util.ForkAwareLocal()
        local.value = 'parent only'
        def child():
            print('child lock free:', lock.acquire(False), flush=True)
            print('child local:', getattr(local, 'value', None), flush=True)
            print('child registry:', len(util._afterfork_registry), flush=True)
        if __name__ == '__main__':
            before = len(util._afterfork_registry)
            lock.acquire()      # held by the parent at fork time
            p = mp.get_context('fork').Process(target=child)
            p.start(); p.join()
            print('parent registry:', before)
    ''')
    r = run_python([script])
    assert r.returncode == 0, r.stderr
    assert 'child lock free: True' in r.stdout
    assert 'child local: None' in r.stdout
    child_n = int(r.stdout.split('child registry:')[1].split()[0])
    parent_n = int(r.stdout.split('parent registry:')[1].split()[0])
    assert child_n <= parent_n
