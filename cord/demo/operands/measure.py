"""What the demo measures on one model: held-out accuracy per item, transfer, retention, the KL
profile of its audio rollouts, and validation curves during training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cord.demo.base import TRANSCRIBE_INSTRUCTION
from cord.demo.posttrain import PostTrainConfig
from cord.eval.analyze import rollout_kl
from cord.eval.evaluate import evaluate, generate_answers

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


