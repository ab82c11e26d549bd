"""Start processes with each start method and check what they did.

Run it unchanged under multiprocessing_c:
    python -m multiprocessing_c examples/hello_processes.py
"""
import multiprocessing
import os
import sys


def collatz_steps(n):
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def worker(start, stop):
    best = max(range(start, stop), key=collatz_steps)
    me = multiprocessing.current_process()
    print(f'{me.name} (pid {os.getpid()}, parent {multiprocessing.parent_process().pid}): '
          f'in [{start}, {stop}) {best} takes {collatz_steps(best)} steps', flush=True)
    # The exit code carries a small result back to the parent.
    sys.exit(collatz_steps(best) % 256)


if __name__ == '__main__':
    print('multiprocessing is', multiprocessing.__name__)
    for method in ('fork', 'spawn'):
        ctx = multiprocessing.get_context(method)
        procs = [ctx.Process(target=worker, args=(i * 50_000 + 1, (i + 1) * 50_000))
                 for i in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        print(f'{method}: exit codes {[p.exitcode for p in procs]}')
