"""Benchmarks: multiprocessing_c side by side with the stdlib
``multiprocessing`` (and billiard, multiprocess, loky when installed).

Run ``python -m benchmarks --help``.  Each workload runs in a fresh
interpreter per implementation and repetition, interleaved, and imports
the implementation under test by name, so one piece of code measures
them all.  Nothing here imports an implementation at import time.
"""
