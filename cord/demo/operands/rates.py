"""The operands demo's learning-rate rule: per method, on a validation split disjoint from the
evaluation set, the rate that closes the most of the validation gap without losing the text
side; the rates of the committed grid ship in ``learning_rates.json``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cord.demo.posttrain import PostTrainConfig

LEARNING_RATES = (3e-5, 1e-4, 3e-4, 1e-3)
TEXT_TOLERANCE = 0.03
"""The learning-rate rule's guard: text accuracy within 3 points of the base's."""


def select_rate(grid: Mapping[float, Mapping[str, float]], base_text_val: float) -> dict[str, Any]:
    """The learning-rate rule, the same for every method.

    ``grid``: rate -> ``{"text", "audio"}`` validation accuracy after training at that rate.
    Among the rates whose validation text accuracy stays within :data:`TEXT_TOLERANCE` of the
    base's, the one with the smallest validation gap Δ = Acc_text(base) − Acc_audio; ties go to
    the smaller rate. If no rate keeps the text side, the smallest rate is taken and flagged.
    """
    admissible = [r for r, acc in grid.items()
                  if base_text_val - acc["text"] <= TEXT_TOLERANCE + 1e-9]
    if not admissible:
        return {"rate": min(grid), "admissible": False}
    best = min(admissible, key=lambda r: (base_text_val - grid[r]["audio"], r))
    return {"rate": best, "admissible": True}


def load_rates(path: Path) -> dict[str, float]:
    data = json.loads(path.read_text())
    return {m: float(v["rate"]) for m, v in data["selected"].items()}


def rates_record(grid: dict[str, dict[float, dict[str, float]]], selected: dict[str, dict],
                 base_val: dict[str, float], post: PostTrainConfig,
                 rates: Sequence[float] = LEARNING_RATES) -> dict[str, Any]:
    return {
        "rule": (f"per method, among {list(rates)}: the smallest validation gap whose "
                 f"validation text accuracy is within {TEXT_TOLERANCE:.0%} of the base's"),
        "base_val": base_val,
        "post_training": asdict(post),
        "grid": {m: {f"{r:g}": acc for r, acc in g.items()} for m, g in grid.items()},
        "selected": selected,
    }
