"""Start a child as a fresh interpreter (fork + exec): it receives its
preparation data and the pickled Process object over a pipe."""
import os
import struct

from . import context
from . import popen_fork
from . import reduction
from . import spawn
from . import util

__all__ = ['Popen']

_HEADER = struct.Struct('>Q')


class Popen(popen_fork.Popen):
    method = 'spawn'

    def __init__(self, process_obj):
        self._fds = []
        super().__init__(process_obj)

    def duplicate_for_child(self, fd):
        # The fd is kept open across exec under the same number.
        self._fds.append(fd)
        return fd

    def _launch(self, process_obj):
        prep_data = spawn.get_preparation_data(process_obj._name)
        payload = _pickle_for_child(self, prep_data, process_obj)
        # data pipe: the child reads its length-prefixed payload, then keeps
        # the read end as parent_sentinel (EOF once we are gone).
        data_r, data_w = os.pipe()
        sentinel_r, sentinel_w = os.pipe()
        try:
            cmd = spawn.get_command_line(**self._child_kwargs(data_r))
            self._fds += [data_r, sentinel_w]
            self.pid = util.spawnv_passfds(spawn.get_executable(), cmd,
                                           self._fds)
        except BaseException:
            util.close_fds(data_r, data_w, sentinel_r, sentinel_w)
            raise
        os.close(data_r)
        os.close(sentinel_w)
        self.sentinel = sentinel_r
        self.finalizer = util.Finalize(self, util.close_fds,
                                       (sentinel_r, data_w))
        with open(data_w, 'wb', closefd=False) as f:
            f.write(_HEADER.pack(len(payload)))
            f.write(payload)

    def _child_kwargs(self, data_r):
        # The child shares this program's resource tracker: it gets the
        # tracker's pipe under the same fd number (spawn_main installs it).
        from . import resource_tracker
        tracker_fd = resource_tracker.getfd()
        self._fds.append(tracker_fd)
        return {'pipe_handle': data_r, 'parent_pid': os.getpid(),
                'tracker_fd': tracker_fd}


def _pickle_for_child(popen, prep_data, process_obj):
    # Objects that must travel by fd (DupFd) ask the spawning Popen.
    import io
    buf = io.BytesIO()
    context.set_spawning_popen(popen)
    try:
        reduction.dump(prep_data, buf)
        reduction.dump(process_obj, buf)
    finally:
        context.set_spawning_popen(None)
    return buf.getbuffer()
