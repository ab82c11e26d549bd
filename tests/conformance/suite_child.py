"""Run CPython's multiprocessing suite for one start method and write each
test's outcome to JSON.

    python suite_child.py METHOD OUT.json [--list]

The suite's test classes must live in an importable module, because
spawned children unpickle test methods by module name: this script writes
`_mpc_suite_<method>.py` next to OUT.json and puts that directory first on
sys.path (the parent passes it on to every child).
"""
import json
import os
import sys
import time
import traceback
import unittest


class Recorder(unittest.TextTestResult):
    """Keeps every test's outcome and, for failures, the traceback."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes = {}

    def _put(self, test, outcome, detail=''):
        self.outcomes[test.id().split('.', 1)[1]] = [outcome, detail[-3000:]]

    def addSuccess(self, test):
        super().addSuccess(test)
        self._put(test, 'pass')

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._put(test, 'fail', self._exc_info_to_string(err, test))

    def addError(self, test, err):
        super().addError(test, err)
        # setUpClass errors arrive with a pseudo-test id: keep them too.
        self._put(test, 'error', self._exc_info_to_string(err, test))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._put(test, 'skip', reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._put(test, 'pass', 'expected failure')

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._put(test, 'fail', 'unexpected success')


def load(method, workdir):
    modname = '_mpc_suite_' + method
    with open(os.path.join(workdir, modname + '.py'), 'w') as f:
        f.write('import test._test_multiprocessing as _suite\n'
                '_suite.install_tests_in_module_dict(globals(), %r)\n' % method)
    sys.path.insert(0, workdir)
    import importlib
    return unittest.TestLoader().loadTestsFromModule(importlib.import_module(modname))


def test_ids(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from test_ids(item)
        else:
            yield item.id().split('.', 1)[1]


def main():
    method, out = sys.argv[1], sys.argv[2]
    workdir = os.path.dirname(os.path.abspath(out))
    result = {'method': method, 'status': 'ran', 'outcomes': {}}
    t0 = time.time()
    try:
        suite = load(method, workdir)
        if '--list' in sys.argv:
            result['tests'] = sorted(test_ids(suite))
        else:
            runner = unittest.TextTestRunner(resultclass=Recorder,
                                             stream=sys.stderr, verbosity=2)
            result['outcomes'] = runner.run(suite).outcomes
    except BaseException:
        result['status'] = 'could not run: ' + traceback.format_exc()[-3000:]
    result['seconds'] = round(time.time() - t0, 1)
    with open(out, 'w') as f:
        json.dump(result, f, indent=0, sort_keys=True)


if __name__ == '__main__':   # spawned children re-import this file
    main()
