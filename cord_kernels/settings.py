"""Every environment variable cord_kernels reads, read once, when the package is imported.

No other module of the package reads the environment (``tests/test_settings.py`` checks that,
and that ``docs/settings.md`` lists exactly :data:`VARIABLES`). A bad value raises at import,
naming the variable. To change a setting for a block of code (the bench, the tests), without
touching ``os.environ``:

    >>> import cord_kernels.settings
    >>> with cord_kernels.settings.override(block_v=8192, num_warps=16):
    ...     d = cord_kernels.reverse_kl(s, u)

The thread count of the CPU path is the caller's to set (``torch.set_num_threads``): no
function of the package changes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

#: Warp counts Triton launches with.
WARP_CHOICES = (1, 2, 4, 8, 16, 32)
#: What Triton itself takes as true in ``TRITON_INTERPRET`` (``triton.knobs.env_bool``).
_TRUE = ("1", "true", "yes", "on", "y")


@dataclass(frozen=True)
class Variable:
    """One environment variable: the :class:`Settings` field it sets, its default as the
    environment would spell it, and what it does."""

    name: str
    field: str
    default: str
    meaning: str


VARIABLES = (
    Variable("CORD_BLOCK_V", "block_v", "4096",
             "the largest BLOCK_V of the streaming kernels (a power of two >= 16); smaller "
             "vocabularies use the next power of two"),
    Variable("CORD_NUM_WARPS", "num_warps", "8",
             "warps per program of the streaming kernels: 1, 2, 4, 8, 16 or 32"),
    Variable("CORD_TORCH_COMPILE", "torch_compile", "0",
             "1: the torch path (CPUs) runs through torch.compile; its first call compiles"),
    Variable("TRITON_INTERPRET", "interpret", "0",
             "1: impl=None runs the Triton kernels on CPU tensors through the interpreter. "
             "Triton reads it when the kernels are decorated: set it before the first import"),
)


@dataclass(frozen=True)
class Settings:
    """The values in force; see :data:`VARIABLES` for what each field does."""

    block_v: int = 4096
    num_warps: int = 8
    torch_compile: bool = False
    interpret: bool = False

    def __post_init__(self) -> None:
        # tl.arange needs a power of two; a bad value would only fail inside Triton's compiler.
        if self.block_v < 16 or self.block_v & (self.block_v - 1):
            raise ValueError(
                f"block_v (CORD_BLOCK_V) must be a power of two >= 16, got {self.block_v}")
        if self.num_warps not in WARP_CHOICES:
            raise ValueError(f"num_warps (CORD_NUM_WARPS) must be one of {WARP_CHOICES}, "
                             f"got {self.num_warps}")


def _parse(var: Variable, raw: str):
    kind = type(getattr(Settings, var.field))
    if kind is bool:
        return raw.lower() in _TRUE
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{var.name} must be an integer, got {raw!r}") from None


def from_env(environ: Mapping[str, str] = os.environ) -> Settings:
    """The settings ``environ`` asks for (an unset or empty variable keeps its default)."""
    values = {}
    for var in VARIABLES:
        raw = environ.get(var.name, "").strip()
        if raw:
            values[var.field] = _parse(var, raw)
    return Settings(**values)


_current = from_env()


def get() -> Settings:
    """The settings in force: the environment's at import, or an :func:`override`'s."""
    return _current


@contextlib.contextmanager
def override(**changes) -> Iterator[Settings]:
    """Changes the named settings inside the ``with`` block (checked as at import), and
    restores the previous ones when it ends."""
    global _current
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(Settings)})
    if unknown:
        raise ValueError(f"no cord_kernels setting named {unknown}; the settings are "
                         f"{[v.field for v in VARIABLES]}")
    previous = _current
    _current = dataclasses.replace(previous, **changes)
    try:
        yield _current
    finally:
        _current = previous
