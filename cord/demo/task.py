"""The demo task protocol: what the job runner (:mod:`cord.demo.jobs`) needs of a task, and
nothing else. Each task has its own folder (:mod:`cord.demo.claim`, :mod:`cord.demo.operands`)
whose ``task`` module implements this protocol: how to build its splits and its base model,
how the base is pre-trained, what each method post-trains on, and how a model is scored,
validated, followed during training and profiled, so one job runner and one base lookup
(:func:`cord.demo.base.pretrained_base`) serve both demos.

A task object is a frozen dataclass around its frozen configuration: hashable (splits are
built once per process and task) and picklable (jobs run in spawned worker processes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Task(Protocol):
    config: Any
    """The task's frozen configuration (its ``key()`` names the pre-trained base)."""

    def build_splits(self, cache_dir: Path | None) -> dict[str, list[dict]]:
        """Every split, with speech attached where a split is ever heard."""

    def build_model(self, seed: int | None = None):
        """A random-init tiny audio LM sized by the configuration, and its adapter."""

    def pretrain(self, adapter, splits: dict[str, list[dict]], *, progress: bool = True
                 ) -> list[dict[str, float]]:
        """Pre-trains ``adapter`` in place (the gap between its text and audio sides opens);
        returns the loss history."""

    def training_records(self, splits: dict[str, list[dict]], method: str) -> list[dict]:
        """The prompts ``method`` post-trains on (every competitor: the same ones)."""

    def score(self, adapter, splits: dict[str, list[dict]], post) -> dict[str, Any]:
        """The held-out scores of a post-trained model (per item, for the paired CIs)."""

    def validate(self, adapter, splits: dict[str, list[dict]], post) -> dict[str, Any]:
        """The validation scores a learning-rate rule reads (never the held-out items)."""

    def curve_scores(self, adapter, splits: dict[str, list[dict]], post) -> dict[str, float]:
        """One point of the training curves (validation items only; the job runner calls it
        every ``post.eval_every`` steps)."""

    def kl_profile(self, adapter, splits: dict[str, list[dict]], post,
                   threshold: float) -> dict[str, Any]:
        """The per-token KL of the model's audio rollouts, summarised."""
