"""The statistics of the per-token audio-text divergence D_t, shared by ``cord train``'s metrics
(``kl_p80``) and ``cord analyze`` (Figures 2 and 3). Only numpy is imported here, so both the
training loop and the light ``cord analyze`` command line read the same threshold."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["HIGH_KL_PERCENTILE", "check_percentile", "pearson_r"]

#: The paper's threshold between "pivotal" (high-KL) and aligned tokens: the 80th percentile
#: of D_t (``kl_p80`` in the training metrics, ``cord analyze --percentile``'s default).
HIGH_KL_PERCENTILE = 80.0


def check_percentile(percentile: float, name: str = "percentile") -> None:
    """Raises a one-line ValueError naming ``name`` unless ``0 < percentile < 100``."""
    if not 0 < percentile < 100:
        raise ValueError(f"{name} must be in (0, 100), got {percentile}")


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of two equal-length sequences; NaN when either is constant."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {x.shape} and {y.shape}")
    if x.size < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum() / denom) if denom > 0 else float("nan")
