"""Helpers for the conformance run: CPython's multiprocessing suite
(test._test_multiprocessing of the running interpreter) runs against multiprocessing_c, one subprocess per start
method, all selected methods in parallel, and hands each test's outcome to
the pytest item named after it."""
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

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


# A test that makes no progress for this long is declared hung: its run is
# killed and resumed after it.
HANG_SECONDS = int(os.environ.get('MPC_CONFORMANCE_HANG', '240'))


def _child_cmd(method, workdir, *extra):
    return [sys.executable, os.path.join(HERE, 'suite_child.py'), method,
            workdir] + list(extra)


def list_suite(method, workdir, timeout=180):
    """Return {'status', 'tests'} for `method` from a fresh interpreter."""
    os.makedirs(workdir, exist_ok=True)
    try:
        subprocess.run(_child_cmd(method, workdir, '--list'), cwd=workdir,
                       env=suite_env(), stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout)
        with open(os.path.join(workdir, 'tests.json')) as f:
            return json.load(f)
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        return {'status': 'could not list the suite: %r' % (e,)}


def _read_progress(path):
    records = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass        # a line cut short by a kill
    return records


def _live_sigint():
    # A shell that runs us in the background leaves SIGINT ignored, and an
    # ignored signal stays ignored across exec: the suite's Ctrl-C tests
    # need the default, as at a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_method(method, workdir, timeout=SUITE_TIMEOUT, never_run=()):
    """Run the suite for `method`, resuming after any test that hangs or
    kills its interpreter; return {'status', 'outcomes': {id: [outcome,
    detail]}}."""
    os.makedirs(workdir, exist_ok=True)
    progress = os.path.join(workdir, 'progress.jsonl')
    log_path = os.path.join(workdir, 'log.txt')
    deadline = time.monotonic() + timeout
    outcomes, status = {}, 'ran'
    while True:
        with open(os.path.join(workdir, 'skip.txt'), 'w') as f:
            f.write('\n'.join(list(outcomes) + list(never_run)))
        with open(log_path, 'a') as log:
            proc = subprocess.Popen(_child_cmd(method, workdir), cwd=workdir,
                                    env=suite_env(), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log,
                                    start_new_session=True,
                                    preexec_fn=_live_sigint)
        last_size, last_change, reason = -1, time.monotonic(), None
        while proc.poll() is None:
            time.sleep(0.5)
            size = os.path.getsize(progress) if os.path.exists(progress) else 0
            now = time.monotonic()
            if size != last_size:
                last_size, last_change = size, now
            elif now - last_change > HANG_SECONDS:
                reason = 'hang: no progress for %ss' % HANG_SECONDS
            if now > deadline:
                reason = 'suite time limit of %ss reached' % timeout
            if reason:
                _kill_group(proc)
                break
        if reason is None:
            # Children the suite left behind must not outlive it.
            _kill_group(proc)
        started, done = None, False
        for rec in _read_progress(progress):
            if 'start' in rec:
                started = rec['start']
            elif 'id' in rec:
                outcomes[rec['id']] = [rec['outcome'], rec['detail']]
                started = None
            elif rec.get('done'):
                done = True
            elif 'fatal' in rec:
                return {'status': rec['fatal'], 'outcomes': outcomes}
        if done or (reason and reason.startswith('suite time')):
            if reason:
                status = reason
            return {'status': status, 'outcomes': outcomes}
        if started is None:
            # Ended between tests without finishing: nothing to resume at.
            return {'status': 'stopped between tests (exit %s, %s); log: %s'
                    % (proc.returncode, reason, log_path), 'outcomes': outcomes}
        outcomes[started] = ['fail', '%s (exit status %s); see %s' % (
            reason or 'the interpreter running it died', proc.returncode,
            log_path)]


class SuiteRuns:
    """One background run per start method, started together on first use."""

    def __init__(self, never_run=lambda method: ()):
        self.never_run = never_run
        self.workdir = os.path.join(WORKROOT, 'run')
        self.wanted = set()
        self.results = {}
        self.threads = {}
        self.lock = threading.Lock()

    def _start(self, method):
        def work():
            result = run_method(method, os.path.join(self.workdir, method),
                                never_run=self.never_run(method))
            self.results[method] = result
            dump = os.environ.get('MPC_CONFORMANCE_JSON')
            if dump:
                with open('%s.%s.json' % (dump, method), 'w') as f:
                    json.dump(result, f, indent=0, sort_keys=True)
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
