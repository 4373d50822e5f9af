"""The GPU check (``scripts/gpu_check.sh``): its steps, its files and the device's limits.

Not benchmarks: ``pytest bench/`` collects nothing here. ``check`` (the CLI the script calls:
env, the plan, measure), ``timing`` (the measuring loop of the logits-in and fused-linear
steps), ``trl`` (the drop-in against TRL's own Triton kernel, and a profiler trace of one call),
``vocab_parallel`` (the vocabulary-parallel losses on one GPU), ``files`` (the files, the
limits, validation; no torch) and ``summary`` (summary.md from the files). ``trl_agreement``
is the standalone agreement check of the drop-in against TRL (``python -m
bench.gpu.trl_agreement OUT``).
"""
