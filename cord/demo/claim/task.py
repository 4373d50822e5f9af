"""The claim task behind the :class:`cord.demo.task.Task` protocol (``cord demo``): an
imperfect text teacher, a transfer task and a retention task (:mod:`cord.demo.claim.data`,
measured by :mod:`cord.demo.claim.measure`)."""

from __future__ import annotations

from dataclasses import dataclass

from cord.demo.claim import measure as CM
from cord.demo.claim.data import (
    ClaimTaskConfig,
    attach_claim_audio,
    build_claim_model,
    make_claim_splits,
    pretrain_claim,
)
from cord.demo.methods import METHODS
from cord.demo.speech import SlottedSpeech


@dataclass(frozen=True)
class ClaimTask:
    config: ClaimTaskConfig

    def build_splits(self, cache_dir):
        speech = SlottedSpeech(slot_seconds=self.config.slot_seconds, rate=self.config.tts_rate,
                               cache_dir=cache_dir)
        return attach_claim_audio(make_claim_splits(self.config), self.config, speech)

    def describe(self, splits):
        return (f"task: the text side learns column arithmetic from "
                f"{self.config.text_questions} worked examples; {len(splits['pool'])} fresh "
                f"questions form the distillation pool; {len(splits['eval'])} in-domain, "
                f"{len(splits['transfer'])} transfer (comparison) and "
                f"{len(splits['retention'])} retention (beep counting) held-out items")

    def build_model(self, seed=None):
        return build_claim_model(self.config, seed=seed)

    def pretrain(self, adapter, splits, *, progress=True):
        return pretrain_claim(adapter, splits, self.config, progress=progress)

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

    def curve_scores(self, adapter, splits, post):
        return CM.curve_scores(adapter, splits, post)

    def kl_profile(self, adapter, splits, post, threshold):
        # the paper's Figure 2 contrast (correct against wrong rollouts); no threshold needed
        return CM.kl_by_correctness(adapter, splits["eval"][: CM.KL_ITEMS], post)[1]
