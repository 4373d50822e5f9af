"""The operands task behind the :class:`cord.demo.task.Task` protocol (``cord demo --task
operands``): the in-domain test with a perfect teacher (:mod:`cord.demo.operands.data`,
measured by :mod:`cord.demo.operands.measure`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cord.demo.operands import measure as M
from cord.demo.operands.data import GapTaskConfig, build_gap_model, make_splits, pretrain
from cord.demo.posttrain import accuracies
from cord.demo.speech import SlottedSpeech, attach_audio


@dataclass(frozen=True)
class OperandsTask:
    config: GapTaskConfig

    def build_splits(self, cache_dir):
        speech = SlottedSpeech(slot_seconds=self.config.slot_seconds, rate=self.config.tts_rate,
                               cache_dir=cache_dir)
        return {k: v if k == "text_only" else attach_audio(v, speech)
                for k, v in make_splits(self.config).items()}

    def describe(self, splits):
        return (f"task: {len(splits['train'])} training questions (text QA and transcription "
                f"on all, spoken QA on {len(splits['audio_qa'])}; the other "
                f"{len(splits['distill'])} are the unlabelled pairs of post-training); "
                f"{len(splits['val'])} validation, {len(splits['eval'])} held-out and "
                f"{len(splits['transfer'])} transfer questions")

    def build_model(self, seed=None):
        return build_gap_model(self.config, seed=seed)

    def pretrain(self, adapter, splits, *, progress=True):
        return pretrain(adapter, splits, self.config, progress=progress)

    def training_records(self, splits, method):
        return [{k: r[k] for k in ("id", "text", "audio")} for r in splits["distill"]]

    def score(self, adapter, splits, post):
        return M.score_model(adapter, splits, post)

    def validate(self, adapter, splits, post):
        return accuracies(adapter, splits["val"], max_new_tokens=post.max_completion_length)

    def curve_scores(self, adapter, splits, post):
        return accuracies(adapter, splits["val"][: M.CURVE_ITEMS],
                          max_new_tokens=post.max_completion_length)

    def kl_profile(self, adapter, splits, post, threshold) -> dict[str, Any]:
        return M.kl_profile(adapter, splits["eval"][: M.KL_ITEMS], post, threshold=threshold)[1]
