"""What a spawned child is prepared with (docs: "spawn" start method and
"Programming guidelines": safe importing of the main module)."""
import os
import sys

from testutil import (check_child_preparation, check_main_run_with_dash_m,
                      check_missing_main_guard, check_no_stray_fds)


def test_child_gets_sys_path_cwd_argv_and_mp_main(tmp_path):
    check_child_preparation(tmp_path, 'spawn')


def test_main_run_with_dash_m(tmp_path):
    check_main_run_with_dash_m(tmp_path, 'spawn')


def test_missing_main_guard_gives_clear_runtime_error(tmp_path):
    check_missing_main_guard(tmp_path, 'spawn')


def test_spawned_child_inherits_no_stray_fds(tmp_path):
    # stdio, the parent-liveness fd, the sentinel's write end, the resource
    # tracker's pipe, the output file and the fd the listing itself opens:
    # nothing beyond a handful.
    check_no_stray_fds(tmp_path, 'spawn', most=8)


def test_spawn_main_refuses_outside_a_child():
    from multiprocessing_c import spawn
    import pytest
    with pytest.raises(RuntimeError):
        spawn.spawn_main(0)


def test_command_line_names_our_package():
    from multiprocessing_c import spawn
    cmd = spawn.get_command_line(pipe_handle=5)
    assert cmd[0] == spawn.get_executable()
    assert cmd[-1] == '--multiprocessing-fork'
    assert 'from multiprocessing_c.spawn import spawn_main' in cmd[-2]
    assert 'spawn_main(pipe_handle=5)' in cmd[-2]
    assert spawn.is_forking(['python', '--multiprocessing-fork'])
    assert not spawn.is_forking(sys.argv)
    assert os.path.exists(spawn.get_executable())
