"""The claim demo's verdict: a rule fixed before any result, applied to paired-bootstrap CIs.

The paper (arXiv 2601.16547) claims that CORD transfers and retains better than imitation of the
text teacher (SFT, forward KL) when that teacher is imperfect. The rule below says in advance
what would support that claim, what would refute it, and calls everything else inconclusive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RETENTION_MARGIN = 0.03
"""How much worse than SFT's or FKL's CORD's retention may be before it counts as worse."""
IMITATION = ("sft", "fkl")

VERDICT_RULE = (
    "supported if the 95% CI of CORD − max(SFT, FKL) lies above 0 on the transfer gap reduction "
    "or on the in-domain gap reduction, and CORD's retention is not worse than SFT's or FKL's "
    f"(neither CI of CORD − SFT nor of CORD − FKL on retention lies below −{RETENTION_MARGIN:.0%}"
    "); refuted if SFT or FKL matches or beats CORD on all three (for that method, every CI of "
    "CORD − it on in-domain gap reduction, transfer gap reduction and retention includes 0 or "
    "lies below it); inconclusive otherwise. max(SFT, FKL) is taken replicate by replicate of "
    "the bootstrap. 'Lies above 0' means the lower bound is above 0; 'lies below −3 points' "
    "means the upper bound is below −3 points."
)
METRICS = ("in_domain_gap_reduction", "transfer_gap_reduction", "retention")


def verdict(paired: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """``"supported"``, ``"refuted"`` or ``"inconclusive"`` by :data:`VERDICT_RULE`.

    Args:
        paired: pair name -> metric -> ``{"mean", "ci95": [lo, hi]}``, with the pairs
            ``"cord - max(sft, fkl)"``, ``"cord - sft"`` and ``"cord - fkl"`` and the
            :data:`METRICS`. A CI of NaNs (no gap on the base) never supports anything.
    """
    need = ("cord - max(sft, fkl)", "cord - sft", "cord - fkl")
    missing = [p for p in need if p not in paired]
    if missing:
        raise ValueError(f"the verdict needs the pairs {list(need)}; missing {missing}")
    best = paired["cord - max(sft, fkl)"]

    def above_zero(metric: str, pair=best) -> bool:
        lo = pair[metric]["ci95"][0]
        return lo == lo and lo > 0  # NaN-safe

    def retention_not_worse() -> bool:
        for m in IMITATION:
            hi = paired[f"cord - {m}"]["retention"]["ci95"][1]
            if hi == hi and hi < -RETENTION_MARGIN:
                return False
        return True

    if ((above_zero("transfer_gap_reduction") or above_zero("in_domain_gap_reduction"))
            and retention_not_worse()):
        return "supported"
    for m in IMITATION:
        cis = [paired[f"cord - {m}"][metric]["ci95"] for metric in METRICS]
        # an undefined metric (no gap on the base) can neither support nor refute
        if all(lo == lo for lo, _ in cis) and not any(lo > 0 for lo, _ in cis):
            return "refuted"
    return "inconclusive"
