"""Issue 27: a TRL ``DistillationTrainer`` step with TRL's loss and with
``cord_kernels.integrations.trl.enable()``, side by side in one run (``bench/trl_step.py``):
step time, the loss's forward and backward, peak RSS over the step.

Default: V = 151,936, H = 896 (a Qwen2-0.5B head on a one-layer backbone), 8 x 128 = 1024
completion tokens, 2 steps per backend (the first a warm-up).
``CORD_BENCH_QUICK=1``: V = 4,099, H = 128, 64 tokens. Writes
``bench/results/trl_step/README_PERF.md`` and ``results.json``; ``docs/performance.md`` quotes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import pytest

from bench.config import QWEN2_0_5B_HIDDEN, QWEN2_VOCAB
from bench.harness import CONFIG

QUICK = os.environ.get("CORD_BENCH_QUICK", "0") == "1"
SHAPE = (dict(vocab=4099, hidden=128, completion=32, batch=2) if QUICK else
         dict(vocab=QWEN2_VOCAB, hidden=QWEN2_0_5B_HIDDEN, completion=128, batch=8))


def test_trl_distillation_step():
    pytest.importorskip("trl")
    if CONFIG.on_cuda:
        pytest.skip("the trainer step is measured on the CPU here; the GPU case belongs to the "
                    "GPU check")
    from bench.trl_step import markdown, measure

    runs = measure(**SHAPE, steps=2)
    table = markdown(runs, **SHAPE)
    print("\n" + table)
    out = CONFIG.out_dir / "trl_step"
    out.mkdir(parents=True, exist_ok=True)
    (out / "README_PERF.md").write_text(
        "# TRL DistillationTrainer step: TRL's loss vs `enable()`\n\n"
        "`pytest bench/test_trl_step.py` (or `python -m bench.trl_step`)\n\n" + table + "\n")
    (out / "results.json").write_text(json.dumps(
        {"shape": SHAPE, "runs": {k: asdict(v) for k, v in runs.items()}}, indent=1) + "\n")
    trl, ours = runs["trl"], runs["cord_kernels"]
    # The same training: the logged losses agree.
    for a, b in zip(trl.losses, ours.losses):
        assert abs(a - b) <= 2e-4 * abs(a), (a, b)
