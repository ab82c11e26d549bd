"""Each submodule offers the names its stdlib namesake offers, so code
written against `multiprocessing.X` finds what it uses (the stdlib is only
the oracle here; the package never imports it)."""
import importlib
import importlib.util
import inspect
import pkgutil
import types

import pytest

import multiprocessing

STDLIB_SUBMODULES = sorted(
    m.name for m in pkgutil.iter_modules(multiprocessing.__path__)
    if m.name not in ('popen_spawn_win32',))

# Submodules still to come, each with the issue that brings it.  The list
# must shrink: a test fails when one of them appears, so it is taken off.
NOT_YET = {
}

# Names still missing from submodules we have, likewise shrinking.
PARTIAL = {
}


# Not API: before 3.11 the stdlib's process.py leaves the variables of its
# loop over the signal module behind as globals.
NOT_API = {'multiprocessing.process': {'name', 'signum'}}


def api_names(module):
    """The names a user of `module` may rely on: __all__, plus the public
    classes, functions and constants the module defines itself."""
    names = set(getattr(module, '__all__', ()))
    for name, value in vars(module).items():
        if name.startswith('_') or isinstance(value, types.ModuleType):
            continue
        if name in NOT_API.get(module.__name__, ()):
            continue
        if inspect.isclass(value) or inspect.isroutine(value):
            if getattr(value, '__module__', None) == module.__name__:
                names.add(name)
        elif isinstance(value, (int, str, bytes, float, tuple)):
            names.add(name)
    return names


def ours(name):
    return importlib.util.find_spec('multiprocessing_c.' + name) is not None


@pytest.mark.parametrize('name', [n for n in STDLIB_SUBMODULES if ours(n)])
def test_submodule_offers_stdlib_names(name):
    std = importlib.import_module('multiprocessing.' + name)
    mine = importlib.import_module('multiprocessing_c.' + name)
    missing = set(n for n in api_names(std) if not hasattr(mine, n))
    assert missing == PARTIAL.get(name, set()), (
        'multiprocessing_c.%s lacks %s; PARTIAL expects %s'
        % (name, sorted(missing), sorted(PARTIAL.get(name, ()))))


def test_top_level_offers_stdlib_names():
    import multiprocessing_c
    missing = sorted(n for n in dir(multiprocessing)
                     if not n.startswith('_') and not hasattr(multiprocessing_c, n)
                     and not isinstance(getattr(multiprocessing, n), types.ModuleType))
    assert not missing


def test_not_yet_list_is_current():
    present = sorted(n for n in NOT_YET if ours(n))
    assert not present, ('now provided, take them off NOT_YET: %s' % present)
    missing = sorted(n for n in STDLIB_SUBMODULES if not ours(n) and n not in NOT_YET)
    assert not missing, 'stdlib submodules with no plan: %s' % missing


def test_package_never_imports_the_stdlib(tmp_path):
    # Import every submodule we have in a fresh interpreter and check that
    # neither stdlib package got loaded along the way.
    from testutil import run_python
    names = [n for n in STDLIB_SUBMODULES if ours(n)]
    code = ('import sys, importlib\n'
            'for n in %r: importlib.import_module("multiprocessing_c." + n)\n'
            'import multiprocessing_c.__main__, multiprocessing_c._alias\n'
            'bad = [m for m in sys.modules if m == "_multiprocessing" or '
            'm == "multiprocessing" or m.startswith("multiprocessing.")]\n'
            'print(bad)\n' % names)
    r = run_python(['-c', code])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '[]'
