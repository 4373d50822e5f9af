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

    NaN where the base has no gap to close: Δ_base below one item's worth (1 / items), zero or
    negative included. A reduction of a gap that is not there is undefined, not 100%; the
    reports print it as "n/a (no gap on the base)" and the bootstrap drops such replicates.
    """
    base_text = np.asarray(base_text, dtype=np.float64)
    n = base_text.shape[-1]
    delta_base = base_text.mean(-1) - np.asarray(base_audio, dtype=np.float64).mean(-1)
    delta_method = base_text.mean(-1) - np.asarray(method_audio, dtype=np.float64).mean(-1)
    no_gap = delta_base < 1.0 / n - 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(no_gap, np.nan, 1.0 - delta_method / np.where(no_gap, 1.0, delta_base))


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

    return {
        "methods": {m: {"mean": point[m], "ci95": ci95(boot[m], level)} for m in arrays},
        "paired": {f"{a} - {b}": {"mean": point[a] - point[b],
                                  "ci95": ci95(boot[a] - boot[b], level)} for a, b in pairs},
    }


def ci95(replicates: np.ndarray, level: float = 0.95) -> list[float]:
    """Percentile interval of bootstrap replicates (non-finite ones dropped; NaNs if none are
    left, as when the base has no gap in any replicate)."""
    values = np.asarray(replicates, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [float("nan"), float("nan")]
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return [float(np.percentile(values, lo_q)), float(np.percentile(values, hi_q))]


class PairedItemBootstrap:
    """One bootstrap draw shared by every method and metric: per replicate, the items of each
    item set (drawn independently per set) and the post-training seeds (shared by all sets and
    methods, since seed s of every method saw the same data order).

    Every statistic of every method is computed on the same replicates, so differences between
    methods (and the max over two methods) are paired replicate by replicate.

    Args:
        sizes: item-set name -> number of items.
        seeds: number of post-training seeds of the methods.
    """

    def __init__(self, sizes: Mapping[str, int], seeds: int, *, resamples: int = 2000,
                 seed: int = 0):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        rng = np.random.default_rng(seed)
        self.sizes = dict(sizes)
        self.items = {k: rng.integers(0, n, size=(resamples, n)) for k, n in self.sizes.items()}
        self.seeds = rng.integers(0, seeds, size=(resamples, seeds))
        self.n_seeds = seeds

    def _per_item(self, name: str, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(point per-item means, (resamples, items) replicate per-item means)."""
        a = np.asarray(a, dtype=np.float64)
        if a.ndim == 1:
            a = a[None]
        n = self.sizes[name]
        if a.shape[-1] != n or a.shape[0] not in (1, self.n_seeds):
            raise ValueError(f"a {name!r} array must be (1 or {self.n_seeds} seeds, {n} items), "
                             f"got {a.shape}")
        point = a.mean(0)
        if a.shape[0] == 1:  # the base: one model, no seed to draw
            reps = a[0][self.items[name]]
        else:
            reps = np.take_along_axis(a[self.seeds].mean(1), self.items[name], axis=1)
        return point, reps

    def accuracy(self, name: str, a) -> tuple[float, np.ndarray]:
        """Mean accuracy of ``a`` ((seeds, items) or (items,) 0/1) on set ``name``: the point
        estimate and its (resamples,) replicates."""
        point, reps = self._per_item(name, a)
        return float(point.mean()), reps.mean(-1)

    def gap_reduction(self, name: str, base_text, base_audio, method_audio
                      ) -> tuple[float, np.ndarray]:
        """:func:`gap_reduction` of ``method_audio`` on set ``name``, with replicates."""
        bt, bt_reps = self._per_item(name, base_text)
        ba, ba_reps = self._per_item(name, base_audio)
        ma, ma_reps = self._per_item(name, method_audio)
        return (float(gap_reduction(bt, ba, ma)), gap_reduction(bt_reps, ba_reps, ma_reps))
