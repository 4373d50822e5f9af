"""FSDP2 on two CPU processes (gloo): the same training as one process, and sharded checkpoints
that resume exactly on another process count.

accelerate does not offer FSDP on the CPU, so these runs use ``distributed=fsdp2``: the
trainer applies ``torch.distributed.fsdp.fully_shard`` itself (cord.train.distributed) over the
gloo group that ``accelerate launch`` made. Every run uses the fused-linear losses, which read
the LM-head weight outside the forward: under FSDP2 that weight belongs to the sharded root unit.

Rollouts are greedy and all prompts have the same token length, so one process with the global
batch and two with half of it each score the same tokens (see test_distributed.py).

One multi-process launch keeps the test short; the other runs are in this process:
    one      1 process, no sharding: the reference, 3 steps (step 3 starts a new epoch)
    one_fs   1 process, FSDP2 over a one-process group, a sharded checkpoint after each step
    two      2 processes, FSDP2, resuming one_fs's step-1 checkpoint (1 -> 2 processes):
             steps 2 and 3 are sharded two-process steps, compared with the reference
    back     1 process, FSDP2, resuming two's step-2 checkpoint (2 -> 1 processes)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import final_weights, launch_cpu_train, logged, write_paired_dataset

from cord.config import CordConfig
from cord.models.tiny import build_tiny_qwen2_audio
from cord.train.distributed import FSDP2_CHECKPOINT_DIR
from cord.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = [
    "model=tiny", "objective=cord", "cord_seq_weight=0", "judge=none", "temperature=0",
    "max_completion_length=5", "max_steps=3", "learning_rate=1e-3", "report_to=none",
    "logging_steps=1", "gradient_accumulation_steps=2", "use_fused_linear=true",
    "save_steps=1", "disable_tqdm=true", "seed=0",
]


def _run_here(data: Path, out: Path, *extra: str) -> None:
    config = CordConfig.from_yaml(None, [f"dataset={data}", f"output_dir={out}",
                                         "per_device_train_batch_size=2", *OPTIONS, *extra])
    train(config)


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        # Adam's update is ~lr * sign(g) per step: a tenth of lr bounds last-bit differences.
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=2e-4, msg=name)


def test_fsdp2_two_processes_match_one_and_resume_across_counts(tmp_path):
    torch.set_num_threads(1)
    data = write_paired_dataset(tmp_path)
    one, one_fs, two, back = (tmp_path / n for n in ("one", "one_fs", "two", "back"))

    _run_here(data, one)
    _run_here(data, one_fs, "distributed=fsdp2")
    for key in ("loss", "grad_norm"):
        assert logged(one_fs, key) == pytest.approx(logged(one, key), rel=1e-3), key
    assert (one_fs / "checkpoint-1" / FSDP2_CHECKPOINT_DIR / ".metadata").is_file()

    proc = launch_cpu_train(ROOT, tmp_path, [
        f"dataset={data}", f"output_dir={two}", *OPTIONS, "per_device_train_batch_size=1",
        "distributed=fsdp2", f"resume_from_checkpoint={one_fs / 'checkpoint-1'}"])
    assert proc.returncode == 0, proc.output
    log = proc.ranks[0]  # rank 0 prints for both
    assert "on 2 processes, FSDP2, CPU" in log and "resumed from" in log
    assert "sharded over 2 process(es)" in log

    _run_here(data, back, "distributed=fsdp2", f"resume_from_checkpoint={two / 'checkpoint-2'}")

    # Sharded on 2 processes (and resumed on another count) == unsharded on 1, step by step.
    for run, first in ((two, 2), (back, 3)):
        assert logged(run, "step") == list(range(first, 4))
        for key in ("loss", "grad_norm"):
            assert logged(run, key) == pytest.approx(logged(one, key)[first - 1:], rel=1e-3), key
        _assert_same_weights(run, one)
    w0, _ = build_tiny_qwen2_audio(seed=0)  # the runs trained: not two untouched models
    trained = final_weights(one)
    head = next(k for k in trained if k.endswith("lm_head.weight"))  # the checkpoint's name
    assert (trained[head] - w0.lm_head.weight.detach()).abs().max() > 1e-3


def test_fsdp2_sharding_in_one_process():
    """The mechanics on a one-process group: what is sharded, what the fused-linear path gets
    as the LM head, generation, and the gradient landing on the sharded parameter."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from cord.data.synthetic import tone_audio
    from cord.models.adapter import Qwen2AudioAdapter
    from cord.train.distributed import block_modules, ensure_process_group, shard_fsdp2

    torch.set_num_threads(1)
    model, processor = build_tiny_qwen2_audio(seed=0)
    ref = Qwen2AudioAdapter(build_tiny_qwen2_audio(seed=0)[0], processor)
    names = [type(m).__name__ for m in block_modules(model)]
    # The outermost blocks only: the encoder layer, not the attention inside it.
    assert names == ["Qwen2AudioEncoderLayer", "Qwen2DecoderLayer", "Qwen2DecoderLayer"]
    with pytest.raises(TypeError, match="_no_split_modules"):
        block_modules(torch.nn.Linear(2, 2))

    created = ensure_process_group(torch.device("cpu"))
    try:
        shard_fsdp2(model)
        adapter = Qwen2AudioAdapter(model, processor)
        assert isinstance(model, FSDPModule) and isinstance(model.lm_head.weight, DTensor)
        x_a = adapter.audio_prompts([tone_audio("What is 1 + 2?", 16000)], sampling_rate=16000)
        ids = adapter.generate(x_a, max_new_tokens=4, temperature=0)
        assert torch.equal(ids, ref.generate(x_a, max_new_tokens=4, temperature=0))
        block = model.model.language_model.layers[0]
        assert isinstance(block.mlp.up_proj.weight, DTensor)  # freed again after generate

        mask = torch.ones_like(ids, dtype=torch.bool)
        hidden, weight, _ = adapter.completion_hidden(x_a, ids, mask)
        assert not isinstance(weight, DTensor) and weight.shape == (926, 64)  # gathered
        ref_hidden, ref_weight, _ = ref.completion_hidden(x_a, ids, mask)
        torch.testing.assert_close(hidden, ref_hidden)
        torch.testing.assert_close(weight, ref_weight)
        (hidden @ weight.T).logsumexp(-1).sum().backward()
        grad = model.lm_head.weight.grad  # reduce-scattered onto the sharded parameter
        assert isinstance(grad, DTensor) and grad.full_tensor().abs().sum() > 0
    finally:
        if created:
            dist.destroy_process_group()
