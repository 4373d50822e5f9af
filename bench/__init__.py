"""Benchmarks of cord_kernels against naive torch, torch.compile, Liger-Kernel and TRL.

Run with ``pytest bench/`` (``CORD_BENCH_FULL=1`` for the full sweep). Results land in
``bench/results/``: ``results.json``, ``README_PERF.md`` (the README's Performance table) and
plots of time and memory against the number of tokens.
"""
