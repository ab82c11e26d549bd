"""Loaded by every interpreter of a conformance run (PYTHONPATH): under
MPC_CONFORMANCE=alias, `multiprocessing` and `_multiprocessing` resolve to
multiprocessing_c, and a stdlib submodule we lack is an ImportError, so
nothing can pass because the stdlib did the work."""
import os

if os.environ.get('MPC_CONFORMANCE') == 'alias':
    import multiprocessing_c._alias
    multiprocessing_c._alias.install()
