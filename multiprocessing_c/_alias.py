"""Resolve `multiprocessing`, its submodules and `_multiprocessing` to
multiprocessing_c, for `python -m multiprocessing_c` and its children.

An import of a stdlib submodule we do not provide fails with an
ImportError that names it: the stdlib is never used silently.
"""
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

_PKG = __package__
_STDLIB = 'multiprocessing'


def _target_of(fullname):
    if fullname == '_multiprocessing':
        return _PKG + '._mpcore'
    if fullname == _STDLIB or fullname.startswith(_STDLIB + '.'):
        return _PKG + fullname[len(_STDLIB):]
    return None


class _AliasLoader(importlib.abc.Loader):
    """Hands out our already-imported module under the stdlib's name."""

    def __init__(self, target):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module):
        # The import system stamped the alias spec on the module; keep the
        # module's own, so that it still knows its real name and location.
        module.__spec__ = self._real_spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        real = _target_of(fullname)
        if real is None:
            return None
        if importlib.util.find_spec(real) is None:
            raise ModuleNotFoundError(
                '%s is not provided by %s (running under python -m %s): '
                '%s does not exist yet' % (fullname, _PKG, _PKG, real),
                name=fullname)
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(real))


def active():
    """Whether `multiprocessing` currently resolves to us."""
    return any(isinstance(f, _AliasFinder) for f in sys.meta_path)


def install():
    """Make later imports of `multiprocessing` resolve to us.  Stdlib
    modules imported before are dropped from sys.modules."""
    if active():
        return
    for name in list(sys.modules):
        if _target_of(name) is not None:
            del sys.modules[name]
    sys.meta_path.insert(0, _AliasFinder())
