"""Run CPython's multiprocessing suite for one start method, streaming each
test's outcome as a JSON line.

    python suite_child.py METHOD WORKDIR            run, skipping WORKDIR/skip.txt
    python suite_child.py METHOD WORKDIR --list     write WORKDIR/tests.json

Progress goes to WORKDIR/progress.jsonl: {"start": id} before a test,
{"id": id, "outcome": ..., "detail": ...} after it, {"done": true} at the
end; the parent uses it to tell a hung or crashed test and resume after it.

The suite's test classes must live in an importable module, because
spawned children unpickle test methods by module name: this script writes
`_mpc_suite_<method>.py` into WORKDIR and puts WORKDIR first on sys.path
(the parent passes it on to every child).
"""
import importlib
import json
import os
import sys
import traceback
import unittest


class Streamer(unittest.TextTestResult):
    """Writes each outcome to the progress file as soon as it is known."""

    progress = None
    _held = None

    def _emit(self, record):
        self.progress.write(json.dumps(record) + '\n')
        self.progress.flush()

    def _put(self, test, outcome, detail=''):
        self._emit({'id': short_id(test), 'outcome': outcome,
                    'detail': detail[-3000:]})

    def startTest(self, test):
        self._emit({'start': short_id(test)})
        super().startTest(test)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._put(test, 'pass')

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._put(test, 'fail', self._exc_info_to_string(err, test))

    def addError(self, test, err):
        super().addError(test, err)
        # setUpClass/setUpModule errors arrive with a pseudo-test id.
        self._put(test, 'error', self._exc_info_to_string(err, test))

    # A subtest that fails or skips is the test's only report: unittest
    # then calls no addSuccess/addFailure/addSkip for the test itself.  The
    # first such report (a failure over a skip) is held and given, as the
    # test's one outcome, when the test stops.

    def _hold(self, outcome, detail):
        if self._held is None or (self._held[0] == 'skip' and outcome != 'skip'):
            self._held = (outcome, detail)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            outcome = 'fail' if issubclass(err[0], test.failureException) else 'error'
            self._hold(outcome, '%s\n%s' % (subtest.id(),
                                            self._exc_info_to_string(err, test)))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        if hasattr(test, 'test_case'):      # a skipped subtest
            self._hold('skip', reason)
        else:
            self._put(test, 'skip', reason)

    def stopTest(self, test):
        super().stopTest(test)
        if self._held is not None:
            self._put(test, *self._held)
        self._held = None

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._put(test, 'pass', 'expected failure')

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._put(test, 'fail', 'unexpected success')


def short_id(test):
    return test.id().split('.', 1)[1]


def flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from flatten(item)
        else:
            yield item


def load(method, workdir):
    modname = '_mpc_suite_' + method
    with open(os.path.join(workdir, modname + '.py'), 'w') as f:
        f.write('import test._test_multiprocessing as _suite\n'
                '_suite.install_tests_in_module_dict(globals(), %r)\n' % method)
    sys.path.insert(0, workdir)
    module = importlib.import_module(modname)
    return list(flatten(unittest.TestLoader().loadTestsFromModule(module)))


def main():
    method, workdir = sys.argv[1], os.path.abspath(sys.argv[2])
    if '--list' in sys.argv:
        result = {'status': 'ran'}
        try:
            result['tests'] = sorted(short_id(t) for t in load(method, workdir))
        except BaseException:
            result['status'] = 'could not load: ' + traceback.format_exc()[-3000:]
        with open(os.path.join(workdir, 'tests.json'), 'w') as f:
            json.dump(result, f)
        return
    skip = set()
    skip_file = os.path.join(workdir, 'skip.txt')
    if os.path.exists(skip_file):
        with open(skip_file) as f:
            skip = set(f.read().split())
    with open(os.path.join(workdir, 'progress.jsonl'), 'a') as progress:
        Streamer.progress = progress
        try:
            tests = [t for t in load(method, workdir) if short_id(t) not in skip]
        except BaseException:
            progress.write(json.dumps(
                {'fatal': 'could not load: ' + traceback.format_exc()[-3000:]}) + '\n')
            return
        unittest.TextTestRunner(resultclass=Streamer, stream=sys.stderr,
                                verbosity=2).run(unittest.TestSuite(tests))
        progress.write(json.dumps({'done': True}) + '\n')


if __name__ == '__main__':   # spawned children re-import this file
    main()
