"""The claim demo's verdict: a rule fixed before any result, applied to paired-bootstrap CIs.

The paper (arXiv 2601.16547) claims that CORD closes more of the audio-text gap than imitation
of the text teacher (SFT, forward KL), in-domain and on tasks it was not post-trained on, while
keeping what the audio side could already do. The rule below says in advance what would support
that claim and what would refute it, and it never reads "nothing moved" as either: a comparison
counts only where it is *powered*, that is where a positive control moved the metric by a known
amount and the CI of the CORD − imitation difference is narrow enough to see the paper's
smallest margin. Everything else is inconclusive, with the reason spelled out.

Light on purpose (no numpy, no torch): the rule is printed before any model is trained.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cord.demo.format import decimal

DELTA = 0.15
"""δ: the paper's smallest CORD − FKL transfer margin (MMSU), 15 gap-reduction points."""
RETENTION_MARGIN = 0.03
"""How much worse than SFT's or FKL's CORD's retention may be before it counts as worse."""
IMITATION = ("sft", "fkl")
BEST_IMITATION = "cord - max(sft, fkl)"
AXES = {"in_domain": "in_domain_gap_reduction", "transfer": "transfer_gap_reduction"}
"""X -> the metric it is judged on."""
CONTROLS = {"in_domain": "sft_gold", "transfer": "sft_gold_transfer"}
"""X -> its positive control: gold SFT on the distillation pool (in-domain) and gold SFT on
spoken comparisons disjoint from the transfer set (the transfer task itself: it shows that the
transfer metric can move, and be seen to move, within the budget)."""
CONTROL_FLOOR = {"in_domain": DELTA, "transfer": 0.0}
"""The lower bound the control's CI must reach: ≥ δ in-domain, > 0 on transfer."""
METRICS = ("in_domain_gap_reduction", "transfer_gap_reduction", "retention")
AXIS_NAMES = {"in_domain": "in-domain", "transfer": "transfer"}

VERDICT_RULE = (
    f"Let δ = {DELTA * 100:.0f} gap-reduction points (the paper's smallest CORD − FKL transfer "
    "margin) and, for X in {in-domain, transfer}, D_X = CORD − max(SFT, FKL) on X's gap "
    "reduction (max taken replicate by replicate of the paired bootstrap; 95% CIs). "
    "(1) A failing precondition makes the verdict inconclusive. "
    "(2) X is powered when its positive control beats the base (gold SFT in-domain: CI lower "
    f"bound ≥ δ; gold SFT on spoken comparisons for transfer: lower bound > 0) and D_X's CI "
    "half-width is ≤ δ; if no X is powered: inconclusive (no power). "
    "(3) Supported: some powered X has D_X's lower bound > 0 and CORD − base on X (CORD's own "
    "gap reduction) with lower bound > 0, and neither CI of CORD − SFT nor of CORD − FKL on "
    f"retention has its upper bound below −{RETENTION_MARGIN * 100:.0f} points. "
    "(4) Refuted: every powered X has D_X's upper bound < δ, or a retention CI's upper bound "
    f"is below −{RETENTION_MARGIN * 100:.0f} points. "
    "(5) Otherwise inconclusive, with the reason naming which part held. "
    "'Nothing moved' can never read as refuted: without a moving control there is no verdict."
)
VERDICTS = ("supported", "refuted", "inconclusive")


def _bounds(block: Mapping[str, Any]) -> tuple[float, float]:
    lo, hi = block["ci95"]
    return float(lo), float(hi)


def _known(x: float) -> bool:
    return x == x  # NaN-safe: an undefined CI (no gap on the base) is never evidence


def _pts(lo: float, hi: float) -> str:
    return f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"


def assess_power(paired: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """X -> ``{control, control_minus_base: {mean, ci95}, halfwidth, powered}``.

    ``paired`` needs ``"<control> - base"`` for each control and :data:`BEST_IMITATION`; a
    missing control (a run without it) leaves X unpowered."""
    out = {}
    for axis, metric in AXES.items():
        control = CONTROLS[axis]
        d_lo, d_hi = _bounds(paired[BEST_IMITATION][metric])
        halfwidth = (d_hi - d_lo) / 2 if _known(d_lo) and _known(d_hi) else float("nan")
        block = paired.get(f"{control} - base", {}).get(metric)
        if block is None:
            cmb = {"mean": float("nan"), "ci95": [float("nan"), float("nan")]}
        else:
            cmb = {"mean": float(block["mean"]), "ci95": [float(v) for v in block["ci95"]]}
        c_lo = cmb["ci95"][0]
        floor = CONTROL_FLOOR[axis]
        moved = _known(c_lo) and (c_lo >= floor if floor > 0 else c_lo > 0)
        narrow = _known(halfwidth) and halfwidth <= DELTA
        out[axis] = {"control": control, "control_minus_base": cmb, "halfwidth": halfwidth,
                     "powered": bool(moved and narrow)}
    return out


def verdict(paired: Mapping[str, Mapping[str, Mapping[str, Any]]],
            preconditions: Mapping[str, Mapping[str, Any]] | None = None,
            power: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[str, str]:
    """``(verdict, reason)`` by :data:`VERDICT_RULE`; verdict is one of :data:`VERDICTS`.

    Args:
        paired: pair name -> metric -> ``{"mean", "ci95": [lo, hi]}``, with
            :data:`BEST_IMITATION`, ``"cord - sft"``, ``"cord - fkl"``, ``"cord - base"`` and
            the controls' ``"<control> - base"``.
        preconditions: name -> ``{value, bound, ok}`` (None: none checked).
        power: :func:`assess_power` of ``paired`` (computed when None).
    """
    need = (BEST_IMITATION, "cord - sft", "cord - fkl", "cord - base")
    missing = [p for p in need if p not in paired]
    if missing:
        raise ValueError(f"the verdict needs the pairs {list(need)}; missing {missing}")
    failed = [k for k, p in (preconditions or {}).items() if not p["ok"]]
    if failed:
        shown = ", ".join(f"{k} = {decimal(preconditions[k]['value'])} (needs "
                          f"{preconditions[k]['bound']})" for k in failed)
        return "inconclusive", f"precondition failed: {shown}"
    power = assess_power(paired) if power is None else power
    powered = [x for x in AXES if power[x]["powered"]]
    if not powered:
        parts = []
        for x, p in power.items():
            lo, hi = p["control_minus_base"]["ci95"]
            if not (_known(lo) and _known(hi)):  # a table without its control (--full's extra)
                parts.append(f"{AXIS_NAMES[x]}: its control ({p['control']}) was not run with "
                             "these methods")
                continue
            floor = "≥ 15" if CONTROL_FLOOR[x] > 0 else "> 0"
            parts.append(f"{AXIS_NAMES[x]}: control ({p['control']}) − base {_pts(lo, hi)} "
                         f"(lower bound must be {floor}), CORD − max(SFT, FKL) half-width "
                         f"{_halfwidth(p['halfwidth'])} (must be ≤ {DELTA * 100:.0f})")
        return "inconclusive", "no power: " + "; ".join(parts)

    worse = []
    for m in IMITATION:
        lo, hi = _bounds(paired[f"cord - {m}"]["retention"])
        if _known(hi) and hi < -RETENTION_MARGIN:
            worse.append(f"CORD − {m.upper()} on retention {_pts(lo, hi)}")
    held = []
    for x in powered:
        d_lo, d_hi = _bounds(paired[BEST_IMITATION][AXES[x]])
        c_lo, c_hi = _bounds(paired["cord - base"][AXES[x]])
        if d_lo > 0 and c_lo > 0:
            held.append(f"{AXIS_NAMES[x]}: CORD − max(SFT, FKL) {_pts(d_lo, d_hi)} and CORD − "
                        f"base {_pts(c_lo, c_hi)} both above 0")
    if held and not worse:
        return "supported", "; ".join(held) + "; retention not worse than SFT's or FKL's"
    if worse:
        return "refuted", "CORD retains worse than imitation: " + "; ".join(worse)
    below = [x for x in powered if _bounds(paired[BEST_IMITATION][AXES[x]])[1] < DELTA]
    if len(below) == len(powered):
        shown = "; ".join(f"{AXIS_NAMES[x]}: CORD − max(SFT, FKL) "
                          f"{_pts(*_bounds(paired[BEST_IMITATION][AXES[x]]))}" for x in powered)
        return "refuted", (f"on every powered comparison the CI excludes a margin of "
                           f"{DELTA * 100:.0f} points: {shown}")
    reasons = []
    for x in powered:
        d_lo, d_hi = _bounds(paired[BEST_IMITATION][AXES[x]])
        c_lo, c_hi = _bounds(paired["cord - base"][AXES[x]])
        if d_lo > 0:
            reasons.append(f"CORD beats imitation on {AXIS_NAMES[x]} (CORD − max(SFT, FKL) "
                           f"{_pts(d_lo, d_hi)}) but does not itself close the gap (CORD − base "
                           f"{_pts(c_lo, c_hi)})")
        else:
            reasons.append(f"on {AXIS_NAMES[x]}, CORD − max(SFT, FKL) {_pts(d_lo, d_hi)} "
                           "neither lies above 0 nor below the margin")
    lost = []
    for m in IMITATION:
        block = paired.get(f"{m} - base", {}).get("text_after")
        if block is not None and _known(block["mean"]):
            lost.append(f"{m.upper()} {100 * block['mean']:+.1f}")
    if lost:
        reasons.append("text accuracy after imitation vs the base: " + ", ".join(lost)
                       + " points")
    unpowered = [AXIS_NAMES[x] for x in AXES if x not in powered]
    if unpowered:
        reasons.append(f"{', '.join(unpowered)} not powered")
    return "inconclusive", "; ".join(reasons)




def _halfwidth(h: float) -> str:
    return "n/a" if not _known(h) else f"{100 * h:.1f}"
