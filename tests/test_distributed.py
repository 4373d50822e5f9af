"""Two CPU processes (gloo, ``accelerate launch``) == one process with the same global batch.

``ACCELERATE_USE_CPU=true accelerate launch --config_file examples/accelerate/cpu_2proc.yaml``
starts two torchrun workers that form a gloo group on the CPU. Each step accumulates 3
micro-batches and the second one crosses an epoch boundary.

Rollouts are greedy and every prompt has the same length (same padding in any batch), so both
layouts score the same tokens; per-sequence-mean losses and DDP's gradient averaging then give
the same loss and the same update.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import final_weights, launch_cpu_train, logged, write_paired_dataset

from cord.config import CordConfig
from cord.models.tiny import build_tiny_qwen2_audio
from cord.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = [
    "model=tiny", "objective=cord", "cord_seq_weight=0", "judge=none", "temperature=0",
    "max_completion_length=6", "max_steps=2", "learning_rate=1e-3", "report_to=none",
    "logging_steps=1",
    # 3 micro-batches a step: step 2 spans the epoch boundary (8 prompts, 6 a step).
    "gradient_accumulation_steps=3",
    "save_steps=0", "disable_tqdm=true", "seed=0",
]


def test_two_processes_match_one(tmp_path):
    data = write_paired_dataset(tmp_path)
    two = tmp_path / "two"
    proc = launch_cpu_train(ROOT, tmp_path, [f"dataset={data}", f"output_dir={two}",
                                             "per_device_train_batch_size=1", *OPTIONS])
    assert proc.returncode == 0, proc.output

    torch.set_num_threads(1)
    one = tmp_path / "one"
    config = CordConfig.from_yaml(None, [f"dataset={data}", f"output_dir={one}",
                                         "per_device_train_batch_size=2", *OPTIONS])
    train(config)

    l1, l2 = logged(one), logged(two)
    assert len(l1) == len(l2) == 2
    assert l1 == pytest.approx(l2, rel=1e-3)  # small KLs: last-bit differences show
    # Greedy rollouts: the same completions, counted over both processes, cumulatively.
    assert logged(one, "generated_tokens") == logged(two, "generated_tokens")
    w1, w2 = final_weights(one), final_weights(two)
    assert w1.keys() == w2.keys()
    for name in w1:
        # Adam's update is ~lr * sign(g) per step: a tenth of lr bounds last-bit differences.
        torch.testing.assert_close(w1[name], w2[name], rtol=0, atol=2e-4, msg=name)
    # Both runs trained (the comparison is not between two untouched models).
    w0, _ = build_tiny_qwen2_audio(seed=0)
    init = w0.lm_head.weight.detach()
    head = next(k for k in w1 if k.endswith("lm_head.weight"))
    assert (w1[head] - init).abs().max() > 1e-3
    assert "on 2 processes, DDP, CPU" in proc.ranks[0]  # rank 0 prints it
