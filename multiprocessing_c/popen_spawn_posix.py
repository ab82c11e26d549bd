"""Start a child as a fresh interpreter (fork + exec): it receives its
preparation data and the pickled Process object over a pipe."""
import io
import os
import struct

from . import context
from . import popen_fork
from . import reduction
from . import spawn
from . import util

__all__ = ['Popen']

# The payload a new child reads first is length-prefixed (spawn._main), so
# the child never reads past it while we keep our end of the pipe open.
_LENGTH = struct.Struct('>Q')


def _child_payload(popen, process_obj):
    """The bytes that make a new child: the length, the preparation data,
    then the Process object.  They are pickled while `popen` is the
    spawning Popen, which objects travelling by fd (DupFd) ask for."""
    out = io.BytesIO()
    out.write(bytes(_LENGTH.size))
    context.set_spawning_popen(popen)
    try:
        for obj in (spawn.get_preparation_data(process_obj._name),
                    process_obj):
            reduction.dump(obj, out)
    finally:
        context.set_spawning_popen(None)
    payload = out.getbuffer()
    _LENGTH.pack_into(payload, 0, len(payload) - _LENGTH.size)
    return payload


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Popen(popen_fork.Popen):
    method = 'spawn'

    def _launch(self, process_obj):
        self._fds = []
        payload = _child_payload(self, process_obj)
        # The child reads its payload from theirs[0], then keeps that fd as
        # its parent_sentinel (EOF once we are gone); ours[0] is our
        # sentinel, as with fork.
        ours, theirs = popen_fork._crossed_pipes()
        try:
            self.pid = self._exec(theirs)
        except BaseException:
            util.close_fds(*ours)
            raise
        finally:
            util.close_fds(*theirs)
        self.sentinel = ours[0]
        self.finalizer = util.Finalize(self, util.close_fds, ours)
        _write_all(ours[1], payload)

    def _exec(self, theirs):
        # The child shares this program's resource tracker: it gets the
        # tracker's pipe under the same fd number (spawn_main installs it).
        from . import resource_tracker
        tracker_fd = resource_tracker.getfd()
        argv = spawn.get_command_line(pipe_handle=theirs[0],
                                      parent_pid=os.getpid(),
                                      tracker_fd=tracker_fd)
        keep = self._fds + list(theirs) + [tracker_fd]
        return util.spawnv_passfds(spawn.get_executable(), argv, keep)

    def duplicate_for_child(self, fd):
        # The fd is kept open across exec under the same number.
        self._fds.append(fd)
        return fd
