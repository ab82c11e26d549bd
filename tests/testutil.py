"""Helpers for tests that run scripts in a fresh interpreter."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def child_env(**extra):
    """The environment for a fresh interpreter that imports this checkout."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [ROOT, TESTS] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    env.update(extra)
    return env


def run_python(args, cwd=None, timeout=60, **extra_env):
    """Run `python args...` and return the CompletedProcess (text mode)."""
    return subprocess.run([sys.executable] + list(args), cwd=cwd,
                          env=child_env(**extra_env), capture_output=True,
                          text=True, timeout=timeout)


def write_script(path, source):
    path.write_text(textwrap.dedent(source))
    return str(path)


# ---- what a fresh child is prepared with (spawn and forkserver alike) ----
#
# Both start methods run the child in a clean interpreter that must be made
# a copy of its parent (docs: "Programming guidelines", safe importing of
# the main module).  Each check runs a small program with `method` and
# asserts; the test modules call them with their own start method.

def check_child_preparation(tmp_path, method):
    """The child gets the parent's sys.path, cwd and argv, and the parent's
    main module re-run as __mp_main__ (its constants there, its guarded
    block not run).  A second child sees the parent's cwd as it is then."""
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
            ctx = mp.get_context(sys.argv[5])
            sys.path.append(sys.argv[2])
            os.chdir(sys.argv[3])
            p = ctx.Process(target=f, args=(sys.argv[4],))
            p.start(); p.join()
            os.chdir(sys.argv[2])
            q = ctx.Process(target=f, args=(sys.argv[4] + '2',))
            q.start(); q.join()
            print('exitcodes', p.exitcode, q.exitcode)
    ''')
    out = tmp_path / 'out'
    argv = ['arg1', str(extra), str(work), str(out), method]
    r = run_python([script] + argv)
    assert 'exitcodes 0 0' in r.stdout, r.stderr
    value, cwd, child_argv, name, const, main_name = eval(out.read_text())
    assert value == 42, value
    assert cwd == str(work), cwd
    assert child_argv == argv, child_argv
    assert (name, main_name) == ('__mp_main__', '__mp_main__'), (name, main_name)
    assert const == 'from the main module', const
    # (With forkserver the server is already running for the second child.)
    second_cwd = eval((tmp_path / 'out2').read_text())[1]
    assert second_cwd == str(extra), second_cwd


def check_main_run_with_dash_m(tmp_path, method):
    """A program run with ``python -m pkg.mod`` is re-imported by name."""
    pkg = tmp_path / 'mpkg'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('')
    (pkg / 'prog.py').write_text(
        'import sys, multiprocessing_c as mp\n'
        'def f():\n'
        '    print("child ran as", __name__, flush=True)\n'
        'if __name__ == "__main__":\n'
        '    p = mp.get_context(sys.argv[1]).Process(target=f)\n'
        '    p.start(); p.join(); print("exitcode", p.exitcode)\n')
    r = run_python(['-m', 'mpkg.prog', method], cwd=str(tmp_path))
    assert 'child ran as __mp_main__' in r.stdout, r.stderr
    assert 'exitcode 0' in r.stdout, r.stdout


def check_missing_main_guard(tmp_path, method):
    """A program that starts a process at import time, without the main
    guard, makes the child fail with a RuntimeError naming the guard, and
    the parent sees exit code 1."""
    script = write_script(tmp_path / 'noguard.py', '''
        import sys, multiprocessing_c as mp
        def f():
            pass
        p = mp.get_context(%r).Process(target=f)
        p.start(); p.join()
        print('parent saw exitcode', p.exitcode)
    ''' % method)
    r = run_python([script])
    assert 'RuntimeError' in r.stderr, r.stderr
    assert "if __name__ == '__main__'" in r.stderr, r.stderr
    # The child failed, and told the parent so through its exit code.
    assert 'parent saw exitcode 1' in r.stdout, r.stdout


def check_no_stray_fds(tmp_path, method, most):
    """An inheritable fd of the parent does not reach the child, which has
    at most `most` fds open."""
    script = write_script(tmp_path / 'fds.py', '''
        import os, sys, multiprocessing_c as mp
        def f(out):
            with open(out, 'w') as fh:
                fh.write(repr(sorted(int(x) for x in os.listdir('/proc/self/fd'))))
        if __name__ == '__main__':
            stray = os.dup2(os.open(os.devnull, os.O_RDONLY), 100)
            os.set_inheritable(stray, True)
            p = mp.get_context(sys.argv[2]).Process(target=f, args=(sys.argv[1],))
            p.start(); p.join()
            print('stray', stray)
    ''')
    out = tmp_path / 'out'
    r = run_python([script, str(out), method])
    assert r.returncode == 0, r.stderr
    stray = int(r.stdout.split()[-1])
    fds = eval(out.read_text())
    assert stray not in fds, fds
    assert len(fds) <= most, fds
