"""Hooks for the conformance run (the helpers live in suite_support.py)."""
import pytest

from suite_support import SuiteRuns
from test_cpython_suite import hanging_tests

_runs = SuiteRuns(never_run=hanging_tests)


def pytest_collection_finish(session):
    # Start only the methods whose tests survived -k / deselection.
    for item in session.items:
        callspec = getattr(item, 'callspec', None)
        method = callspec.params.get('suite_method') if callspec else None
        if method:
            _runs.wanted.add(method)


@pytest.fixture(scope='session')
def suite_runs():
    return _runs
