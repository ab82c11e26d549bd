"""The child side of the spawn (and forkserver) start methods: what a
fresh interpreter needs to become a copy of its parent's process (paths,
working directory, the main module re-run as ``__mp_main__``), and the
command line that starts it.

A spawned child imports this module first, so it imports little: what
only the parent needs, or only some children, is imported where used."""
import io
import os
import pickle
import sys

from . import process

__all__ = ['_main', 'freeze_support', 'set_executable', 'get_executable',
           'get_preparation_data', 'get_command_line', 'import_main_path']

WINEXE = False
WINSERVICE = False

_python_exe = sys.executable

# The command-line marker of a spawned child, for freeze_support().
_CHILD_FLAG = '--multiprocessing-fork'

# In a spawned child: the fd of the parent's resource tracker pipe, for
# resource_tracker to adopt when it is first imported (most children never
# need it).
_inherited_tracker_fd = None


def set_executable(exe):
    """Use interpreter `exe` (str, bytes or path-like) for spawned children."""
    global _python_exe
    _python_exe = os.fsdecode(exe)


def get_executable():
    return _python_exe


def is_forking(argv):
    """Whether `argv` is the command line of a spawned child."""
    return len(argv) >= 2 and argv[1] == _CHILD_FLAG


# ------------------------------------------------------- the parent's side

def get_command_line(**kwds):
    """Return the argv that starts a child running spawn_main(**kwds)."""
    args = ['%s=%r' % item for item in kwds.items()]
    if getattr(sys, 'frozen', False):
        return [sys.executable, _CHILD_FLAG] + args
    prog = 'from %s.spawn import spawn_main; spawn_main(%s)' % (
        __package__, ', '.join(args))
    from . import _alias
    if _alias.active():
        # Under `python -m multiprocessing_c` the child resolves
        # `multiprocessing` to us before it unpickles anything.
        prog = 'import %s._alias as _a; _a.install(); %s' % (__package__, prog)
    from .util import _args_from_interpreter_flags
    return ([get_executable()] + _args_from_interpreter_flags()
            + ['-c', prog, _CHILD_FLAG])


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


def _main_module_reference():
    """How a child finds this program's main module: by module name when
    it was run with -m, else by the path of its file (absolute, as seen
    from where the program started); {} when there is neither."""
    main = sys.modules['__main__']
    spec_name = getattr(getattr(main, '__spec__', None), 'name', None)
    if spec_name is not None:
        return {'init_main_from_name': spec_name}
    path = getattr(main, '__file__', None)
    if path is None:
        return {}
    path = os.path.join(process.ORIGINAL_DIR or '', path)
    return {'init_main_from_path': os.path.normpath(path)}


def get_preparation_data(name):
    """Return what a spawned child needs to mirror this process."""
    _check_not_importing_main()
    from . import util
    from .context import _default_context
    start_dir = process.ORIGINAL_DIR
    data = dict(
        _main_module_reference(),
        name=name,
        authkey=bytes(process.current_process().authkey),
        log_to_stderr=util._log_to_stderr,
        # '' on sys.path means "the cwd at start-up", which may since have
        # changed: pin it.
        sys_path=[start_dir if entry == '' else entry for entry in sys.path],
        sys_argv=list(sys.argv),
        orig_dir=start_dir,
        dir=os.getcwd(),
        start_method=_default_context.get_start_method(),
    )
    if util._logger is not None:
        data['log_level'] = util._logger.getEffectiveLevel()
    return data


# -------------------------------------------------------- the child's side

def freeze_support():
    """In a frozen executable started as a child, run the child and exit."""
    if is_forking(sys.argv):
        kwds = dict(arg.split('=', 1) for arg in sys.argv[2:])
        spawn_main(**{key: None if text == 'None' else int(text)
                      for key, text in kwds.items()})
        sys.exit()


def spawn_main(pipe_handle, parent_pid=None, tracker_fd=None):
    """Entry point of a spawned child; never returns."""
    if not is_forking(sys.argv) and not getattr(sys, 'frozen', False):
        raise RuntimeError('spawn_main() runs only in a spawned child')
    if tracker_fd is not None:
        _adopt_tracker_fd(tracker_fd)
    # Our copy of the data pipe's read end reports the parent's death.
    sys.exit(_main(pipe_handle, os.dup(pipe_handle)))


def _adopt_tracker_fd(fd):
    global _inherited_tracker_fd
    _inherited_tracker_fd = fd
    tracker = sys.modules.get(__package__ + '.resource_tracker')
    if tracker is not None:
        tracker._resource_tracker._fd = fd


def _receive(fd):
    """The parent's payload on `fd` (which is closed after): 8 bytes of
    length, big-endian, then that many bytes.  The length lets us stop
    reading while the parent keeps its end of the pipe open."""
    with open(fd, 'rb', closefd=True) as pipe:
        head = pipe.read(8)
        size = int.from_bytes(head, 'big') if len(head) == 8 else -1
        body = pipe.read(size) if size > 0 else b''
    if size < 0 or len(body) != size:
        raise EOFError('the parent process went away while sending '
                       'the new process its data')
    return body


def _main(fd, parent_sentinel):
    stream = io.BytesIO(_receive(fd))
    # While the preparation data is applied (the main module re-run) and
    # the Process object unpickled, starting a process is an error.
    me = process.current_process()
    me._inheriting = True
    try:
        prepare(pickle.load(stream))
        process_obj = pickle.load(stream)
    finally:
        del me._inheriting
    return process_obj._bootstrap(parent_sentinel)


def _set_on_current_process(attr):
    return lambda value: setattr(process.current_process(), attr, value)


def _log_to_stderr_if(wanted):
    if wanted:
        from . import util
        util.log_to_stderr()


def _set_log_level(level):
    from . import util
    util.get_logger().setLevel(level)


def _set_original_dir(path):
    process.ORIGINAL_DIR = path


def _force_start_method(method):
    from . import context
    context._force_start_method(method)


# What prepare() does with each key of the preparation data, in order.
_PREPARATION_STEPS = (
    ('name', _set_on_current_process('name')),
    ('authkey', _set_on_current_process('authkey')),
    ('log_to_stderr', _log_to_stderr_if),
    ('log_level', _set_log_level),
    ('sys_path', lambda path: setattr(sys, 'path', path)),
    ('sys_argv', lambda argv: setattr(sys, 'argv', argv)),
    ('dir', os.chdir),
    ('orig_dir', _set_original_dir),
    ('start_method', _force_start_method),
)


def prepare(data):
    """Apply preparation data in a spawned child."""
    for key, apply in _PREPARATION_STEPS:
        if key in data:
            apply(data[key])
    _import_parent_main(data.get('init_main_from_name'),
                        data.get('init_main_from_path'))


old_main_modules = []


def _import_parent_main(mod_name, main_path):
    """Run the parent's main module here as ``__mp_main__`` (and make it
    ``__main__``), so that what the parent pickled as ``__main__.X`` can be
    found.  The ``if __name__ == '__main__'`` block does not run again."""
    import runpy
    import types
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


def _fixup_main_from_name(mod_name):
    """Run the module `mod_name` as this process's __mp_main__."""
    _import_parent_main(mod_name, None)


def _fixup_main_from_path(main_path):
    """Run the script at `main_path` as this process's __mp_main__."""
    _import_parent_main(None, main_path)


import_main_path = _fixup_main_from_path
