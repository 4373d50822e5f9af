"""Float32 master weights: a model loaded in bf16 really learns at lr 3e-5, and the trainer's
``weight_change`` / ``weights_changed`` metrics show whether the weights moved."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cord.config import CordConfig
from cord.models.tiny import build_tiny_qwen2_audio
from cord.train.precision import WeightChange, fp32_master_weights
from cord.train.trainer import CordTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fp32_master_weights_upcasts_low_precision_models_only():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).to(torch.bfloat16)
    assert fp32_master_weights(net) is True
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    assert fp32_master_weights(net) is False  # already float32: untouched
    frozen = nn.Linear(2, 2).half().requires_grad_(False)
    assert fp32_master_weights(frozen) is False  # nothing trained in low precision
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fp32_master_weights("model")


def test_weight_change_measures_the_update():
    a = nn.Parameter(torch.full((4, 5), 2.0))
    b = nn.Parameter(torch.full((10,), -1.0))
    frozen = nn.Parameter(torch.ones(3), requires_grad=False)
    moved = WeightChange([a, b, frozen])
    moved.before()
    with torch.no_grad():
        a[0].add_(0.5)  # 5 of 30 trained entries change
    out = moved.after()
    norm = math.sqrt(20 * 4.0 + 10 * 1.0)
    assert out["weight_change"] == pytest.approx(math.sqrt(5 * 0.25) / norm)
    assert out["weights_changed"] == pytest.approx(5 / 30)
    # A sample of about max_elements entries: every third entry of each tensor here.
    sampled = WeightChange([a, b], max_elements=10)
    assert sampled.stride == 3
    sampled.before()
    with torch.no_grad():
        a.mul_(1.5)
    assert sampled.after()["weight_change"] > 0
    with pytest.raises(RuntimeError, match="before"):
        sampled.after()
    with pytest.raises(ValueError, match="max_elements"):
        WeightChange([a], max_elements=0)
    with pytest.raises(ValueError, match="no trainable"):
        WeightChange([frozen])


def _train_bf16_model(path, tmp_path, **options) -> tuple[CordTrainer, dict]:
    config = CordConfig.from_yaml(None, [
        f"model={path}", "objective=sft", "judge=none", "temperature=0",
        "max_completion_length=4", "max_steps=2", "learning_rate=3e-5", "report_to=none",
        "logging_steps=1", "dataset=arithmetic", "dataset_audio=tone", "dataset_size=4",
        "save_steps=0", "disable_tqdm=true", f"output_dir={tmp_path / 'out'}",
        *[f"{k}={v}" for k, v in options.items()]])
    trainer = CordTrainer(config)
    return trainer, trainer.train()


def test_a_bf16_loaded_model_learns_at_lr_3e5(tmp_path):
    model, processor = build_tiny_qwen2_audio(seed=0)
    path = tmp_path / "bf16"
    model.to(torch.bfloat16).save_pretrained(path)
    processor.save_pretrained(path)
    initial = {k: v.float() for k, v in model.state_dict().items()}

    trainer, metrics = _train_bf16_model(path, tmp_path / "master")
    trained = trainer.model
    assert {p.dtype for p in trained.parameters()} == {torch.float32}
    assert metrics["weight_change"] > 0
    changed = [(p.detach() != initial[n]).float().mean().item()
                for n, p in trained.named_parameters() if n in initial]
    # Most weights moved (the rest get no gradient from this batch: unused token rows, ...).
    assert metrics["weights_changed"] > 0.6 and sum(changed) / len(changed) > 0.5

    # The failure this guards against: updating the bf16 weights themselves rounds most
    # updates away, and the metric shows it.
    _, low = _train_bf16_model(path, tmp_path / "bf16_direct", fp32_master_weights="false")
    assert low["weights_changed"] < 0.5 * metrics["weights_changed"]
