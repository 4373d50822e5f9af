"""Where wrong answers first go wrong: token positions in bands (light: no torch, no numpy, so
the reports read it without loading a model)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

LATE_TOKEN = 10
"""``late_first_errors`` counts wrong answers whose first wrong token comes after this many."""
BANDS = (("0-1", 0, 1), (f"2-{LATE_TOKEN}", 2, LATE_TOKEN), (f">{LATE_TOKEN}", LATE_TOKEN + 1,
                                                             None))
"""Position bands of first errors: the first tokens (the student's prefix is the prompt, the
state the teacher's samples start from), early, and late (after a prefix the student wrote)."""


def band(k: int) -> str:
    """The :data:`BANDS` name of token position ``k``."""
    for name, lo, hi in BANDS:
        if k >= lo and (hi is None or k <= hi):
            return name
    raise ValueError(f"position must be >= 0, got {k}")


def position_histogram(positions: Sequence[int]) -> dict[str, Any]:
    """Counts of first-error positions, by position and by :data:`BANDS`, and the share after
    :data:`LATE_TOKEN` (``late_first_errors``; None without a wrong answer)."""
    by_pos: dict[str, int] = {}
    for k in sorted(positions):
        by_pos[str(k)] = by_pos.get(str(k), 0) + 1
    bands = {name: 0 for name, _, _ in BANDS}
    for k in positions:
        bands[band(k)] += 1
    late = sum(k > LATE_TOKEN for k in positions) / len(positions) if positions else None
    return {"n": len(positions), "by_position": by_pos, "by_band": bands, "late_share": late}
