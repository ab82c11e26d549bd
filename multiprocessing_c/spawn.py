"""The child side of the spawn (and forkserver) start methods: what a
fresh interpreter needs to become a copy of its parent's process (paths,
working directory, the main module re-run as ``__mp_main__``), and the
command line that starts it."""
import io
import os
import pickle
import runpy
import struct
import sys
import types

from . import process
from . import util

__all__ = ['_main', 'freeze_support', 'set_executable', 'get_executable',
           'get_preparation_data', 'get_command_line', 'import_main_path']

WINEXE = False
WINSERVICE = False

_python_exe = sys.executable

# The command-line marker of a spawned child, for freeze_support().
_CHILD_FLAG = '--multiprocessing-fork'


def set_executable(exe):
    """Use interpreter `exe` (str, bytes or path-like) for spawned children."""
    global _python_exe
    _python_exe = os.fsdecode(exe)


def get_executable():
    return _python_exe


def is_forking(argv):
    """Whether `argv` is the command line of a spawned child."""
    return len(argv) >= 2 and argv[1] == _CHILD_FLAG


def freeze_support():
    """In a frozen executable started as a child, run the child and exit."""
    if is_forking(sys.argv):
        kwds = {}
        for arg in sys.argv[2:]:
            name, value = arg.split('=', 1)
            kwds[name] = None if value == 'None' else int(value)
        spawn_main(**kwds)
        sys.exit()


def get_command_line(**kwds):
    """Return the argv that starts a child running spawn_main(**kwds)."""
    if getattr(sys, 'frozen', False):
        return ([sys.executable, _CHILD_FLAG]
                + ['%s=%r' % item for item in kwds.items()])
    call = 'spawn_main(%s)' % ', '.join('%s=%r' % kv for kv in kwds.items())
    prog = 'from %s.spawn import spawn_main; %s' % (__package__, call)
    from . import _alias
    if _alias.active():
        # Under `python -m multiprocessing_c` the child resolves
        # `multiprocessing` to us before it unpickles anything.
        prog = 'import %s._alias as _a; _a.install(); %s' % (__package__, prog)
    return ([get_executable()] + util._args_from_interpreter_flags()
            + ['-c', prog, _CHILD_FLAG])


def spawn_main(pipe_handle, parent_pid=None, tracker_fd=None):
    """Entry point of a spawned child; never returns."""
    if not is_forking(sys.argv) and not getattr(sys, 'frozen', False):
        raise RuntimeError('spawn_main() runs only in a spawned child')
    _use_tracker_fd(tracker_fd)
    # Our copy of the data pipe's read end reports the parent's death.
    parent_sentinel = os.dup(pipe_handle)
    exitcode = _main(pipe_handle, parent_sentinel)
    sys.exit(exitcode)


def _use_tracker_fd(tracker_fd):
    if tracker_fd is not None:
        from . import resource_tracker
        resource_tracker._resource_tracker._fd = tracker_fd


def _read_exactly(f, n):
    chunks = []
    while n:
        chunk = f.read(n)
        if not chunk:
            raise EOFError('the parent process went away while sending '
                           'the new process its data')
        chunks.append(chunk)
        n -= len(chunk)
    return b''.join(chunks)


def _main(fd, parent_sentinel):
    # The payload is length-prefixed, so we never read past it while the
    # parent keeps its end of the pipe open.
    with open(fd, 'rb', closefd=True) as f:
        (size,) = struct.unpack('>Q', _read_exactly(f, 8))
        data = io.BytesIO(_read_exactly(f, size))
    me = process.current_process()
    me._inheriting = True
    try:
        prepare(pickle.load(data))
        process_obj = pickle.load(data)
    finally:
        del me._inheriting
    return process_obj._bootstrap(parent_sentinel)


def _check_not_importing_main():
    if getattr(process.current_process(), '_inheriting', False):
        raise RuntimeError('''
        A new process was started while this process was still being
        prepared as a spawned child: the main module is being imported
        again in the child, and it started a process at import time.

        Start processes only under the main-module guard:

            if __name__ == '__main__':
                ...start processes here...

        (For a frozen executable, also call freeze_support() first.)''')


def get_preparation_data(name):
    """Return what a spawned child needs to mirror this process."""
    _check_not_importing_main()
    me = process.current_process()
    data = {
        'name': name,
        'authkey': bytes(me.authkey),
        'log_to_stderr': util._log_to_stderr,
        # '' on sys.path means "the cwd at start-up", which may since have
        # changed: pin it.
        'sys_path': [process.ORIGINAL_DIR if p == '' else p
                     for p in sys.path],
        'sys_argv': sys.argv[:],
        'orig_dir': process.ORIGINAL_DIR,
        'dir': os.getcwd(),
    }
    if util._logger is not None:
        data['log_level'] = util._logger.getEffectiveLevel()
    from .context import _default_context
    data['start_method'] = _default_context.get_start_method()

    main = sys.modules['__main__']
    spec_name = getattr(getattr(main, '__spec__', None), 'name', None)
    if spec_name is not None:
        data['init_main_from_name'] = spec_name
    else:
        path = getattr(main, '__file__', None)
        if path is not None:
            if not os.path.isabs(path) and process.ORIGINAL_DIR is not None:
                path = os.path.join(process.ORIGINAL_DIR, path)
            data['init_main_from_path'] = os.path.normpath(path)
    return data


old_main_modules = []


def prepare(data):
    """Apply preparation data in a spawned child."""
    me = process.current_process()
    if 'name' in data:
        me.name = data['name']
    if 'authkey' in data:
        me.authkey = data['authkey']
    if data.get('log_to_stderr'):
        util.log_to_stderr()
    if 'log_level' in data:
        util.get_logger().setLevel(data['log_level'])
    if 'sys_path' in data:
        sys.path = data['sys_path']
    if 'sys_argv' in data:
        sys.argv = data['sys_argv']
    if 'dir' in data:
        os.chdir(data['dir'])
    if 'orig_dir' in data:
        process.ORIGINAL_DIR = data['orig_dir']
    if 'start_method' in data:
        from . import context
        context._force_start_method(data['start_method'])
    _import_parent_main(data.get('init_main_from_name'),
                        data.get('init_main_from_path'))


def _import_parent_main(mod_name, main_path):
    """Run the parent's main module here as ``__mp_main__`` (and make it
    ``__main__``), so that what the parent pickled as ``__main__.X`` can be
    found.  The ``if __name__ == '__main__'`` block does not run again."""
    current = sys.modules['__main__']
    if mod_name is not None:
        # A package's __main__ is a program, not a library: never re-run it.
        if (mod_name == '__main__' or mod_name.endswith('.__main__')
                or getattr(current.__spec__, 'name', None) == mod_name):
            return

        def run():
            return runpy.run_module(mod_name, run_name='__mp_main__',
                                    alter_sys=True)
    elif main_path is not None:
        stem = os.path.splitext(os.path.basename(main_path))[0]
        if stem == 'ipython' or getattr(current, '__file__', None) == main_path:
            return

        def run():
            return runpy.run_path(main_path, run_name='__mp_main__')
    else:
        return
    module = types.ModuleType('__mp_main__')
    module.__dict__.update(run())
    old_main_modules.append(current)
    sys.modules['__main__'] = sys.modules['__mp_main__'] = module


def import_main_path(main_path):
    """Run the script at `main_path` as this process's __mp_main__."""
    _import_parent_main(None, main_path)
