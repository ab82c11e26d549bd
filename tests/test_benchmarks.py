"""The benchmark runner works: it runs, prints a table with both
implementations, lists its workloads and reports what an implementation
lacks as n/a.  No timing is ever asserted."""
import importlib
import importlib.util
import json
import os
import shutil
import sys

import pytest

from testutil import ROOT, run_python

sys.path.insert(0, ROOT)
from benchmarks import workloads  # noqa: E402
from benchmarks._worker import check_needs  # noqa: E402

CHEAP = 'process_fork'


def bench(args, timeout=110, **env):
    return run_python(['-m', 'benchmarks'] + args, cwd=ROOT, timeout=timeout,
                      **env)


def table_rows(stdout):
    """{workload: cells} of the table's rows."""
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if cells and cells[0] in workloads.names():
            rows[cells[0]] = cells
    return rows


def test_quick_only_one_workload_prints_both_implementations():
    r = bench(['--quick', '--only', CHEAP, '--reps', '2'])
    assert r.returncode == 0, r.stderr
    header = next(line for line in r.stdout.splitlines()
                  if line.startswith('workload'))
    assert header.split()[:4] == ['workload', 'unit', 'multiprocessing_c',
                                  'multiprocessing']
    assert header.rstrip().endswith('speed-up')
    rows = table_rows(r.stdout)
    assert list(rows) == [CHEAP]
    cells = rows[CHEAP]
    assert cells[1] == 'ms'
    # Both medians are numbers and the speed-up is their ratio.
    ours, theirs = float(cells[2]), float(cells[3])
    assert ours > 0 and theirs > 0
    assert cells[-1].endswith('x') and float(cells[-1][:-1]) > 0
    if shutil.which('cc') or shutil.which('gcc'):
        assert 'C floor' in header and float(cells[4]) > 0
    # Progress goes to stderr, one line per workload.
    assert '[1/1] %s: multiprocessing_c ' % CHEAP in r.stderr


def test_script_form_runs_too():
    r = run_python([os.path.join('benchmarks', 'run.py'), '--quick', '--only',
                    CHEAP, '--reps', '1', '--no-floor'], cwd=ROOT, timeout=110)
    assert r.returncode == 0, r.stderr
    assert CHEAP in table_rows(r.stdout)
    assert 'C floor' not in r.stdout


def test_list_names_every_workload():
    r = bench(['--list'])
    assert r.returncode == 0, r.stderr
    listed = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    assert listed == workloads.names()
    for name in ('process_fork', 'process_spawn', 'pipe_obj', 'pipe_bytes_64',
                 'pipe_bytes_1m', 'queue', 'simplequeue', 'joinablequeue',
                 'lock', 'rlock', 'semaphore_pingpong', 'event_pingpong',
                 'condition_pingpong', 'value_increment', 'array_create',
                 'shm_create_attach', 'pool_map', 'pool_imap_unordered',
                 'pool_apply_async', 'pool_start', 'manager_dict',
                 'manager_start'):
        assert name in listed


def test_unknown_workload_is_refused():
    r = bench(['--only', 'no_such_workload'])
    assert r.returncode == 2
    assert 'no_such_workload' in r.stderr


HALF = '''"""multiprocessing_c without queues or a fork server: an implementation
that lacks what a workload needs."""
from multiprocessing_c import get_context


def get_all_start_methods():
    return ['fork', 'spawn']
'''


def test_missing_api_is_reported_na_not_a_crash(tmp_path):
    (tmp_path / 'halfmp').mkdir()
    (tmp_path / 'halfmp' / '__init__.py').write_text(HALF)
    out = tmp_path / 'runs.json'
    r = bench(['--quick', '--reps', '1', '--no-floor', '--impls',
               'halfmp,multiprocessing', '--only', 'queue,process_forkserver',
               '--json', str(out)],
              PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    assert r.returncode == 0, r.stderr
    rows = table_rows(r.stdout)
    assert rows['queue'][2] == 'n/a'
    assert float(rows['queue'][3]) > 0         # the stdlib still ran
    assert 'queue: halfmp n/a (halfmp has no queues)' in r.stdout
    assert rows['process_forkserver'][2] == 'n/a'
    assert 'halfmp has no forkserver start method' in r.stdout
    data = json.loads(out.read_text())
    by = {(run['workload'], run['impl']): run for run in data['runs']}
    assert by['queue', 'halfmp']['status'] == 'na'
    assert by['queue', 'multiprocessing']['status'] == 'ok'
    assert by['queue', 'multiprocessing']['n'] == workloads.get('queue').n_quick


BROKEN = '''"""An implementation whose Pipe hangs and whose Lock raises."""
import time


class _Context:
    def Pipe(self, duplex=True):
        time.sleep(600)

    def Lock(self):
        raise RuntimeError('broken on purpose')


def get_context(method=None):
    return _Context()


def get_all_start_methods():
    return ['fork']
'''


def test_hang_times_out_and_error_is_reported(tmp_path):
    pkg = tmp_path / 'brokenmp'
    pkg.mkdir()
    (pkg / '__init__.py').write_text(BROKEN)
    (pkg / 'connection.py').write_text('')
    (pkg / 'synchronize.py').write_text('')
    out = tmp_path / 'runs.json'
    r = bench(['--quick', '--reps', '2', '--no-floor', '--timeout', '2',
               '--impls', 'brokenmp,multiprocessing', '--only', 'pipe_obj,lock',
               '--json', str(out)],
              PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    assert r.returncode == 0, r.stderr
    rows = table_rows(r.stdout)
    assert rows['pipe_obj'][2] == 'timeout'
    assert rows['lock'][2] == 'error'
    assert float(rows['lock'][3]) > 0
    assert 'pipe_obj: brokenmp timeout (no result after 2 s)' in r.stdout
    assert 'RuntimeError: broken on purpose' in r.stdout
    runs = json.loads(out.read_text())['runs']
    # After a failure the remaining repetitions of that pair are skipped.
    assert [x['status'] for x in runs if x['impl'] == 'brokenmp'] == ['timeout', 'error']
    assert sum(x['impl'] == 'multiprocessing' for x in runs) == 4


HANGS_AT_EXIT = '''"""An implementation whose RLock works but whose process then never exits."""
import atexit
import threading
import time


class _Context:
    def RLock(self):
        atexit.register(time.sleep, 600)
        return threading.RLock()


def get_context(method=None):
    return _Context()


def get_all_start_methods():
    return ['fork']
'''


def test_figure_kept_when_worker_hangs_after_its_result(tmp_path):
    pkg = tmp_path / 'exitmp'
    pkg.mkdir()
    (pkg / '__init__.py').write_text(HANGS_AT_EXIT)
    (pkg / 'synchronize.py').write_text('')
    r = bench(['--quick', '--reps', '1', '--no-floor', '--timeout', '2',
               '--impls', 'exitmp', '--only', 'rlock'],
              PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    assert r.returncode == 0, r.stderr
    assert float(table_rows(r.stdout)['rlock'][2]) > 0
    assert 'rlock: exitmp repetition 0: worker hung at exit and was killed' in r.stdout


def test_json_holds_every_repetition(tmp_path):
    out = tmp_path / 'runs.json'
    r = bench(['--quick', '--only', CHEAP, '--reps', '3', '--no-floor',
               '--json', str(out)])
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    runs = data['runs']
    assert sorted((x['impl'], x['rep']) for x in runs) == sorted(
        (impl, rep) for impl in ('multiprocessing_c', 'multiprocessing')
        for rep in range(3))
    # Interleaved: A, B, A, B ...
    assert [x['impl'] for x in runs[:2]] == ['multiprocessing_c', 'multiprocessing']
    assert all(x['status'] == 'ok' and x['seconds'] > 0 for x in runs)
    assert data['machine']['nproc'] == os.cpu_count()


def _missing_in_multiprocessing_c():
    mp = importlib.import_module('multiprocessing_c')
    for w in workloads.WORKLOADS:
        reason = check_needs(mp, 'multiprocessing_c', w.needs)
        if reason:
            return w.name, reason
    return None


def test_what_multiprocessing_c_lacks_today_is_na():
    found = _missing_in_multiprocessing_c()
    if found is None:
        pytest.skip('multiprocessing_c has every API the workloads need')
    name, reason = found
    r = bench(['--quick', '--only', name, '--reps', '1', '--no-floor',
               '--impls', 'multiprocessing_c,multiprocessing'], timeout=110)
    assert r.returncode == 0, r.stderr
    assert table_rows(r.stdout)[name][2] == 'n/a'
    assert 'n/a (%s)' % reason in r.stdout


def test_plot_is_written_or_says_why_not(tmp_path):
    png = tmp_path / 'speedups.png'
    r = bench(['--quick', '--only', CHEAP, '--reps', '1', '--no-floor',
               '--plot', str(png)])
    assert r.returncode == 0, r.stderr
    if importlib.util.find_spec('matplotlib'):
        assert 'plot written to' in r.stderr
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    else:
        assert 'plot not written: matplotlib is not installed' in r.stderr
        assert not png.exists()
