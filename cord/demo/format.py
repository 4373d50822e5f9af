"""How both demos print numbers and method names (one home for the report helpers they share)."""

from __future__ import annotations

import math

from tqdm.auto import tqdm

from cord.demo.methods import METHODS


def pc(x: float | None, digits: int = 1) -> str:
    """A share as percent points; "n/a" for a missing or undefined (NaN) one."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.{digits}f}"


def decimal(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def label(method: str) -> str:
    """A method's name in tables and plots ("Base" for the pre-trained model)."""
    return "Base" if method == "base" else METHODS[method].label


def say(msg: str) -> None:
    """One progress line, printed above any live progress bar instead of through it."""
    tqdm.write(msg)
