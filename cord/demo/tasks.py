"""The two demo tasks behind the :class:`cord.demo.task.Task` protocol.

- :class:`ClaimTask` (``cord demo``): an imperfect text teacher, a transfer task and a
  retention task (:mod:`cord.demo.claim_task`, measured by :mod:`cord.demo.claim_measure`).
- :class:`OperandsTask` (``cord demo --task operands``): the in-domain test with a perfect
  teacher (:mod:`cord.demo.gap_task`, measured by :mod:`cord.demo.measure`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cord.demo import claim_measure as CM
from cord.demo import measure as M
from cord.demo.claim_task import ClaimTaskConfig, attach_claim_audio, make_claim_splits
from cord.demo.gap_task import GapTaskConfig, SlottedSpeech, attach_audio, make_splits
from cord.demo.methods import METHODS
from cord.demo.posttrain import accuracies


def _speech(config, cache_dir: Path | None) -> SlottedSpeech:
    return SlottedSpeech(slot_seconds=config.slot_seconds, rate=config.tts_rate,
                         cache_dir=cache_dir)


@dataclass(frozen=True)
class ClaimTask:
    config: ClaimTaskConfig

    def build_splits(self, cache_dir):
        return attach_claim_audio(make_claim_splits(self.config), self.config,
                                  _speech(self.config, cache_dir))

    def training_records(self, splits, method):
        """The method's split (``Method.data``: the pool, or the transfer control's spoken
        comparisons), each record carrying its gold worked chain as ``answer``, which only
        the gold-SFT controls read."""
        return [{"id": r["id"], "text": r["text"], "audio": r["audio"], "answer": r["worked"]}
                for r in splits[METHODS[method].data]]

    def score(self, adapter, splits, post):
        return CM.score_claim_model(adapter, splits, post)

    def validate(self, adapter, splits, post):
        return CM.validation_scores(adapter, splits, post)

    def curve_hook(self, curve, splits, post):
        return CM.curve_hook(curve, splits, post, post.eval_every)

    def kl_profile(self, adapter, splits, post, threshold):
        # the paper's Figure 2 contrast (correct against wrong rollouts); no threshold needed
        return CM.kl_by_correctness(adapter, splits["eval"][: CM.KL_ITEMS], post)[1]


@dataclass(frozen=True)
class OperandsTask:
    config: GapTaskConfig

    def build_splits(self, cache_dir):
        speech = _speech(self.config, cache_dir)
        return {k: v if k == "text_only" else attach_audio(v, speech)
                for k, v in make_splits(self.config).items()}

    def training_records(self, splits, method):
        return [{k: r[k] for k in ("id", "text", "audio")} for r in splits["distill"]]

    def score(self, adapter, splits, post):
        return M.score_model(adapter, splits, post)

    def validate(self, adapter, splits, post):
        return accuracies(adapter, splits["val"], max_new_tokens=post.max_completion_length)

    def curve_hook(self, curve, splits, post):
        return M.curve_hook(curve, splits["val"][: M.CURVE_ITEMS], post, post.eval_every)

    def kl_profile(self, adapter, splits, post, threshold) -> dict[str, Any]:
        return M.kl_profile(adapter, splits["eval"][: M.KL_ITEMS], post, threshold=threshold)[1]
