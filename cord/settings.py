"""Every environment variable the ``cord`` package reads, read once, when this module is first
imported. No other module of ``cord`` reads the environment; ``docs/settings.md`` lists these
variables next to cord_kernels' own (``cord_kernels.settings``), and a test keeps the two in
step. Options of a training run are ``CordConfig`` fields, not variables.

It imports nothing heavy (``cord --help`` must not import torch).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Variable:
    """One environment variable: the :class:`Settings` field it sets, its default and what it
    does."""

    name: str
    field: str
    default: str
    meaning: str


@dataclass(frozen=True)
class Settings:
    """The values in force; see :data:`VARIABLES` for what each field does."""

    cache_dir: Path = Path("~/.cache/cord").expanduser()
    rank: int = 0


VARIABLES = (
    Variable("CORD_CACHE", "cache_dir", "~/.cache/cord",
             "where the demos keep speech clips and pre-trained bases (in its demo/ folder)"),
    Variable("RANK", "rank", "0",
             "this process's rank, as torchrun or accelerate launch set it: only rank 0 prints "
             "the final summary of cord train"),
)


def from_env(environ: Mapping[str, str] = os.environ) -> Settings:
    """The settings ``environ`` asks for (an unset or empty variable keeps its default)."""
    values: dict[str, object] = {}
    if environ.get("CORD_CACHE", "").strip():
        values["cache_dir"] = Path(environ["CORD_CACHE"].strip()).expanduser()
    if environ.get("RANK", "").strip():
        try:
            values["rank"] = int(environ["RANK"])
        except ValueError:
            raise ValueError(f"RANK must be an integer, got {environ['RANK']!r}") from None
    return Settings(**values)


_current = from_env()


def get() -> Settings:
    """The settings read from the environment at import."""
    return _current


def hf_hub_cache() -> str | None:
    """The Hugging Face hub cache that the environment names (``HF_HUB_CACHE``, else
    ``HF_HOME``/hub; None: huggingface_hub's default). Hugging Face's variables, not cord's, so
    read when asked rather than at import: a caller (or a test) may point them elsewhere after
    huggingface_hub itself has read them."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None
