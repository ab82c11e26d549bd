"""The C floor: small C programs (floor/*.c) doing the bare operation a
workload wraps, built with the system C compiler into a temporary
directory at each run, never committed.  Each prints ``ns_per_op X``."""
import os
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, 'floor')

# Iterations per program run: enough for a stable figure, a fraction of a
# second each.
ITERATIONS = {
    'pipe_roundtrip': 20000,
    'pipe_stream': 100000,
    'sem_pingpong': 20000,
    'sem_uncontended': 2000000,
    'fork_wait': 300,
    'spawn_true': 100,
    'shm_create_attach': 2000,
}
# The 1 MiB round trip moves more data per op.
BIG = 1 << 16


def programs():
    return sorted(f[:-2] for f in os.listdir(SRC) if f.endswith('.c'))


class Floor:
    """Builds the floor programs on first use and runs them."""

    def __init__(self, cc=None):
        self.cc = cc or os.environ.get('CC') or shutil.which('cc') or shutil.which('gcc')
        self.dir = None
        self.built = {}
        self.errors = {}

    def build(self, names=None):
        """Compile programs `names` (default: all); returns the names
        that failed."""
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix='mpc-bench-floor-')
        for name in programs() if names is None else sorted(set(names)):
            if name in self.built or name in self.errors:
                continue
            if not self.cc:
                self.errors[name] = 'no C compiler (cc) found'
                continue
            out = os.path.join(self.dir, name)
            cmd = [self.cc, '-O2', '-std=c11', '-D_GNU_SOURCE', '-pthread',
                   '-o', out, os.path.join(SRC, name + '.c'), '-lrt']
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                self.errors[name] = (r.stderr.strip().splitlines() or ['cc failed'])[-1]
            else:
                self.built[name] = out
        return sorted(self.errors)

    def run(self, name, args, timeout=60):
        """Seconds per op of program `name` with extra `args`, or None."""
        if name not in self.built:
            return None
        iters = ITERATIONS.get(name, 1000)
        if args and isinstance(args[0], int) and args[0] >= BIG:
            iters = max(50, iters * 16 // (args[0] // 1024))
        cmd = [self.built[name], str(iters)] + [str(a) for a in args]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for line in r.stdout.splitlines():
            if line.startswith('ns_per_op '):
                return float(line.split()[1]) * 1e-9
        return None

    def cleanup(self):
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
