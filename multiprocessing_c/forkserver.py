"""The forkserver start method: one server process per program, started on
first use, that imports the preload modules once and then forks a child
for each request.

The parent side lives here (ensure_running, connect_to_new_process); the
server's loop is C (_mpcore.forkserver_serve).  A request travels over an
AF_UNIX socket in the program's private 0700 temp directory and carries the
server's random token plus the child's file descriptors; the server answers
on the same socket with the child's pid and, when the child ends, its exit
code.  The server exits when the alive pipe from its program reaches EOF.

On Python 3.11 the stdlib's fork server does not authenticate its clients
and relies on the directory's permissions; ours checks a 32-byte token as
well, which the parent hands to the server through the alive pipe (never
on a command line, which other users can read).
"""
import contextlib
import os
import signal
import socket
import struct
import sys
import threading

from . import _mpcore
from . import process
from . import spawn
from . import util

__all__ = ['ensure_running', 'get_inherited_fds', 'connect_to_new_process',
           'set_forkserver_preload']

MAXFDS_TO_SEND = _mpcore.FORKSERVER_MAXFDS
SIGNED_STRUCT = struct.Struct('q')     # pid and exit code, native order

_TOKEN_LEN = _mpcore.FORKSERVER_TOKEN_LEN
_REQUEST = struct.Struct('=II%ds' % _TOKEN_LEN)
# The child's fds: its data pipe, the resource tracker's fd (or a second
# copy of the data pipe when there is none), then what the Popen collected.
_FIXED_FDS = 2


def _tracker():
    """The resource tracker module, if this package has one yet."""
    import importlib.util
    if importlib.util.find_spec(__package__ + '.resource_tracker') is None:
        return None
    from . import resource_tracker
    return resource_tracker


class ForkServer:
    """The parent's handle on its fork server."""

    def __init__(self):
        self._lock = threading.Lock()
        self._preload_modules = ['__main__']
        # Set in a child the server forked: what its parent passed along.
        self._inherited_fds = None
        self._no_server()

    def _no_server(self):
        # The server's socket path, our end of its alive pipe, its pid and
        # the token it expects: all unknown.
        self._forkserver_address = self._forkserver_alive_fd = None
        self._forkserver_pid = self._token = None

    def _stop(self):
        """Stop the server and wait for it (for tests and clean shutdown)."""
        with self._lock:
            self._shut_down()

    def _shut_down(self):
        # With self._lock held.  EOF on the alive pipe ends the server's
        # loop; then reap it, so no zombie is left.
        pid = self._forkserver_pid
        if pid is not None:
            os.close(self._forkserver_alive_fd)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self._forget()

    def _forget(self):
        # Our server is gone (its alive fd closed): its socket goes too.
        if self._forkserver_address is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._forkserver_address)
        self._no_server()

    def _after_fork_in_child(self):
        # A forked child does not share its parent's server: the server's
        # lifetime is the parent's, and only the parent may reap it or
        # remove its socket.
        self._lock = threading.Lock()
        if self._forkserver_alive_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._forkserver_alive_fd)
        self._no_server()

    def set_forkserver_preload(self, modules_names):
        """Name the modules the server imports before it forks children."""
        if not all(type(mod) is str for mod in modules_names):
            raise TypeError('module_names must be a list of strings')
        self._preload_modules = list(modules_names)

    def get_inherited_fds(self):
        """In a forkserver child: the fds its parent passed along (DupFd),
        in order; None elsewhere."""
        return self._inherited_fds

    def connect_to_new_process(self, fds):
        """Ask the server for a new child that receives the fds `fds`.

        Returns (sentinel, data_w): the socket on which the server reports
        the child's pid and then its exit code, and the write end of the
        pipe the child reads its preparation data and Process from (the
        child treats its EOF as its parent's death).  Both are the
        caller's to close."""
        if len(fds) + _FIXED_FDS >= MAXFDS_TO_SEND:
            raise ValueError('too many fds to pass to a forkserver child: %d'
                             % len(fds))
        self.ensure_running()
        server = self._current()
        try:
            return self._request(fds, server)
        except (ConnectionError, FileNotFoundError):
            # The server died since ensure_running() looked: start another.
            self._restart(server[0])
            return self._request(fds, self._current())

    def _current(self):
        # One consistent view, whatever other threads restart meanwhile.
        with self._lock:
            return (self._forkserver_pid, self._forkserver_address,
                    self._token)

    def _request(self, fds, server):
        _, address, token = server
        data_r, data_w = os.pipe()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Blocking whatever socket.setdefaulttimeout() says: the fd becomes
        # the child's sentinel and is read with os.read().
        sock.settimeout(None)
        try:
            tracker = _tracker()
            extra = tracker.getfd() if tracker is not None else None
            allfds = [data_r, data_r if extra is None else extra] + list(fds)
            sock.connect(address)
            header = _REQUEST.pack(_mpcore.FORKSERVER_MAGIC, len(allfds),
                                   token)
            _send_with_fds(sock, header, allfds)
            return sock.detach(), data_w
        except BaseException:
            os.close(data_w)
            raise
        finally:
            sock.close()
            os.close(data_r)

    def _restart(self, failed_pid):
        """Replace the server `failed_pid` that let a request down, unless
        another thread did so already."""
        with self._lock:
            if self._forkserver_pid != failed_pid:
                return
            if self._forkserver_pid is not None:
                try:
                    os.kill(self._forkserver_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._shut_down()
            self._start_unlocked()

    def ensure_running(self):
        """Start the server unless it is running; restart it if it died."""
        with self._lock:
            tracker = _tracker()
            if tracker is not None:
                tracker.ensure_running()
            if self._forkserver_pid is not None:
                if _not_yet_exited(self._forkserver_pid):
                    return
                # It died (killed?): drop what is left of it.
                os.close(self._forkserver_alive_fd)
                self._forget()
            self._start_unlocked()

    def _start_unlocked(self):
        address = os.path.join(util.get_temp_dir(),
                               'forkserver-' + os.urandom(8).hex())
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.settimeout(None)     # the C server loop expects blocking
        alive_r = alive_w = None
        try:
            listener.bind(address)
            os.chmod(address, 0o600)
            listener.listen(socket.SOMAXCONN)
            alive_r, alive_w = os.pipe()
            lfd = listener.fileno()
            args = self._command_line(lfd, alive_r)
            pid = util.spawnv_passfds(spawn.get_executable(), args,
                                      [lfd, alive_r])
        except BaseException:
            if alive_w is not None:
                os.close(alive_w)
            try:
                os.unlink(address)
            except OSError:
                pass
            raise
        finally:
            listener.close()
            if alive_r is not None:
                os.close(alive_r)
        token = os.urandom(_TOKEN_LEN)
        # Fewer than PIPE_BUF bytes into a fresh pipe: never blocks.
        os.write(alive_w, token)
        (self._forkserver_address, self._forkserver_alive_fd,
         self._forkserver_pid, self._token) = address, alive_w, pid, token

    def _command_line(self, listener_fd, alive_r):
        kwds = {}
        if '__main__' in self._preload_modules:
            data = spawn.get_preparation_data('ignore')
            kwds['sys_path'] = data['sys_path']
            if 'init_main_from_path' in data:
                kwds['main_path'] = data['init_main_from_path']
            elif 'init_main_from_name' in data:
                kwds['main_name'] = data['init_main_from_name']
        prog = 'from %s.forkserver import main; main(%d, %d, %r, **%r)' % (
            __package__, listener_fd, alive_r, self._preload_modules, kwds)
        from . import _alias
        if _alias.active():
            # Under `python -m multiprocessing_c` the server, and so every
            # child it forks, resolves `multiprocessing` to us.
            prog = ('import %s._alias as _a; _a.install(); %s'
                    % (__package__, prog))
        return ([spawn.get_executable()] + util._args_from_interpreter_flags()
                + ['-c', prog])


def _not_yet_exited(pid):
    # Reaps it if it has exited; a pid that is not our child counts as gone.
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == 0
    except ChildProcessError:
        return False


def _send_with_fds(sock, data, fds):
    # The header and the fds go in one message: the server reads them as
    # one request.
    socket.send_fds(sock, [data], fds)


# ------------------------------------------------------------ the server

def _read_exactly(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError('unexpected EOF')
        chunks.append(chunk)
        n -= len(chunk)
    return b''.join(chunks)


def main(listener_fd, alive_r, preload, main_path=None, sys_path=None,
         main_name=None):
    """Run the fork server (in the process ensure_running() started)."""
    try:
        token = _read_exactly(alive_r, _TOKEN_LEN)
    except EOFError:
        return      # the parent went away before we started
    _preload_package()
    if preload:
        _preload(preload, main_path, sys_path, main_name)
    util._close_stdin()
    # ^C in a terminal reaches the whole process group: the server lives
    # on (it ends with its program), its children get the default back.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fds = _mpcore.forkserver_serve(listener_fd, alive_r, token)
    if fds is None:
        os.close(listener_fd)
        os.close(alive_r)
        return
    _run_child(fds)


# Parts of this package that children use to unpickle what they are given
# (Connections, locks, queues, shared memory) or to exit: imported once
# here instead of in every child.
_PACKAGE_PRELOAD = ('reduction', 'connection', 'resource_tracker',
                    'synchronize', 'queues', 'heap', 'sharedctypes')


def _preload_package():
    import importlib
    import importlib.util
    for name in _PACKAGE_PRELOAD:
        fullname = __package__ + '.' + name
        if importlib.util.find_spec(fullname) is not None:
            importlib.import_module(fullname)


def _preload(preload, main_path, sys_path, main_name):
    if sys_path is not None:
        sys.path[:] = sys_path
    if '__main__' in preload and (main_path or main_name):
        me = process.current_process()
        me._inheriting = True
        try:
            spawn._import_parent_main(main_name, main_path)
        except Exception:
            # Each child prepares its main module again and reports the
            # error itself; the server keeps serving.
            pass
        finally:
            del me._inheriting
    for name in preload:
        if name == '__main__':
            continue
        try:
            __import__(name)
        except ImportError:
            pass


def _run_child(fds):
    # In a freshly forked child of the server; never returns.
    exitcode = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        util._forked_child_starts()
        data_fd, extra = fds[0], fds[1]
        if os.path.sameopenfile(data_fd, extra):
            os.close(extra)
        else:
            from . import resource_tracker
            resource_tracker._resource_tracker._fd = extra
        _forkserver._inherited_fds = fds[_FIXED_FDS:]
        # Forget the server's finalizers and reset its fork-aware state now,
        # before the Process object is unpickled: what unpickling registers
        # (a proxy's decref, an arena's unmap) belongs to this child.
        process.BaseProcess._after_fork()
        # Our copy of the data pipe reports the parent's death.
        parent_sentinel = os.dup(data_fd)
        exitcode = spawn._main(data_fd, parent_sentinel)
        util._forked_child_ends()
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        util._flush_std_streams()
        os._exit(exitcode)


# ------------------------------------------------------------ helpers

def read_signed(fd):
    """Read one signed 64-bit integer from `fd`; EOFError at EOF."""
    (number,) = SIGNED_STRUCT.unpack(_read_exactly(fd, SIGNED_STRUCT.size))
    return number


def write_signed(fd, n):
    """Write `n` as one signed 64-bit integer to `fd`."""
    pending = memoryview(SIGNED_STRUCT.pack(n))
    while pending:
        pending = pending[os.write(fd, pending):]


# The module's functions are the bound methods of this process's server.
_forkserver = ForkServer()
(ensure_running, get_inherited_fds, connect_to_new_process,
 set_forkserver_preload) = (
    _forkserver.ensure_running, _forkserver.get_inherited_fds,
    _forkserver.connect_to_new_process, _forkserver.set_forkserver_preload)

os.register_at_fork(after_in_child=_forkserver._after_fork_in_child)
