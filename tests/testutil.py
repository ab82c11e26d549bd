"""Helpers for tests that run scripts in a fresh interpreter."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def child_env(**extra):
    """The environment for a fresh interpreter that imports this checkout."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [ROOT, TESTS] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    env.update(extra)
    return env


def run_python(args, cwd=None, timeout=60, **extra_env):
    """Run `python args...` and return the CompletedProcess (text mode)."""
    return subprocess.run([sys.executable] + list(args), cwd=cwd,
                          env=child_env(**extra_env), capture_output=True,
                          text=True, timeout=timeout)


def write_script(path, source):
    path.write_text(textwrap.dedent(source))
    return str(path)
