"""Shared fixtures: the start-method parameter, a guard against children
left running, and helpers to run scripts in a fresh interpreter."""
import os
import subprocess
import sys
import textwrap

import pytest

import multiprocessing_c

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))

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


def child_env(**extra):
    """The environment for a fresh interpreter that imports this checkout."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [ROOT, TESTS] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    env.update(extra)
    return env


def run_python(args, cwd=None, timeout=60, **extra_env):
    """Run `python args...` and return the CompletedProcess (text mode)."""
    return subprocess.run([sys.executable] + list(args), cwd=cwd,
                          env=child_env(**extra_env), capture_output=True,
                          text=True, timeout=timeout)


def write_script(path, source):
    path.write_text(textwrap.dedent(source))
    return str(path)
