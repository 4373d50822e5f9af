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

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class DemoTaskConfig:
    """What both tasks' configurations share: the tiny model, its audio and its pre-training
    (each task adds its sizes; a task may give a field another default by declaring it again).
    Light on purpose (no torch)."""

    # Plain fields with defaults: they resemble other configs by shape only (duplicates).
    seed: int = 0
    # model (cord.models.tiny.build_tiny_qwen2_audio)
    hidden_size: int = 64
    num_layers: int = 4
    audio_d_model: int = 64
    audio_layers: int = 2
    # audio: 0.48 s slots are exactly 6 audio tokens per word at the tiny encoder's rate
    slot_seconds: float = 0.48
    chunk_seconds: int = 5
    """Long enough for the longest question; longer audio would be cut."""
    tts_rate: int = 175
    # pre-training
    pretrain_steps: int = 1200
    batch_size: int = 32
    learning_rate: float = 3e-3

    def key_fields(self) -> dict[str, Any]:
        """The fields that name the pre-trained base (all of them unless a task says less)."""
        return asdict(self)

    def key(self) -> str:
        """A short hash naming the cached pre-trained base of this configuration."""
        blob = json.dumps(self.key_fields(), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


class Task(Protocol):
    config: Any
    """The task's frozen configuration (its ``key()`` names the pre-trained base)."""

    def build_splits(self, cache_dir: Path | None) -> dict[str, list[dict]]:
        """Every split, with speech attached where a split is ever heard."""

    def describe(self, splits: dict[str, list[dict]]) -> str:
        """One line saying what the splits hold (printed as a run starts)."""

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
