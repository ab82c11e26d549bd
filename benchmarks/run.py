"""Run the benchmarks and print the table.

    python -m benchmarks [--quick] [--only NAME[,NAME]] [--json FILE] [--list]
    python benchmarks/run.py ...

Each repetition of each workload runs in a fresh interpreter per
implementation, interleaved (A, B, A, B ...), so drift of the machine
hits every implementation alike.  The table shows the median time per
operation, the C floor (the bare operation in C, where one applies) and
multiprocessing_c's speed-up over the stdlib (stdlib median / ours, so
above 1 means faster).  Nothing here is a pass/fail check.
"""
import argparse
import datetime
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ''):
    # Run as a script: make the package and the checkout importable.
    sys.path.insert(0, ROOT)

from benchmarks import floor as floor_mod  # noqa: E402
from benchmarks import workloads  # noqa: E402
from benchmarks._worker import MARKER  # noqa: E402

PRIMARY = 'multiprocessing_c'
BASELINE = 'multiprocessing'
PEERS = ('billiard', 'multiprocess')
UNITS = {'ns': 1e-9, 'us': 1e-6, 'ms': 1e-3, 's': 1.0}


def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        'nproc': os.cpu_count(),
        'cpu': cpu,
        'python': '%s %s' % (platform.python_implementation(),
                             platform.python_version()),
        'kernel': platform.system() + ' ' + platform.release(),
        'date': datetime.datetime.now(datetime.timezone.utc)
                .strftime('%Y-%m-%d %H:%M UTC'),
    }


def child_env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [ROOT] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    return env


def run_worker(impl, name, n, timeout):
    """One repetition in a fresh interpreter; returns the result dict."""
    cmd = [sys.executable, '-m', 'benchmarks._worker', impl, name, str(n)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    killed = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # The worker leads its own session: take its helpers down with it.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        killed = True
    wall = time.monotonic() - t0
    for line in reversed(out.splitlines()):
        if line.startswith(MARKER):
            result = json.loads(line[len(MARKER):])
            result['wall'] = round(wall, 3)
            if killed:
                # Measured, but then hung on its way out (say, joining
                # a helper at exit): keep the figure, tell of the hang.
                result['note'] = 'worker hung at exit and was killed after %.0f s' % timeout
            return result
    if killed:
        return {'status': 'timeout', 'wall': round(wall, 3),
                'reason': 'no result after %.0f s' % timeout}
    tail = (err.strip().splitlines() or ['no output'])[-1]
    return {'status': 'error', 'wall': round(wall, 3),
            'reason': 'worker exited with %s: %s' % (proc.returncode, tail)}


def byte_compile():
    """Write the bytecode of the checkout's packages, as installing them
    would.  The stdlib runs from its precompiled .pyc files; a checkout
    run with PYTHONDONTWRITEBYTECODE (or -B) compiles our sources again in
    every fresh interpreter, and every spawned child is one, so the start
    workloads would time the compiler.  Stale .pyc files are harmless:
    Python checks them against the source."""
    import compileall
    for pkg in (PRIMARY, 'benchmarks'):
        compileall.compile_dir(os.path.join(ROOT, pkg), quiet=1)


def importable(impl):
    """None if `impl` imports in a fresh interpreter, else why not."""
    r = subprocess.run([sys.executable, '-c', 'import ' + impl], cwd=ROOT,
                       env=child_env(), capture_output=True, text=True)
    if r.returncode == 0:
        return None
    return (r.stderr.strip().splitlines() or ['import failed'])[-1]


def fmt(value):
    if value is None:
        return '-'
    if value >= 100:
        return '%.0f' % value
    if value >= 10:
        return '%.1f' % value
    if value >= 1:
        return '%.2f' % value
    return '%.3f' % value


def median_of(records, impl, unit):
    """Median per-op time of the ok runs of `impl`, in `unit`, and the
    final non-ok status if there is no ok run."""
    oks = [r['seconds'] / r['n'] for r in records
           if r['impl'] == impl and r['status'] == 'ok']
    if oks:
        return statistics.median(oks) / UNITS[unit], None
    bad = [r for r in records if r['impl'] == impl]
    return None, (bad[-1] if bad else None)


def render(headers, rows):
    """Plain-text table; the last column is left unpadded, as it may
    carry a reason."""
    table = [headers] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]

    def line(cells):
        out = ([cells[0].ljust(widths[0])]
               + [c.rjust(w) for c, w in zip(cells[1:-1], widths[1:-1])]
               + [cells[-1]])
        return '  '.join(out).rstrip()
    sep = ['-' * w for w in widths[:-1]] + ['-' * min(widths[-1], 10)]
    return '\n'.join([line(headers), '  '.join(sep)] + [line(r) for r in rows])


def summarize(selected, impls, records, floor_results):
    """The table's text, the notes under it, and {workload: {impl:
    median or None}}."""
    rows, notes, all_medians = [], [], {}
    has_floor = any(floor_results.values())
    for w in selected:
        recs = [r for r in records if r['workload'] == w.name]
        row = [w.name, w.unit]
        medians = {}
        for impl in impls:
            med, bad = median_of(recs, impl, w.unit)
            medians[impl] = med
            if med is not None:
                row.append(fmt(med))
                for r in recs:
                    if r['impl'] == impl and (r['status'] != 'ok' or r.get('note')):
                        notes.append('%s: %s repetition %d: %s' % (
                            w.name, impl, r['rep'],
                            r.get('note') or '%s (%s)' % (r['status'], r.get('reason', ''))))
            else:
                status = bad['status'] if bad else 'skipped'
                row.append({'na': 'n/a'}.get(status, status))
                if bad and (impl != PRIMARY or BASELINE not in impls):
                    # The primary's reason shows in the speed-up column.
                    label = 'n/a' if status == 'na' else status
                    notes.append('%s: %s %s (%s)' % (w.name, impl, label,
                                                     bad.get('reason', '')))
        if has_floor:
            fl = floor_results.get(w.name)
            # The best run: the floor is the machine's limit, and noise
            # from elsewhere only ever adds time.
            row.append(fmt(min(fl) / UNITS[w.unit]) if fl else '-')
        if PRIMARY in impls and BASELINE in impls:
            ours, theirs = medians[PRIMARY], medians[BASELINE]
            if ours is not None and theirs is not None:
                row.append('%.2fx' % (theirs / ours))
            else:
                why = [r for r in recs if r['status'] != 'ok'
                       and r['impl'] == PRIMARY]
                if why:
                    st = why[-1]['status']
                    row.append('%s (%s)' % ('n/a' if st == 'na' else st,
                                            why[-1].get('reason', '')))
                else:
                    row.append('-')
        rows.append(row)
        all_medians[w.name] = medians
    headers = (['workload', 'unit'] + impls + (['C floor'] if has_floor else [])
               + (['speed-up'] if PRIMARY in impls and BASELINE in impls else []))
    return render(headers, rows), notes, all_medians


def plot(path, selected, impls, medians, title):
    """Write a PNG of every implementation's speed-up over the stdlib per
    workload; returns why not (matplotlib missing, no data) or None."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return 'matplotlib is not installed'
    others = [i for i in impls if i != BASELINE]
    names = [w.name for w in selected
             if medians[w.name].get(BASELINE) is not None
             and any(medians[w.name].get(i) is not None for i in others)]
    if BASELINE not in impls or not others or not names:
        return 'no workload has both %s and another implementation' % BASELINE
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) * len(others) + 1.5))
    height = 0.8 / len(others)
    lo, hi = 0.5, 2.0
    for k, impl in enumerate(others):
        ys, xs = [], []
        for j, name in enumerate(names):
            ours = medians[name].get(impl)
            if ours is not None:
                ys.append(j + k * height)
                xs.append(medians[name][BASELINE] / ours)
        # Bars grow from 1 (as fast as the stdlib) to the ratio.
        ax.barh(ys, [x - 1 for x in xs], left=1, height=height, label=impl)
        for y, x in zip(ys, xs):
            ax.annotate('%.2fx' % x, (x, y), va='center', fontsize=7,
                        xytext=(3 if x >= 1 else -3, 0),
                        textcoords='offset points',
                        ha='left' if x >= 1 else 'right')
        lo, hi = min([lo] + xs), max([hi] + xs)
    ax.axvline(1.0, color='black', linewidth=0.8)
    ax.set_xscale('log')
    ax.set_xlim(lo / 1.6, hi * 1.6)
    ticks = [2.0 ** e for e in range(-8, 9) if lo / 1.6 <= 2.0 ** e <= hi * 1.6]
    ax.set_xticks(ticks)
    ax.set_xticklabels(['%gx' % t for t in ticks])
    ax.minorticks_off()
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(names))])
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel('speed-up over %s (median time ratio, log scale; '
                  'above 1 is faster)' % BASELINE)
    ax.set_title(title, fontsize=9)
    ax.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def list_workloads():
    for w in workloads.WORKLOADS:
        fl = (' [C floor: %s]' % w.floor[0]) if w.floor else ''
        print('%-20s %-3s needs %-26s %s%s' % (
            w.name, w.unit, ','.join(w.needs), w.what, fl))


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog='python -m benchmarks',
        description='Benchmarks of multiprocessing_c side by side with the '
                    'stdlib multiprocessing (and billiard, multiprocess when '
                    'installed).')
    ap.add_argument('--quick', action='store_true',
                    help='fewer operations and repetitions (< 2 minutes)')
    ap.add_argument('--only', metavar='NAME[,NAME]',
                    help='run only these workloads (see --list)')
    ap.add_argument('--json', metavar='FILE',
                    help='write every repetition and the machine to FILE')
    ap.add_argument('--plot', metavar='FILE.png',
                    help='draw the speed-ups over the stdlib as a PNG '
                         '(needs matplotlib)')
    ap.add_argument('--list', action='store_true',
                    help='list the workloads and exit')
    ap.add_argument('--impls', metavar='MOD[,MOD]',
                    help='implementations to compare, by module name '
                         '(default: multiprocessing_c, multiprocessing and '
                         'the installed peers)')
    ap.add_argument('--reps', type=int,
                    help='repetitions per implementation (default 3 quick, 5 full)')
    ap.add_argument('--from-source', action='store_true',
                    help='do not byte-compile the checkout first: with '
                         'PYTHONDONTWRITEBYTECODE, multiprocessing_c is then '
                         'compiled in every interpreter it starts')
    ap.add_argument('--no-floor', action='store_true',
                    help='do not build and run the C floor programs')
    ap.add_argument('--timeout', type=float,
                    help='seconds one repetition may take (default 20 quick, 60 full)')
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        list_workloads()
        return 0
    selected = workloads.WORKLOADS
    if args.only:
        wanted = [s.strip() for s in args.only.split(',') if s.strip()]
        unknown = [s for s in wanted if s not in workloads.names()]
        if unknown:
            print('unknown workload(s): %s; see --list' % ', '.join(unknown),
                  file=sys.stderr)
            return 2
        selected = [workloads.get(s) for s in wanted]
    if args.impls:
        impls = [s.strip() for s in args.impls.split(',') if s.strip()]
        peers = []
    else:
        impls = [PRIMARY, BASELINE]
        peers = [p for p in PEERS if importlib.util.find_spec(p)]
    if not args.from_source:
        byte_compile()
    for impl in impls:
        why = importable(impl)
        if why:
            hint = (' (build it first: python setup.py build_ext --inplace)'
                    if impl == PRIMARY else '')
            print('cannot import %s: %s%s' % (impl, why, hint), file=sys.stderr)
            return 2
    for peer in peers:
        # A peer found but broken is left out, not a reason to stop.
        why = importable(peer)
        if why:
            print('leaving out %s: %s' % (peer, why), file=sys.stderr)
        else:
            impls.append(peer)
    reps = args.reps or (3 if args.quick else 5)
    timeout = args.timeout or (20 if args.quick else 60)
    info = machine_info()

    floor = None if args.no_floor else floor_mod.Floor()
    if floor:
        for name in floor.build([w.floor[0] for w in selected if w.floor]):
            print('C floor %s not built: %s' % (name, floor.errors[name]),
                  file=sys.stderr)

    print('# %s: %s, %s CPUs, %s, %s' % ('quick' if args.quick else 'full',
          info['cpu'], info['nproc'], info['python'], info['date']),
          file=sys.stderr, flush=True)
    records, floor_runs, floor_cache, floor_results = [], [], {}, {}
    started = time.monotonic()
    try:
        for i, w in enumerate(selected, 1):
            n = w.n(args.quick)
            done = set()    # implementations whose first run was not ok
            for rep in range(reps):
                for impl in impls:
                    if impl in done:
                        continue
                    res = run_worker(impl, w.name, n, timeout)
                    res.update(workload=w.name, impl=impl, rep=rep)
                    records.append(res)
                    if res['status'] != 'ok':
                        done.add(impl)
            if floor and w.floor:
                key = (w.floor[0], tuple(w.floor[1]))
                if key not in floor_cache:
                    floor_cache[key] = [s for s in (floor.run(*key[:1], list(key[1]))
                                                    for _ in range(reps))
                                        if s is not None]
                    floor_runs.extend({'program': key[0], 'args': list(key[1]),
                                       'seconds_per_op': s}
                                      for s in floor_cache[key])
                floor_results[w.name] = floor_cache[key]
            bits = []
            for impl in impls:
                med, bad = median_of([r for r in records if r['workload'] == w.name],
                                     impl, w.unit)
                bits.append('%s %s' % (impl, fmt(med) + ' ' + w.unit if med is not None
                                       else (bad or {}).get('status', '-')))
            print('[%d/%d] %s: %s' % (i, len(selected), w.name, ', '.join(bits)),
                  file=sys.stderr, flush=True)
    finally:
        if floor:
            floor.cleanup()
    elapsed = time.monotonic() - started

    table, notes, medians = summarize(selected, impls, records, floor_results)
    print('%s run, %d repetition%s, medians per operation; machine: %s CPUs, '
          '%s, %s, %s' % ('quick' if args.quick else 'full', reps,
                          '' if reps == 1 else 's', info['nproc'],
                      info['cpu'], info['python'], info['date']))
    print()
    print(table)
    print()
    if PRIMARY in impls and BASELINE in impls:
        print('speed-up = %s median / %s median (above 1: %s is faster)'
              % (BASELINE, PRIMARY, PRIMARY))
    if floor and floor_results:
        print('C floor = the bare operation in C on this machine, best of %d '
              '(benchmarks/floor/*.c)' % reps)
    if notes:
        print('notes:')
        for note in notes:
            print('  ' + note)
    print('took %.0f s' % elapsed)
    if args.plot:
        why = plot(args.plot, selected, impls, medians,
                   '%s CPUs, %s, %s, %s' % (info['nproc'], info['cpu'],
                                            info['python'], info['date']))
        print('plot %s' % ('written to ' + args.plot if why is None
                           else 'not written: ' + why), file=sys.stderr)

    if args.json:
        data = {
            'machine': info, 'quick': args.quick, 'reps': reps, 'impls': impls,
            'elapsed': elapsed,
            'workloads': [{'name': w.name, 'unit': w.unit, 'n': w.n(args.quick),
                           'needs': list(w.needs), 'what': w.what,
                           'floor': list(w.floor[:1]) + [list(w.floor[1])]
                           if w.floor else None}
                          for w in selected],
            'runs': records,
            'floor_runs': floor_runs,
            'table': table,
        }
        with open(args.json, 'w') as f:
            json.dump(data, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
