"""Paired bootstrap confidence intervals for the paper's gap metrics.

Every method is scored on the same held-out items, so the comparisons are paired: a bootstrap
replicate draws the items (and, with several post-training seeds, the seeds) once, with
replacement, and recomputes every method's gap reduction on that same draw. The interval of a
difference between two methods therefore reflects only how they differ on shared items, not
the items' own difficulty spread.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def gap_reduction(base_text: np.ndarray, base_audio: np.ndarray,
                  method_audio: np.ndarray) -> np.ndarray:
    """1 − Δ_method / Δ_base, Δ = Acc_text(base) − Acc_audio(·), along the last axis (items).

    ``base_text``/``base_audio``: (..., items) 0/1; ``method_audio``: (..., items) accuracy per
    item (a mean over seeds is allowed).
    """
    delta_base = base_text.mean(-1) - base_audio.mean(-1)
    delta_method = base_text.mean(-1) - method_audio.mean(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - delta_method / delta_base


def paired_bootstrap(
    base_text: np.ndarray,
    base_audio: np.ndarray,
    methods: Mapping[str, np.ndarray],
    *,
    pairs: tuple[tuple[str, str], ...] = (),
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict]:
    """Percentile-bootstrap CIs of every method's gap reduction and of paired differences.

    Args:
        base_text, base_audio: (items,) 0/1 correctness of the base model.
        methods: name -> (seeds, items) 0/1 audio correctness of each post-trained seed.
        pairs: (a, b) differences a − b to report.

    Returns ``{"methods": {name: {"mean", "ci95"}}, "paired": {"a - b": {"mean", "ci95"}}}``;
    ``mean`` is the point estimate on the observed data.
    """
    base_text = np.asarray(base_text, dtype=np.float64)
    base_audio = np.asarray(base_audio, dtype=np.float64)
    if base_text.ndim != 1 or base_text.shape != base_audio.shape:
        raise ValueError(f"base_text and base_audio must be equal (items,) arrays, got "
                         f"{base_text.shape} and {base_audio.shape}")
    n = base_text.shape[0]
    arrays = {}
    for name, a in methods.items():
        a = np.asarray(a, dtype=np.float64)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[1] != n:
            raise ValueError(f"methods[{name!r}] must be (seeds, {n}), got {a.shape}")
        arrays[name] = a
    for a, b in pairs:
        for m in (a, b):
            if m not in arrays:
                raise ValueError(f"pair ({a!r}, {b!r}) names {m!r}, which is not in methods "
                                 f"{sorted(arrays)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    point = {m: float(gap_reduction(base_text, base_audio, a.mean(0)))
             for m, a in arrays.items()}
    items = rng.integers(0, n, size=(resamples, n))
    boot = {}
    for m, a in arrays.items():
        seeds = rng.integers(0, a.shape[0], size=(resamples, a.shape[0]))
        # (resamples, items): each replicate's seeds averaged, at its drawn items
        per_item = a[seeds].mean(1)
        method_audio = np.take_along_axis(per_item, items, axis=1)
        boot[m] = gap_reduction(base_text[items], base_audio[items], method_audio)

    def ci(values: np.ndarray) -> list[float]:
        values = values[np.isfinite(values)]
        return [float(np.percentile(values, lo_q)), float(np.percentile(values, hi_q))]

    return {
        "methods": {m: {"mean": point[m], "ci95": ci(boot[m])} for m in arrays},
        "paired": {f"{a} - {b}": {"mean": point[a] - point[b], "ci95": ci(boot[a] - boot[b])}
                   for a, b in pairs},
    }
