"""The backend switch without the engines: nothing imports Ray or Dask
until a backend is asked for, a missing engine names the extra to install,
and malformed backend names fail clearly (in Pool and in the runner).  The
engines themselves are tested in test_backend_ray.py and
test_backend_dask.py."""
import pytest

import multiprocessing_c
from testutil import run_python, write_script

BLOCK = '''
import sys
for name in %r:
    sys.modules[name] = None          # as if not installed
import multiprocessing_c
from multiprocessing_c import futures
from multiprocessing_c.backends import BackendNotAvailable
for make in (lambda: multiprocessing_c.Pool(1, backend=%r),
             lambda: futures.ProcessPoolExecutor(1, backend=%r)):
    try:
        make()
    except BackendNotAvailable as e:
        assert isinstance(e, ImportError)
        print('refused:', e)
    else:
        print('not refused')
'''


def test_importing_the_package_imports_no_engine():
    r = run_python(['-c', '''
import sys
import multiprocessing_c, multiprocessing_c.pool, multiprocessing_c.futures
import multiprocessing_c.backends, multiprocessing_c.__main__
with multiprocessing_c.pool.ThreadPool(1) as p:
    p.map(abs, [1])
print(sorted(m for m in ("ray", "dask", "distributed") if m in sys.modules))
'''])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '[]'


@pytest.mark.parametrize('backend,engines,extra', [
    ('ray', ('ray',), 'ray'),
    ('dask:tcp://127.0.0.1:1', ('distributed', 'dask'), 'dask'),
])
def test_missing_engine_names_the_extra(backend, engines, extra):
    r = run_python(['-c', BLOCK % (engines, backend, backend)])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all(l.startswith('refused:') for l in lines)
    assert "pip install 'multiprocessing_c[%s]'" % extra in lines[0]


def test_malformed_backend_is_refused():
    with pytest.raises(ValueError, match="unknown pool backend 'spark'"):
        multiprocessing_c.Pool(1, backend='spark')
    with pytest.raises(TypeError, match='backend must be'):
        multiprocessing_c.Pool(1, backend=42)


def test_environment_variable_with_a_bad_backend(monkeypatch):
    monkeypatch.setenv('MULTIPROCESSING_C_POOL_BACKEND', 'spark:somewhere')
    with pytest.raises(ValueError, match='spark'):
        multiprocessing_c.Pool(1)
    # Only Pool itself switches: ThreadPool stays in this process.
    with multiprocessing_c.pool.ThreadPool(1) as t:
        assert t.apply(abs, (-2,)) == 2


def test_runner_refuses_a_bad_backend(tmp_path):
    script = write_script(tmp_path / 'job.py', 'print("ran")\n')
    r = run_python(['-m', 'multiprocessing_c', '--pool-backend', 'spark',
                    script])
    assert r.returncode == 2
    assert "unknown pool backend 'spark'" in r.stderr and 'ran' not in r.stdout
    r = run_python(['-m', 'multiprocessing_c', '--pool-backend'])
    assert r.returncode == 2 and 'no pool backend given' in r.stderr
