"""The claim demo's plots: training curves, the KL at right and wrong answers, and the
comparisons with their paired-bootstrap CIs (a panel with nothing to show says "n/a")."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cord.demo.format import label

METRIC_LABELS = {
    "in_domain_gap_reduction": "in-domain gap reduction",
    "transfer_gap_reduction": "transfer gap reduction",
    "retention": "retention",
    "text_after": "text after",
}


def _na(ax, why: str) -> None:
    """Says "n/a" and why on a panel that has nothing to show, instead of leaving it blank."""
    ax.text(0.5, 0.5, f"n/a\n({why})", ha="center", va="center", transform=ax.transAxes,
            fontsize=9, color="gray")
    ax.set_xticks([])


def plot_curves(results: dict[str, Any], path: Path) -> Path | None:
    """Validation in-domain gap, transfer gap, retention and text accuracy against step."""
    curves = results.get("curves") or {}
    if not curves:
        return None
    base = results["curves_base"]
    fig = Figure(figsize=(13, 3.2))
    axes = fig.subplots(1, 4)
    panels = (("in-domain gap (text base − audio)", lambda p: base["text"] - p["audio"]),
              ("transfer gap (text base − audio)",
               lambda p: base["transfer_text"] - p["transfer_audio"]),
              ("retention (beep counting)", lambda p: p["retention"]),
              ("text accuracy (in-domain)", lambda p: p["text"]))
    for ax, (title, f) in zip(axes, panels):
        for i, (m, curve) in enumerate(curves.items()):
            steps = [0] + [p["step"] for p in curve]
            ax.plot(steps, [100 * f(base)] + [100 * f(p) for p in curve], marker="o",
                    label=label(m)[2:], color=f"C{i}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[0].set_ylabel("%")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_kl_correct_wrong(results: dict[str, Any], path: Path) -> Path | None:
    """The paper's Figure 2 contrast: mean KL along correct and wrong audio rollouts, on the
    base and after each method (seed 0)."""
    kl = results.get("kl") or {}
    rows = [("base", kl.get("base"))] + list((kl.get("after") or {}).items())
    rows = [(m, s) for m, s in rows if s]
    if not rows:
        return None
    fig = Figure(figsize=(8, 3.2))
    ax = fig.subplots()
    x = np.arange(len(rows))
    for j, (key, name) in enumerate((("mean_kl_correct", "correct rollouts"),
                                     ("mean_kl_incorrect", "wrong rollouts"))):
        ax.bar(x + 0.4 * j - 0.2, [s.get(key) or 0.0 for _, s in rows], 0.4, label=name)
        for i, (_, s) in enumerate(rows):
            if s.get(key) is None:  # no rollout of that kind: no mean, not a zero
                ax.text(i + 0.4 * j - 0.2, 0, "n/a", ha="center", va="bottom", fontsize=7,
                        color="gray", rotation=90)
    ax.set_xticks(x, [label(m).lstrip("+ ") for m, _ in rows], fontsize=8, rotation=15)
    ax.set_ylabel("mean KL(audio || text) per token")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_reductions(results: dict[str, Any], path: Path, table: str = "a") -> Path:
    """Every method's in-domain and transfer gap reduction and retention with 95% CIs."""
    summary = results["summary"][table]
    methods = [m for m in summary if m != "base"]
    fig = Figure(figsize=(11, 3.2))
    axes = fig.subplots(1, 3, sharey=True)
    for ax, metric in zip(axes, ("in_domain_gap_reduction", "transfer_gap_reduction",
                                 "retention")):
        shown = 0
        for i, m in enumerate(methods):
            row = summary[m]
            v, (lo, hi) = row[metric], row[f"{metric}_ci95"]
            if v is None or math.isnan(v):
                continue
            shown += 1
            ax.errorbar([100 * v], [i], xerr=[[100 * (v - lo)], [100 * (hi - v)]], fmt="o",
                        color=f"C{i}", capsize=3)
        if not shown:
            _na(ax, "no gap on the base" if "gap" in metric else "no value")
        if metric == "retention":
            ax.axvline(100 * summary["base"]["retention"], color="gray", ls="--", lw=1)
        else:
            ax.axvline(0, color="gray", ls="--", lw=1)
        ax.set_title(METRIC_LABELS[metric] + " (%)", fontsize=9)
    axes[0].set_yticks(range(len(methods)), [label(m).lstrip("+ ") for m in methods],
                       fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


# --------------------------------------------------------------------------------------------
# README of a run
# --------------------------------------------------------------------------------------------
