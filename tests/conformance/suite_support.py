"""Helpers for the conformance run: CPython's multiprocessing suite
(test._test_multiprocessing of the running interpreter) runs against multiprocessing_c, one subprocess per start
method, all selected methods in parallel, and hands each test's outcome to
the pytest item named after it."""
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SUITE_TIMEOUT = int(os.environ.get('MPC_CONFORMANCE_TIMEOUT', '1800'))
# 'alias' tests multiprocessing_c; 'stdlib' runs the same harness against
# the stdlib, to check the harness itself.
TARGET = os.environ.get('MPC_CONFORMANCE_TARGET', 'alias')

# Every run's files (suite modules, JSON, logs) go below one directory,
# removed at exit unless MPC_CONFORMANCE_KEEP is set.
WORKROOT = tempfile.mkdtemp(prefix='mpc-conformance-')
if not os.environ.get('MPC_CONFORMANCE_KEEP'):
    atexit.register(shutil.rmtree, WORKROOT, True)


def suite_env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [os.path.join(HERE, 'shim'), ROOT]
        + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    env['MPC_CONFORMANCE'] = TARGET
    return env


def run_child(method, workdir, extra=(), timeout=SUITE_TIMEOUT):
    """Run suite_child.py for `method`; return its JSON result."""
    out = os.path.join(workdir, method + '.json')
    log = os.path.join(workdir, method + '.log')
    with open(log, 'w') as logf:
        try:
            subprocess.run(
                [sys.executable, os.path.join(HERE, 'suite_child.py'), method,
                 out] + list(extra),
                cwd=workdir, env=suite_env(), stdout=logf, stderr=logf,
                stdin=subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {'status': 'timed out after %ss (log: %s)' % (timeout, log),
                    'outcomes': {}}
    try:
        with open(out) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        with open(log) as f:
            tail = f.read()[-3000:]
        return {'status': 'no result (%r); log tail:\n%s' % (e, tail),
                'outcomes': {}}


class SuiteRuns:
    """One background run per start method, started together on first use."""

    def __init__(self):
        self.workdir = os.path.join(WORKROOT, 'run')
        self.wanted = set()
        self.results = {}
        self.threads = {}
        self.lock = threading.Lock()

    def _start(self, method):
        def work():
            self.results[method] = run_child(
                method, os.path.join(self.workdir, method))
        os.makedirs(os.path.join(self.workdir, method), exist_ok=True)
        t = threading.Thread(target=work, daemon=True)
        self.threads[method] = t
        t.start()

    def get(self, method):
        with self.lock:
            for m in sorted(self.wanted | {method}):
                if m not in self.threads:
                    self._start(m)
        self.threads[method].join()
        return self.results[method]
