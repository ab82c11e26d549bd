"""Shared fixtures: the start-method parameter and a guard against children
left running (script helpers are in testutil.py)."""
import pytest

# The shared checks in testutil.py assert: let pytest explain their failures.
pytest.register_assert_rewrite('testutil')

import multiprocessing_c  # noqa: E402

# forkserver joins this list when the fork server exists.
START_METHODS = [m for m in ('fork', 'spawn', 'forkserver')
                 if m in multiprocessing_c.get_all_start_methods()]

if 'forkserver' in START_METHODS:
    # Children import their test module, and with it pytest (~0.3 s):
    # let the fork server do that once for all of them, as CPython's own
    # suite does with its PRELOAD list.
    multiprocessing_c.set_forkserver_preload(['__main__', 'conftest'])


@pytest.fixture(params=START_METHODS)
def start_method(request):
    return request.param


@pytest.fixture
def ctx(start_method):
    return multiprocessing_c.get_context(start_method)


@pytest.fixture(autouse=True)
def _no_children_left():
    """Every test must join what it starts: no live child may survive it."""
    yield
    left = multiprocessing_c.active_children()
    for p in left:
        p.kill()
        p.join(5)
    assert not left, 'test left children running: %r' % left
