"""Distributed engines behind the Pool and executor API.

``Pool(..., backend="ray")`` runs the pool's tasks on a Ray cluster and
``backend="dask"`` on a Dask distributed cluster; the same for
``multiprocessing_c.futures.ProcessPoolExecutor``.  A backend is named by a
string, ``NAME`` or ``NAME:ADDRESS`` (``"ray"``, ``"ray:auto"``,
``"ray:ray://head:10001"``, ``"dask"``, ``"dask:tcp://scheduler:8786"``), or
given as a ``distributed.Client``.  The environment variable
MULTIPROCESSING_C_POOL_BACKEND (set by ``python -m multiprocessing_c
--pool-backend ...``) has the same form and applies to every Pool created
without a ``backend`` argument.

The engines are optional extras, imported only here and only when asked
for: ``pip install 'multiprocessing_c[ray]'`` or ``'multiprocessing_c[dask]'``.
"""
import importlib
import importlib.util
import os

__all__ = ['ENV_VAR', 'BackendNotAvailable', 'RefusedArgument', 'check', 'parse', 'pool_class',
           'executor_class']

ENV_VAR = 'MULTIPROCESSING_C_POOL_BACKEND'

# backend name -> (our module, the engine's module, the extra to install)
_ENGINES = {
    'ray': ('ray', 'ray', 'ray'),
    'dask': ('dask', 'distributed', 'dask'),
}


class BackendNotAvailable(ImportError):
    """The engine a backend needs is not installed."""


class RefusedArgument(TypeError):
    """A task argument that cannot leave this machine (a Queue, a Lock, a
    Value, a manager proxy, a Connection...) was given to a backend."""


def parse(spec):
    """Split a backend spec into (name, address or client).  ADDRESS is
    what follows the first colon; a ``distributed.Client`` means dask."""
    if spec is None or spec == '':
        return None, None
    if not isinstance(spec, str):
        if type(spec).__module__.split('.')[0] == 'distributed':
            return 'dask', spec
        raise TypeError('backend must be a string such as "ray" or '
                        '"dask:tcp://host:8786", or a distributed.Client, '
                        'not %r' % (spec,))
    name, _, address = spec.partition(':')
    name = name.strip().lower()
    if name not in _ENGINES:
        raise ValueError('unknown pool backend %r: use %s, optionally '
                         'followed by ":ADDRESS"'
                         % (spec, ' or '.join(repr(n) for n in _ENGINES)))
    return name, (address.strip() or None)


def from_environment():
    """The backend spec of MULTIPROCESSING_C_POOL_BACKEND, or None."""
    return os.environ.get(ENV_VAR) or None


def _missing(name, detail):
    _, engine, extra = _ENGINES[name]
    return BackendNotAvailable(
        'the %r pool backend needs the %s package, which is not installed '
        "here (%s); install it with: pip install 'multiprocessing_c[%s]'"
        % (name, engine, detail, extra), name=engine)


def check(spec):
    """Raise ValueError for a malformed spec, BackendNotAvailable when its
    engine is not installed; import nothing.  Return the backend name."""
    name, _ = parse(spec)
    if name is None:
        raise ValueError('no pool backend given')
    engine = _ENGINES[name][1]
    if importlib.util.find_spec(engine) is None:
        raise _missing(name, 'no module named %r' % engine)
    return name


def _module(name):
    ours, engine, extra = _ENGINES[name]
    try:
        importlib.import_module(engine)
    except ImportError as e:
        raise _missing(name, e) from e
    return importlib.import_module('.' + ours, __name__)


def pool_class(spec):
    """The Pool class of backend `spec` (a string or a Client)."""
    name, _ = parse(spec)
    return _module(name).Pool


def executor_class(spec):
    """The ProcessPoolExecutor class of backend `spec`."""
    name, _ = parse(spec)
    return _module(name).ProcessPoolExecutor
