"""Contexts and start methods (docs: "Contexts and start methods")."""
import sys

import pytest

import multiprocessing_c
from multiprocessing_c import context

from testutil import run_python, write_script

FACTORIES = [
    'Array', 'Barrier', 'BoundedSemaphore', 'Condition', 'Event',
    'JoinableQueue', 'Lock', 'Manager', 'Pipe', 'Pool', 'Process', 'Queue',
    'RLock', 'RawArray', 'RawValue', 'Semaphore', 'SimpleQueue', 'Value',
    'active_children', 'allow_connection_pickling', 'cpu_count',
    'current_process', 'freeze_support', 'get_context', 'get_logger',
    'get_start_method', 'log_to_stderr', 'parent_process', 'reducer',
    'set_executable', 'set_forkserver_preload', 'set_start_method',
    'ProcessError', 'BufferTooShort', 'TimeoutError', 'AuthenticationError',
]


@pytest.mark.parametrize('method', ['fork', 'spawn', 'forkserver'])
def test_context_carries_every_factory(method):
    ctx = multiprocessing_c.get_context(method)
    for name in FACTORIES:
        assert hasattr(ctx, name), name
    assert ctx.get_start_method() == method
    assert ctx.get_context() is ctx
    assert ctx.Process._start_method == method


def test_module_level_names_match_stdlib_all():
    import multiprocessing
    assert sorted(multiprocessing_c.__all__) == sorted(multiprocessing.__all__)
    for name in multiprocessing.__all__:
        assert hasattr(multiprocessing_c, name), name


def test_exception_hierarchy():
    for name in ('BufferTooShort', 'TimeoutError', 'AuthenticationError'):
        exc = getattr(multiprocessing_c, name)
        assert issubclass(exc, multiprocessing_c.ProcessError)
        assert exc is getattr(context, name)
    assert issubclass(multiprocessing_c.ProcessError, Exception)


def test_unknown_method():
    with pytest.raises(ValueError):
        multiprocessing_c.get_context('teleport')


def test_concrete_context_refuses_set_start_method():
    with pytest.raises(ValueError):
        multiprocessing_c.get_context('spawn').set_start_method('fork')


def test_cpu_count():
    n = multiprocessing_c.cpu_count()
    assert type(n) is int and n >= 1


def test_freeze_support_is_a_noop_here():
    assert multiprocessing_c.freeze_support() is None


def test_get_all_start_methods():
    methods = multiprocessing_c.get_all_start_methods()
    assert methods[0] == 'fork'
    assert {'fork', 'spawn'} <= set(methods)


def test_set_start_method_rules(tmp_path):
    # In a fresh interpreter: the default context is still unset there.
    script = write_script(tmp_path / 'sm.py', '''
        import multiprocessing_c as mp
        assert mp.get_start_method(allow_none=True) is None
        mp.set_start_method('spawn')
        assert mp.get_start_method() == 'spawn'
        try:
            mp.set_start_method('fork')
        except RuntimeError as e:
            print('refused:', e)
        mp.set_start_method('fork', force=True)
        assert mp.get_start_method() == 'fork'
        mp.set_start_method(None, force=True)
        assert mp.get_start_method(allow_none=True) is None
        assert mp.get_start_method() == 'fork'   # fixes the default
        try:
            mp.set_start_method('spawn')
        except RuntimeError:
            print('fixed by get_start_method')
        print('ok')
    ''')
    r = run_python([script])
    assert r.returncode == 0, r.stderr
    assert 'refused: context has already been set' in r.stdout
    assert 'fixed by get_start_method' in r.stdout
    assert r.stdout.strip().endswith('ok')


def test_default_process_follows_set_start_method(tmp_path):
    script = write_script(tmp_path / 'follow.py', '''
        import multiprocessing_c as mp
        def f():
            print('child method', mp.get_start_method(), flush=True)
        if __name__ == '__main__':
            mp.set_start_method('spawn')
            p = mp.Process(target=f)
            p.start(); p.join()
            print('popen', type(p._popen).__module__)
    ''')
    r = run_python([script])
    assert r.returncode == 0, r.stderr
    assert 'child method spawn' in r.stdout
    assert 'popen multiprocessing_c.popen_spawn_posix' in r.stdout


def test_set_executable_accepts_str_bytes_pathlike(tmp_path):
    script = write_script(tmp_path / 'exe.py', '''
        import pathlib, sys, multiprocessing_c as mp
        def f(): pass
        if __name__ == '__main__':
            ctx = mp.get_context('spawn')
            for exe in (sys.executable, sys.executable.encode(),
                        pathlib.Path(sys.executable)):
                ctx.set_executable(exe)
                p = ctx.Process(target=f); p.start(); p.join()
                print(p.exitcode)
            ctx.set_executable('/nonexistent/python')
            try:
                ctx.Process(target=f).start()
            except FileNotFoundError:
                print('missing interpreter refused')
    ''')
    r = run_python([script])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['0', '0', '0', 'missing', 'interpreter', 'refused']


def test_reducer_is_the_reduction_module():
    from multiprocessing_c import reduction
    assert multiprocessing_c.reducer is reduction
    assert multiprocessing_c.get_context('spawn').reducer is reduction
