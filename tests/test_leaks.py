"""Nothing leaks: each kind of object, created and released many times in
a fresh interpreter, leaves no file descriptor, shared-memory segment,
named semaphore or child process behind, and memory stays flat.

Each check runs in its own interpreter so that other tests' lazily
started helpers (resource tracker, fork server, resource sharer) and the
machine's other users of /dev/shm do not blur the count.
"""
import pytest

from testutil import run_python

PRELUDE = '''
import gc, os, sys, resource
import multiprocessing_c as mp

def fds():
    return len(os.listdir('/proc/self/fd'))

# Names of the segments and semaphores a body creates: /dev/shm is shared
# with every other program on the machine, so only our own names count.
CREATED = []

def leftover_names():
    return [n for n in CREATED if os.path.exists('/dev/shm/' + n.lstrip('/'))
            or os.path.exists('/dev/shm/sem.' + n.lstrip('/'))]

def children():
    me = str(os.getpid())
    out = []
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            try:
                with open('/proc/%s/stat' % pid) as f:
                    if f.read().rsplit(')', 1)[1].split()[1] == me:
                        out.append(pid)
            except OSError:
                pass
    return out

def rss_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def check(body, rounds, warmup=20):
    for _ in range(warmup):
        body()
    gc.collect()
    del CREATED[:]
    f0, k0, r0 = fds(), children(), rss_kb()
    for _ in range(rounds):
        body()
    gc.collect()
    f1, k1, r1 = fds(), children(), rss_kb()
    print('fds', f0, f1)
    print('shm', sorted(leftover_names()))
    print('children', sorted(set(k1) - set(k0)))
    print('rss_growth_kb', r1 - r0)
'''

CASES = {
    'pipe': '''
def body():
    a, b = mp.Pipe()
    a.send_bytes(b'x' * 100); b.recv_bytes()
    a.close(); b.close()
    r, w = mp.Pipe(duplex=False)
    w.send({'k': 1}); r.recv()
    r.close(); w.close()
check(body, 2000)
''',
    'listener_client': '''
from multiprocessing_c.connection import Listener, Client
import threading
def body():
    with Listener(('127.0.0.1', 0), authkey=b'k') as l:
        t = threading.Thread(target=lambda: Client(l.address, authkey=b'k').close())
        t.start()
        c = l.accept(); c.close(); t.join()
check(body, 200)
''',
    'shared_memory': '''
from multiprocessing_c import shared_memory
def body():
    s = shared_memory.SharedMemory(create=True, size=4096)
    CREATED.append(s.name)
    t = shared_memory.SharedMemory(s.name)
    t.buf[0] = 7
    t.close(); s.close(); s.unlink()
check(body, 500)
''',
    'raw_arrays': '''
def body():
    a = mp.RawArray('d', 100000)
    a[5] = 1.5
    v = mp.RawValue('i', 3)
    del a, v
check(body, 500)
''',
    'manager_proxies': '''
if __name__ == '__main__':
    m = mp.get_context('fork').Manager()
    d = m.dict()
    def body():
        inner = m.list([1, 2])
        d['k'] = inner
        del inner
        assert d['k'][1] == 2
        for _ in iter(d):
            pass
        q = m.Queue()
        q.put(d['k'])
        q.get()
    check(body, 150)
    del d
    assert m._number_of_objects() == 0, m._debug_info()
    m.shutdown()
''',
    'managers': '''
if __name__ == '__main__':
    def body():
        with mp.get_context('fork').Manager() as m:
            m.list([1]).append(2)
    check(body, 10, warmup=2)
''',
    'processes': '''
def f():
    pass
def body():
    for m in ('fork', 'spawn'):
        p = mp.get_context(m).Process(target=f)
        p.start(); p.join(); p.close()
if __name__ == '__main__':
    check(body, 15, warmup=2)
''',
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_no_leak(case, tmp_path):
    script = tmp_path / ('leak_%s.py' % case)
    script.write_text(PRELUDE + CASES[case])
    r = run_python([str(script)], timeout=110)
    assert r.returncode == 0, r.stderr
    out = dict(line.split(' ', 1) for line in r.stdout.strip().splitlines())
    f0, f1 = map(int, out['fds'].split())
    assert f1 <= f0, 'fds grew from %d to %d' % (f0, f1)
    assert out['shm'] == '[]', 'left in /dev/shm: ' + out['shm']
    assert out['children'] == '[]', 'children left: ' + out['children']
    # ru_maxrss is a high-water mark: a leak of even 1 KiB per round would
    # show as megabytes here.
    assert int(out['rss_growth_kb']) < 4096, out['rss_growth_kb']
