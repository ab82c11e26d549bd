"""python -m multiprocessing_c: unchanged scripts get multiprocessing_c as
`multiprocessing`, in themselves and in every child."""
import pytest

from testutil import run_python, write_script

PROBE = '''
import sys, multiprocessing, multiprocessing.process, _multiprocessing
def report(tag):
    import multiprocessing as m
    print(tag, m.__name__, m.process.__name__, _multiprocessing.__name__,
          type(multiprocessing.current_process()).__module__, flush=True)
def child():
    report('child')
'''


@pytest.mark.parametrize('method', ['fork', 'spawn', 'forkserver'])
def test_script_and_children_see_multiprocessing_c(tmp_path, method):
    script = write_script(tmp_path / 'prog.py', PROBE + '''
if __name__ == '__main__':
    report('parent')
    print('argv', sys.argv[1:])
    p = multiprocessing.get_context(sys.argv[1]).Process(target=child)
    p.start(); p.join()
    sys.exit(p.exitcode + 3)
''')
    r = run_python(['-m', 'multiprocessing_c', script, method, 'x'])
    assert r.returncode == 3, r.stderr
    want = 'multiprocessing_c multiprocessing_c.process multiprocessing_c._mpcore multiprocessing_c.'
    assert 'parent ' + want + 'process' in r.stdout
    assert 'child ' + want + 'context' in r.stdout
    assert "argv ['%s', 'x']" % method in r.stdout


def test_dash_c(tmp_path):
    r = run_python(['-m', 'multiprocessing_c', '-c',
                    'import sys, multiprocessing; print(multiprocessing.__name__, sys.argv)',
                    'a1'])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "multiprocessing_c ['-c', 'a1']"


def test_dash_m_with_spawn_child(tmp_path):
    pkg = tmp_path / 'runpkg'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('')
    (pkg / 'job.py').write_text(PROBE + '''
if __name__ == '__main__':
    report('parent')
    p = multiprocessing.get_context('spawn').Process(target=child)
    p.start(); p.join()
''')
    r = run_python(['-m', 'multiprocessing_c', '-m', 'runpkg.job'],
                   cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('multiprocessing_c multiprocessing_c.process') == 2


def test_missing_submodule_is_a_clear_import_error(tmp_path):
    r = run_python(['-m', 'multiprocessing_c', '-c',
                    'import multiprocessing.no_such_part'])
    assert r.returncode == 1
    assert 'ModuleNotFoundError' in r.stderr
    assert 'multiprocessing.no_such_part is not provided by multiprocessing_c' in r.stderr


def test_script_errors_and_exit_codes_pass_through(tmp_path):
    script = write_script(tmp_path / 'bad.py', 'raise KeyError("nope")\n')
    r = run_python(['-m', 'multiprocessing_c', script])
    assert r.returncode == 1
    assert "KeyError: 'nope'" in r.stderr
    r = run_python(['-m', 'multiprocessing_c'])
    assert r.returncode == 2 and 'usage' in r.stderr


def test_script_directory_is_on_sys_path(tmp_path):
    (tmp_path / 'sibling.py').write_text('X = "sibling imported"\n')
    script = write_script(tmp_path / 'main.py', 'import sibling; print(sibling.X)\n')
    r = run_python(['-m', 'multiprocessing_c', script], cwd='/')
    assert r.stdout.strip() == 'sibling imported', r.stderr


def test_stdlib_multiprocessing_untouched_without_runner():
    r = run_python(['-c', 'import multiprocessing_c, multiprocessing; print(multiprocessing.__name__)'])
    assert r.stdout.strip() == 'multiprocessing'
