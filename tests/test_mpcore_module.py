"""The C extension itself: multi-phase init, and spawnv_passfds."""
import importlib
import os
import sys

import pytest

from multiprocessing_c import _mpcore


def test_multi_phase_init_gives_fresh_module_objects():
    import importlib.util
    spec = importlib.util.find_spec('multiprocessing_c._mpcore')
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh is not _mpcore
    assert fresh.spawnv_passfds is not _mpcore.spawnv_passfds


def test_signatures_are_introspectable():
    import inspect
    sig = inspect.signature(_mpcore.spawnv_passfds)
    assert list(sig.parameters) == ['path', 'args', 'passfds']


def test_spawnv_passfds_keeps_only_passed_fds():
    r, w = os.pipe()
    extra = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(extra, True)   # would leak without the fd sweep
    try:
        code = ('import os, sys; os.write(int(sys.argv[1]), '
                'repr(sorted(int(f) for f in os.listdir("/proc/self/fd"))).encode())')
        pid = _mpcore.spawnv_passfds(sys.executable,
                                     [sys.executable, '-c', code, str(w)], [w])
        os.close(w)
        seen = eval(os.read(r, 1000))
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(r)
        os.close(extra)
    assert os.waitstatus_to_exitcode(status) == 0
    assert w in seen and extra not in seen
    # Besides stdio and w, only the fd os.listdir itself had open.
    assert len(set(seen) - {0, 1, 2, w}) == 1


def test_spawnv_passfds_errors():
    with pytest.raises(FileNotFoundError):
        _mpcore.spawnv_passfds('/no/such/interpreter', ['x'], [])
    with pytest.raises(ValueError):
        _mpcore.spawnv_passfds(sys.executable, [sys.executable], [-1])
    with pytest.raises(ValueError):
        _mpcore.spawnv_passfds(sys.executable, [], [])
    with pytest.raises(TypeError):
        _mpcore.spawnv_passfds(sys.executable, [sys.executable], ['x'])
    with pytest.raises(TypeError):
        _mpcore.spawnv_passfds(sys.executable)
    # No zombie is left by the failed exec above.  (Other children, such as
    # a resource tracker started by earlier spawn tests, may be running.)
    assert not zombie_children()


def zombie_children():
    """Pids of this process's children that are zombies."""
    me, zombies = os.getpid(), []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if fields[0] == 'Z' and int(fields[1]) == me:
            zombies.append(int(entry))
    return zombies
