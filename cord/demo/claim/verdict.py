"""The claim demo's verdict: a rule fixed before any result, applied to paired-bootstrap CIs.

The paper (arXiv 2601.16547) claims that CORD closes more of the audio-text gap than imitation
of the text teacher (SFT, forward KL), by large margins on its transfer sets (15 points and
more) and small ones in-domain, while keeping what the audio side could already do. The rule
below (issue 38) is in two parts for each *powered* comparison: whether CORD has an edge over
imitation at all, and whether its transfer edge reaches the paper's margin; a headline then
says in a fixed order what the parts add up to. "Nothing moved" never reads as a result: a
comparison counts only where a positive control moved the metric by a known amount and the CI
of the CORD − imitation difference is narrow enough to see the paper's smallest margin.

Light on purpose (no numpy, no torch): the rule is printed before any model is trained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cord.demo.format import decimal

#: name -> (low, high) bound; None is unbounded on that side. Fixed by issue 38 before any
#: training and stated in docs/claim_demo.md: changing one needs a new issue, never a commit
#: after a run. ``late_first_errors`` (the share of wrong audio answers whose first wrong token
#: comes after token 10) keeps the student's errors at states it reaches itself, where
#: on-policy distillation differs from imitation (at tokens 0-1 the student's prefix is the
#: prompt, the state the teacher's samples start from).
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "teacher_accuracy": (0.40, 0.80),
    "base_audio_over_text": (0.50, 0.85),
    "teacher_at_error": (0.50, None),
    "late_first_errors": (0.30, None),
    "retention_base": (0.70, 0.95),
    "transfer_base_gap": (0.20, None),
}


def _bound_text(lo, hi) -> str:
    if hi is None:
        return f">= {lo}"
    return f"in [{lo}, {hi}]"


def preconditions(values: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """``{name: {value, bound, ok}}`` for the :data:`BOUNDS`."""
    out = {}
    for name, (lo, hi) in BOUNDS.items():
        v = values.get(name)
        ok = v is not None and not math.isnan(v) and v >= lo and (hi is None or v <= hi)
        out[name] = {"value": v, "bound": _bound_text(lo, hi), "ok": bool(ok)}
    return out


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
    f"Let δ = {DELTA * 100:.0f} gap-reduction points (the paper's smallest CORD − FKL margin on "
    "its transfer sets) and, for X in {in-domain, transfer}, D_X = CORD − max(SFT, FKL) on X's "
    "gap reduction (max taken replicate by replicate of the paired bootstrap; 95% CIs). "
    "X is powered when its positive control beats the base (gold SFT in-domain: CI lower "
    "bound ≥ δ; gold SFT on spoken comparisons for transfer: lower bound > 0) and D_X's CI "
    "half-width is ≤ δ. For each powered X, two parts: the EDGE is 'shown' when D_X's lower "
    "bound is > 0 and CORD − base on X has its lower bound > 0, 'absent' when D_X's upper "
    "bound is ≤ 0, otherwise 'open'; the MARGIN (transfer only, 'n/a' in-domain) is 'reached' "
    "when D_X's lower bound is ≥ δ, 'excluded' when its upper bound is < δ, otherwise 'open'. "
    "The headline is the first of these that applies: (1) a failing precondition: "
    "'inconclusive (precondition NAME failed: value vs bound)'; (2) no X powered: "
    "'inconclusive (no power)'; (3) a retention CI of CORD − SFT or CORD − FKL with upper "
    f"bound < −{RETENTION_MARGIN * 100:.0f} points: 'not reproduced (retention)'; (4) the "
    "transfer margin reached and an edge shown: 'reproduced'; (5) an edge shown on some X: "
    "'edge smaller than the paper's' when the transfer margin is excluded, else 'edge shown, "
    "margin open'; (6) the transfer margin excluded and no edge shown: 'not reproduced'; "
    "(7) otherwise 'inconclusive' with what is open. 'Nothing moved' never reads as not "
    "reproduced: without a moving control there is no verdict."
)
"""The rule of issue 38, fixed before any training (docs/claim_demo.md states it with the
preconditions, the rate grid and the analysis plan; changing it needs a new issue)."""
HEADLINES = ("inconclusive", "not reproduced (retention)", "reproduced",
             "edge smaller than the paper's", "edge shown, margin open", "not reproduced")
"""The headlines the rule can give (an inconclusive one carries its reason in parentheses)."""
EDGES = ("shown", "absent", "open")
MARGINS = ("reached", "excluded", "open", "n/a")
NOT_POWERED = "not powered"


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


def verdict_parts(paired: Mapping[str, Mapping[str, Mapping[str, Any]]],
                  power: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """X -> ``{edge, margin, powered}`` by :data:`VERDICT_RULE` (an unpowered X's parts read
    :data:`NOT_POWERED`)."""
    out = {}
    for x, metric in AXES.items():
        if not power[x]["powered"]:
            out[x] = {"edge": NOT_POWERED, "margin": NOT_POWERED, "powered": False}
            continue
        d_lo, d_hi = _bounds(paired[BEST_IMITATION][metric])
        c_lo, _ = _bounds(paired["cord - base"][metric])
        edge = ("shown" if d_lo > 0 and c_lo > 0 else "absent" if d_hi <= 0 else "open")
        if x != "transfer":
            margin = "n/a"
        else:
            margin = "reached" if d_lo >= DELTA else "excluded" if d_hi < DELTA else "open"
        out[x] = {"edge": edge, "margin": margin, "powered": True}
    return out


def verdict(paired: Mapping[str, Mapping[str, Mapping[str, Any]]],
            preconditions: Mapping[str, Mapping[str, Any]] | None = None,
            power: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The headline, its plain-words sentence, the reason and the parts, by
    :data:`VERDICT_RULE`: ``{headline, sentence, reason, parts}``.

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
    power = assess_power(paired) if power is None else power
    parts = verdict_parts(paired, power)
    powered = [x for x in AXES if parts[x]["powered"]]
    shown = "; ".join(_d_text(paired, x) for x in AXES)

    def out(headline, sentence, reason):
        return {"headline": headline, "sentence": sentence, "reason": reason, "parts": parts}

    failed = [k for k, p in (preconditions or {}).items() if not p["ok"]]
    if failed:
        names = ", ".join(f"{k} failed: {decimal(preconditions[k]['value'])} vs "
                          f"{preconditions[k]['bound']}" for k in failed)
        return out(f"inconclusive (precondition {names})",
                   "The base is outside the paper's regime in a respect fixed before the run, "
                   "so by the rule this run cannot say whether CORD beats imitation of the "
                   "teacher; its comparisons are reported below, not judged.",
                   f"precondition {names}; reported, not judged: {shown}")
    if not powered:
        return out("inconclusive (no power)",
                   "No comparison could see the paper's margin (a control that did not move "
                   "or a CI too wide), so this run says nothing either way.",
                   "no power: " + _no_power_text(power))
    worse = []
    for m in IMITATION:
        lo, hi = _bounds(paired[f"cord - {m}"]["retention"])
        if _known(hi) and hi < -RETENTION_MARGIN:
            worse.append(f"CORD − {m.upper()} on retention {_pts(lo, hi)}")
    if worse:
        return out("not reproduced (retention)",
                   "CORD lost more of an audio skill no method trained on than imitation of "
                   "the teacher did, which the paper's claim excludes.",
                   "CORD retains worse than imitation: " + "; ".join(worse))
    edges = [x for x in powered if parts[x]["edge"] == "shown"]
    margin = parts["transfer"]["margin"]
    if margin == "reached" and edges:
        return out("reproduced",
                   f"CORD beat imitation of the teacher, on transfer by at least the paper's "
                   f"smallest margin of {DELTA * 100:.0f} points.", shown)
    if edges:
        names = " and ".join(AXIS_NAMES[x] for x in edges)
        if margin == "excluded":
            return out("edge smaller than the paper's",
                       f"CORD beat imitation of the teacher ({names}), but on transfer by less "
                       f"than the paper's smallest margin of {DELTA * 100:.0f} points.", shown)
        return out("edge shown, margin open",
                   f"CORD beat imitation of the teacher ({names}); whether its transfer edge "
                   f"reaches the paper's {DELTA * 100:.0f} points is open.", shown)
    if margin == "excluded":
        return out("not reproduced",
                   f"CORD's margin over imitation of the teacher on transfer is below the "
                   f"paper's {DELTA * 100:.0f} points, and no edge over imitation was shown.",
                   shown)
    open_parts = [f"{AXIS_NAMES[x]} edge {parts[x]['edge']}" for x in powered]
    if "transfer" in powered:
        open_parts.append(f"transfer margin {margin}")
    open_parts += [f"{AXIS_NAMES[x]} not powered" for x in AXES if x not in powered]
    return out(f"inconclusive ({', '.join(open_parts)})",
               "Neither an edge of CORD over imitation of the teacher nor the paper's margin "
               "was shown or excluded on the powered comparisons.", shown)


def _d_text(paired, x: str) -> str:
    metric = AXES[x]
    d_lo, d_hi = _bounds(paired[BEST_IMITATION][metric])
    c_lo, c_hi = _bounds(paired["cord - base"][metric])
    return (f"{AXIS_NAMES[x]}: CORD − max(SFT, FKL) {_pts(d_lo, d_hi)}, CORD − base "
            f"{_pts(c_lo, c_hi)}")


def _no_power_text(power) -> str:
    parts = []
    for x, p in power.items():
        lo, hi = p["control_minus_base"]["ci95"]
        if not (_known(lo) and _known(hi)):  # a table without its control (--full's extra)
            parts.append(f"{AXIS_NAMES[x]}: its control ({p['control']}) was not run with "
                         "these methods")
            continue
        floor = f"≥ {DELTA * 100:.0f}" if CONTROL_FLOOR[x] > 0 else "> 0"
        parts.append(f"{AXIS_NAMES[x]}: control ({p['control']}) − base {_pts(lo, hi)} "
                     f"(lower bound must be {floor}), CORD − max(SFT, FKL) half-width "
                     f"{_halfwidth(p['halfwidth'])} (must be ≤ {DELTA * 100:.0f})")
    return "; ".join(parts)


def _halfwidth(h: float) -> str:
    return "n/a" if not _known(h) else f"{100 * h:.1f}"
