"""Hooks for the conformance run (the helpers live in suite_support.py)."""
import pytest

from suite_support import SuiteRuns

_runs = SuiteRuns()


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
