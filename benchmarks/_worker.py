"""One repetition of one workload under one implementation, in a fresh
interpreter:  python -m benchmarks._worker IMPL WORKLOAD N

Prints one line ``BENCH-RESULT {json}`` with ``status`` ok (and
``seconds`` for the N operations), na (and ``reason``) or error (and
``reason``).  A spawned child re-imports this module as ``__mp_main__``,
so nothing runs at import time.
"""
import importlib
import json
import sys
import traceback

MARKER = 'BENCH-RESULT '


def _missing(impl, err):
    """The part of `impl` an ImportError says is missing, or None when
    the error is about something else."""
    name = getattr(err, 'name', None) or ''
    if name == impl or name.startswith(impl + '.'):
        return name[len(impl) + 1:] or impl
    return None


def _lacks(impl, part):
    # Only our own package is still growing; a peer simply lacks it.
    return '%s has no %s%s' % (impl, part,
                               ' yet' if impl == 'multiprocessing_c' else '')


def check_needs(mp, impl, needs):
    """Return why `mp` cannot run a workload that needs `needs`, or None."""
    for need in needs:
        if need.startswith('start:'):
            method = need[len('start:'):]
            if method not in mp.get_all_start_methods():
                return '%s has no %s start method' % (impl, method)
            continue
        try:
            importlib.import_module(impl + '.' + need)
        except ImportError as err:
            part = _missing(impl, err) or need
            return _lacks(impl, part)
    return None


def run(impl, name, n):
    from benchmarks import workloads
    w = workloads.get(name)
    try:
        mp = importlib.import_module(impl)
    except ImportError as err:
        return {'status': 'error', 'reason': 'cannot import %s: %s' % (impl, err)}
    reason = check_needs(mp, impl, w.needs)
    if reason:
        return {'status': 'na', 'reason': reason}
    try:
        seconds = w.fn(mp, n)
    except ImportError as err:
        # A submodule the workload reached lazily may be missing too.
        part = _missing(impl, err)
        if part:
            return {'status': 'na', 'reason': _lacks(impl, part)}
        return {'status': 'error', 'reason': _describe(err)}
    except Exception as err:
        return {'status': 'error', 'reason': _describe(err)}
    return {'status': 'ok', 'seconds': seconds, 'n': n}


def _describe(err):
    tb = traceback.extract_tb(err.__traceback__)
    where = ' (%s:%d)' % (tb[-1].filename.rsplit('/', 1)[-1], tb[-1].lineno) if tb else ''
    return '%s: %s%s' % (type(err).__name__, err, where)


def main(argv):
    impl, name, n = argv[0], argv[1], int(argv[2])
    result = run(impl, name, n)
    sys.stderr.flush()
    sys.stdout.write('\n' + MARKER + json.dumps(result) + '\n')
    sys.stdout.flush()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
