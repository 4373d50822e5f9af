"""What the demo measures on one model: held-out accuracy per item, transfer, retention, the KL
profile of its audio rollouts, and validation curves during training."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cord.data.paired import collate_paired
from cord.demo.gap_task import TRANSCRIBE_INSTRUCTION
from cord.demo.posttrain import PostTrainConfig, accuracies, trainer_config
from cord.eval.analyze import rollout_kl
from cord.eval.evaluate import evaluate, generate_answers
from cord.rewards.judge import build_judge
from cord.train.objectives import StepContext, compute_loss
from cord.train.teacher import Teacher

RETENTION_ITEMS = 100
CURVE_ITEMS = 100
KL_ITEMS = 200
BATCH = 100


def transcription_accuracy(adapter, records: Sequence[dict], max_new_tokens: int = 16) -> float:
    """Exact-match transcription from audio ("repeat"): the audio skill post-training does not
    target, so its change measures retention."""
    said = generate_answers(adapter, records, "audio", batch_size=BATCH,
                            max_new_tokens=max_new_tokens, instruction=TRANSCRIBE_INSTRUCTION,
                            progress=False)
    return float(np.mean([" ".join(s.split()) == r["transcript"] for s, r in zip(said, records)]))


def score_model(adapter, splits: dict[str, list], post: PostTrainConfig) -> dict[str, Any]:
    """Per-item text and audio correctness on ``eval``, transfer audio accuracy, retention."""
    ev = evaluate(adapter, splits["eval"], name="eval", max_new_tokens=post.max_completion_length,
                  batch_size=BATCH, progress=False)
    tr = evaluate(adapter, splits["transfer"], name="transfer", batch_size=BATCH,
                  max_new_tokens=post.max_completion_length, modalities=("audio",),
                  progress=False, keep_responses=False)
    return {
        "text_items": [int(i["text_correct"]) for i in ev["items"]],
        "audio_items": [int(i["audio_correct"]) for i in ev["items"]],
        "text": ev["text"]["accuracy"],
        "audio": ev["audio"]["accuracy"],
        "audio_unparsed": ev["audio"]["unparsed"],
        "transfer": tr["audio"]["accuracy"],
        "retention": transcription_accuracy(adapter, splits["eval"][:RETENTION_ITEMS]),
    }


def kl_profile(adapter, records, post: PostTrainConfig, *, threshold: float | None = None
               ) -> tuple[list, dict[str, float]]:
    """Audio rollouts (T=1) with per-token KL: mean length, mean KL and the mean KL of the tokens
    above ``threshold`` (default: this model's 80th percentile; pass the base's to compare)."""
    rollouts = rollout_kl(adapter, records, max_new_tokens=post.max_completion_length,
                          temperature=post.temperature, batch_size=BATCH, seed=0, progress=False)
    kl = np.concatenate([np.asarray(r.kl, dtype=np.float64) for r in rollouts])
    if threshold is None:
        threshold = float(np.percentile(kl, 80))
    high = kl[kl > threshold]
    return rollouts, {
        "mean_length": float(np.mean([len(r.kl) for r in rollouts])),
        "mean_kl": float(kl.mean()),
        "high_threshold": threshold,
        "high_kl_mean": float(high.mean()) if high.size else 0.0,
        "high_kl_share": float(high.size / kl.size),
    }


def curve_hook(curve: list, records, post: PostTrainConfig, every: int):
    """An ``on_step_end`` hook appending validation accuracy every ``every`` steps and at the
    last step to ``curve``."""
    def hook(step: int, trainer) -> None:
        if step % every and step != trainer.max_steps:
            return
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.eval()
        acc = accuracies(trainer.adapter.with_model(model), records,
                         max_new_tokens=post.max_completion_length)
        model.train()
        curve.append({"step": step, **acc})

    return hook


def loss_gradient_norms(base, records: Sequence[dict], post: PostTrainConfig, *,
                        batches: int = 4, seed: int = 0) -> dict[str, float]:
    """Mean gradient norm, on the base, of each part of CORD's loss over the same micro-batches:
    the weighted L_tok (CORD), the uniform L_tok (OPD) and L_seq (GRPO). It tells which part
    drives an update, and how much the top-K/position weights scale L_tok."""
    model = copy.deepcopy(base.model)
    adapter = base.with_model(model)
    model.train()
    # weighted L_tok alone is "cord" with no sequence term
    parts = {"l_tok_cord": ("cord", {"cord_seq_weight": 0.0}), "l_tok_uniform": ("opd", {}),
             "l_seq": ("grpo", {})}
    norms: dict[str, list[float]] = {k: [] for k in parts}
    judge = build_judge("match")
    for name, (objective, overrides) in parts.items():
        config = trainer_config("sft", post, learning_rate=1e-4, seed=seed, output_dir=Path("."))
        config = replace(config, objective=objective, **overrides)
        ctx = StepContext(adapter, Teacher("live", adapter), config, judge)
        torch.manual_seed(seed)  # the same rollouts for every part
        for i in range(batches):
            chunk = records[i * post.batch_size : (i + 1) * post.batch_size]
            batch = collate_paired(chunk)
            model.zero_grad(set_to_none=True)
            compute_loss(ctx, batch).loss.backward()
            grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
            norms[name].append(float(torch.linalg.vector_norm(torch.stack(grads))))
    return {k: float(np.mean(v)) for k, v in norms.items()}
