"""python -m multiprocessing_c [--pool-backend NAME[:ADDRESS]] [-m module | -c code | script] [args...]

Run an unchanged program with `multiprocessing` resolved to
multiprocessing_c in it and in every child process it starts.  With
--pool-backend ray or dask (optionally :ADDRESS of the cluster), every
multiprocessing.Pool it creates runs on that engine: the option sets
MULTIPROCESSING_C_POOL_BACKEND, which has the same meaning.
"""
import os
import runpy
import sys
import types

USAGE = __doc__.strip().splitlines()[0]


def main(argv=None):
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ('-h', '--help'):
        print('usage: python ' + USAGE.split('python ', 1)[1], file=sys.stderr)
        return 0 if args else 2
    while args and args[0].startswith('--pool-backend'):
        opt = args.pop(0)
        spec = opt.partition('=')[2] if '=' in opt else (
            args.pop(0) if args else '')
        from multiprocessing_c import backends
        try:
            backends.check(spec)
        except (ValueError, ImportError) as e:
            print('error: --pool-backend: %s' % e, file=sys.stderr)
            return 2
        os.environ[backends.ENV_VAR] = spec
    if not args:
        print('error: no program to run', file=sys.stderr)
        return 2
    from multiprocessing_c import _alias
    _alias.install()
    if args[0] == '-m':
        if len(args) < 2:
            print('error: -m needs a module name', file=sys.stderr)
            return 2
        sys.argv = [args[1]] + args[2:]
        runpy.run_module(args[1], run_name='__main__', alter_sys=True)
    elif args[0] == '-c':
        if len(args) < 2:
            print('error: -c needs a program', file=sys.stderr)
            return 2
        sys.argv = ['-c'] + args[2:]
        main_mod = types.ModuleType('__main__')
        sys.modules['__main__'] = main_mod
        exec(compile(args[1], '<string>', 'exec'), main_mod.__dict__)
    else:
        script = args[0]
        sys.argv = args
        # As `python script.py` would: the script's directory comes first.
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        runpy.run_path(script, run_name='__main__')
    return 0


if __name__ == '__main__':
    sys.exit(main())
