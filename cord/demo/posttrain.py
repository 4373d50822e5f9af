"""The demo's post-training methods and their shared budget.

Every method starts from the same pre-trained base, sees the same unlabelled paired prompts in
the same order (the seed fixes it), runs the same number of optimizer steps with the same batch
and rollout settings, and gets its learning rate from its task's rule (the claim task's shared
rate, :func:`cord.demo.claim.run.choose_shared_rate`; the operands task's per-method rule,
:mod:`cord.demo.operands.rates`). Only the objective differs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cord.config import CordConfig
from cord.data.paired import collate_paired
from cord.demo.methods import METHODS
from cord.eval.evaluate import evaluate
from cord.rewards.judge import build_judge
from cord.train.objectives import StepContext, compute_loss
from cord.train.teacher import Teacher
from cord.train.trainer import CordTrainer

SWEEP = ("cord_ab1", "cord", "cord_ab3")


@dataclass(frozen=True)
class PostTrainConfig:
    """Settings shared by every post-training method (only the objective differs)."""

    # Plain fields with defaults: they resemble other configs by shape only (duplicates).
    max_steps: int = 40
    batch_size: int = 8
    max_completion_length: int = 40
    """Worked answers are about 27 tokens (digits and symbols are single tokens)."""
    num_generations: int = 4
    temperature: float = 1.0
    grpo_temperature: float = 1.5
    top_k: int = 4
    """The paper's K = 20 for at most 200 generated tokens, scaled to this task's 40 (20·40/200):
    about 15% of a 27-token answer, as K = 20 is of the paper's 100-200-token answers."""
    teacher: str = "live"
    """The paper's teacher: the model's own text side, current weights (eq. 8)."""
    eval_every: int = 20
    """Validation accuracy every this many steps for the training curves (seed 0 only)."""


def trainer_config(method: str, post: PostTrainConfig, *, learning_rate: float, seed: int,
                   output_dir: Path, max_steps: int | None = None) -> CordConfig:
    m = METHODS[method]
    values = dict(
        model="tiny",  # unused: the adapter is passed in
        objective=m.objective,
        learning_rate=learning_rate,
        per_device_train_batch_size=post.batch_size,
        max_steps=max_steps or post.max_steps,
        max_completion_length=post.max_completion_length,
        num_generations=post.num_generations,
        temperature=post.temperature,
        grpo_temperature=post.grpo_temperature,
        reference_temperature=post.temperature,
        cord_top_k=post.top_k,
        teacher=post.teacher,
        seed=seed,
        output_dir=str(output_dir),
        save_steps=0,
        logging_steps=10**9,  # the demo prints its own lines
        report_to=["none"],
        disable_tqdm=True,
    )
    values.update(m.overrides)
    return CordConfig(**values)


def post_train(base_adapter, method: str, train_records, post: PostTrainConfig, *,
               learning_rate: float, seed: int, output_dir: Path, max_steps: int | None = None,
               on_step_end: Callable[[int, Any], None] | None = None):
    """A copy of the base trained with ``method``: ``(adapter, generated_tokens)``."""
    adapter = base_adapter.with_model(copy.deepcopy(base_adapter.model))
    config = trainer_config(method, post, learning_rate=learning_rate, seed=seed,
                            output_dir=output_dir, max_steps=max_steps)
    trainer = CordTrainer(config, adapter=adapter, train_dataset=train_records,
                          judge=build_judge("match"), on_step_end=on_step_end)
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.eval()
    return base_adapter.with_model(model), trainer.state.total_generated_tokens


def accuracies(adapter, records: Sequence[dict], *, max_new_tokens: int,
               modalities=("text", "audio")) -> dict[str, float]:
    r = evaluate(adapter, records, name="val", max_new_tokens=max_new_tokens, batch_size=100,
                 modalities=modalities, progress=False, keep_responses=False)
    return {m: r[m]["accuracy"] for m in modalities}


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
