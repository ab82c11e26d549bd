"""CPython's own multiprocessing test suite, each of its tests a pytest
result: `python -m pytest tests/conformance -k spawn` runs one method.

A test that does not pass under multiprocessing_c is either listed in
known_failures.txt with its reason (and then must keep failing, so the list
shrinks), or fails here with CPython's traceback.
"""
import functools
import importlib.util
import os

import pytest

from suite_support import HERE, TARGET, WORKROOT, list_suite

ALL_METHODS = ('fork', 'spawn', 'forkserver')


def available_methods():
    if TARGET == 'stdlib':
        return list(ALL_METHODS)
    import multiprocessing_c
    return [m for m in ALL_METHODS if m in multiprocessing_c.get_all_start_methods()]


@functools.lru_cache()
def load_known_failures():
    """{(method, test_id): reason}; method '*' stands for every method."""
    known = {}
    with open(os.path.join(HERE, 'known_failures.txt')) as f:
        for line in f:
            line = line.strip()
            if line.startswith("#"):
                continue
            if not line:
                continue
            method, test_id, reason = line.split(None, 2)
            known[(method, test_id)] = reason
    return known


def hanging_tests(method):
    """Known tests that hang under `method`: never run, to save the
    watchdog's wait in every run."""
    return {test_id for (m, test_id), reason in load_known_failures().items()
            if m in (method, '*') and reason.startswith('hangs:')}


@functools.lru_cache()
def list_tests(method):
    """Ask a fresh interpreter for the suite's test ids under `method`."""
    return list_suite(method, os.path.join(WORKROOT, 'list-' + method))


def missing_submodules():
    import sys
    sys.path.insert(0, os.path.dirname(HERE))
    from test_api_surface import NOT_YET
    return sorted(n for n in NOT_YET
                  if importlib.util.find_spec('multiprocessing_c.' + n) is None)


def collect():
    known = load_known_failures()
    cases = []
    for method in available_methods():
        listing = list_tests(method)
        if 'tests' not in listing:
            cases.append(pytest.param(method, None,
                                      id='%s:suite-import' % method))
            continue
        for test_id in listing['tests']:
            reason = known.get((method, test_id)) or known.get(('*', test_id))
            # 'flaky:' and 'untriaged:' tests may pass now and then; the
            # others must fail.  'hangs:' tests are not run at all.
            strict = not reason.startswith(('flaky:', 'untriaged:', 'hangs:')) \
                if reason else True
            marks = [pytest.mark.xfail(reason=reason, strict=strict)] if reason else []
            cases.append(pytest.param(method, test_id, marks=marks,
                                      id='%s:%s' % (method, test_id)))
    return cases


@pytest.mark.timeout(2400)
@pytest.mark.parametrize('suite_method,test_id', collect())
def test_cpython(suite_runs, suite_method, test_id):
    if test_id is None:
        status = list_tests(suite_method)['status']
        missing = missing_submodules()
        if missing and 'ModuleNotFoundError' in status:
            pytest.skip("CPython's suite imports every submodule at once; "
                        'multiprocessing_c does not provide %s yet' % ', '.join(missing))
        pytest.fail('the suite could not be loaded:\n' + status)
    if test_id in hanging_tests(suite_method):
        pytest.xfail('not run: ' + load_known_failures().get(
            (suite_method, test_id)) or load_known_failures()[('*', test_id)])
    result = suite_runs.get(suite_method)
    if test_id not in result['outcomes']:
        pytest.fail('no outcome for %s (run status: %s)' % (test_id, result['status'][:3000]))
    outcome, detail = result['outcomes'][test_id]
    if outcome == 'skip':
        pytest.skip('CPython skips it: ' + detail)
    assert outcome == 'pass', '%s under %s:\n%s' % (outcome, suite_method, detail)
