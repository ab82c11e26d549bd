"""What a spawned child is prepared with (docs: "spawn" start method and
"Programming guidelines": safe importing of the main module)."""
import os
import sys

from testutil import run_python, write_script


def test_child_gets_sys_path_cwd_argv_and_mp_main(tmp_path):
    extra = tmp_path / 'extra_path'
    extra.mkdir()
    (extra / 'helper_mod.py').write_text('VALUE = 41\n')
    work = tmp_path / 'work'
    work.mkdir()
    script = write_script(tmp_path / 'prep.py', '''
        import os, sys, multiprocessing_c as mp
        MAIN_CONSTANT = 'from the main module'
        def f(out):
            import helper_mod
            with open(out, 'w') as fh:
                fh.write(repr((helper_mod.VALUE + 1, os.getcwd(), sys.argv[1:],
                               __name__, MAIN_CONSTANT,
                               sys.modules['__main__'].__name__)))
        if __name__ == '__main__':
            sys.path.append(sys.argv[2])
            os.chdir(sys.argv[3])
            p = mp.get_context('spawn').Process(target=f, args=(sys.argv[4],))
            p.start(); p.join()
            print('exitcode', p.exitcode)
    ''')
    out = tmp_path / 'out'
    r = run_python([script, 'arg1', str(extra), str(work), str(out)])
    assert 'exitcode 0' in r.stdout, r.stderr
    value, cwd, argv, name, const, main_name = eval(out.read_text())
    assert value == 42
    assert cwd == str(work)
    assert argv == ['arg1', str(extra), str(work), str(out)]
    assert name == '__mp_main__' and main_name == '__mp_main__'
    assert const == 'from the main module'


def test_main_run_with_dash_m(tmp_path):
    pkg = tmp_path / 'mpkg'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('')
    (pkg / 'prog.py').write_text(
        'import multiprocessing_c as mp\n'
        'def f():\n'
        '    print("child ran as", __name__, flush=True)\n'
        'if __name__ == "__main__":\n'
        '    p = mp.get_context("spawn").Process(target=f)\n'
        '    p.start(); p.join(); print("exitcode", p.exitcode)\n')
    r = run_python(['-m', 'mpkg.prog'], cwd=str(tmp_path))
    assert 'child ran as __mp_main__' in r.stdout, r.stderr
    assert 'exitcode 0' in r.stdout


def test_missing_main_guard_gives_clear_runtime_error(tmp_path):
    script = write_script(tmp_path / 'noguard.py', '''
        import multiprocessing_c as mp
        def f():
            pass
        p = mp.get_context('spawn').Process(target=f)
        p.start(); p.join()
        print('parent saw exitcode', p.exitcode)
    ''')
    r = run_python([script])
    assert 'RuntimeError' in r.stderr
    assert "if __name__ == '__main__'" in r.stderr
    # The child failed, and told the parent so through its exit code.
    assert 'parent saw exitcode 1' in r.stdout


def test_spawned_child_inherits_no_stray_fds(tmp_path):
    script = write_script(tmp_path / 'fds.py', '''
        import os, sys, multiprocessing_c as mp
        def f(out):
            with open(out, 'w') as fh:
                fh.write(repr(sorted(int(x) for x in os.listdir('/proc/self/fd'))))
        if __name__ == '__main__':
            stray = os.dup2(os.open(os.devnull, os.O_RDONLY), 100)
            os.set_inheritable(stray, True)
            p = mp.get_context('spawn').Process(target=f, args=(sys.argv[1],))
            p.start(); p.join()
            print('stray', stray)
    ''')
    out = tmp_path / 'out'
    r = run_python([script, str(out)])
    assert r.returncode == 0, r.stderr
    stray = int(r.stdout.split()[-1])
    fds = eval(out.read_text())
    assert stray not in fds
    # stdio, the parent-liveness fd, the sentinel's write end, the resource
    # tracker's pipe, and the fd the listing itself opens: nothing beyond a
    # handful.
    assert len(fds) <= 8, fds


def test_spawn_main_refuses_outside_a_child():
    from multiprocessing_c import spawn
    import pytest
    with pytest.raises(RuntimeError):
        spawn.spawn_main(0)


def test_command_line_names_our_package():
    from multiprocessing_c import spawn
    cmd = spawn.get_command_line(pipe_handle=5)
    assert cmd[0] == spawn.get_executable()
    assert cmd[-1] == '--multiprocessing-fork'
    assert 'from multiprocessing_c.spawn import spawn_main' in cmd[-2]
    assert 'spawn_main(pipe_handle=5)' in cmd[-2]
    assert spawn.is_forking(['python', '--multiprocessing-fork'])
    assert not spawn.is_forking(sys.argv)
    assert os.path.exists(spawn.get_executable())
