"""The demo task protocol: what the job runner (:mod:`cord.demo.jobs`) needs of a task, and
nothing else. Each task (:mod:`cord.demo.tasks`: the claim task and the operands task) says
how to build its splits, what each method post-trains on, and how a model is scored,
validated, followed during training and profiled, so one job runner serves both demos.

A task object is a frozen dataclass around its frozen configuration: hashable (splits are
built once per process and task) and picklable (jobs run in spawned worker processes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class Task(Protocol):
    config: Any
    """The task's frozen configuration (its ``key()`` names the pre-trained base)."""

    def build_splits(self, cache_dir: Path | None) -> dict[str, list[dict]]:
        """Every split, with speech attached where a split is ever heard."""

    def training_records(self, splits: dict[str, list[dict]], method: str) -> list[dict]:
        """The prompts ``method`` post-trains on (every competitor: the same ones)."""

    def score(self, adapter, splits: dict[str, list[dict]], post) -> dict[str, Any]:
        """The held-out scores of a post-trained model (per item, for the paired CIs)."""

    def validate(self, adapter, splits: dict[str, list[dict]], post) -> dict[str, Any]:
        """The validation scores a learning-rate rule reads (never the held-out items)."""

    def curve_hook(self, curve: list, splits: dict[str, list[dict]], post
                   ) -> Callable[[int, Any], None]:
        """An ``on_step_end`` hook appending validation points to ``curve`` during training."""

    def kl_profile(self, adapter, splits: dict[str, list[dict]], post,
                   threshold: float) -> dict[str, Any]:
        """The per-token KL of the model's audio rollouts, summarised."""
