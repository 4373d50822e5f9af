"""What the benchmark run measures: device, dtype, shapes and how many timed rounds.

Defaults finish in about four minutes on a 2-core CPU (fwd+bwd only): a Qwen2-sized vocabulary
with few rows for the logits-in losses and the N=1024 fused-linear comparison of SPEC section 3.
``CORD_BENCH_FULL=1`` sweeps the shapes that matter on a GPU (V up to 262,400, N up to 16k);
shapes whose inputs cannot fit in the memory at hand are skipped with the reason.

Environment:
    CORD_BENCH_FULL=1        the full sweep
    CORD_BENCH_QUICK=1       tiny shapes: checks the harness end to end in about a minute
    CORD_BENCH_SPARSE_FULL=1 the sparse-teacher rows at issue 22's sizes (N=4096, V=151,936,
                             k in {1, 8, 64}); the harness's memory guard wants ~30 GB of RAM
                             for N=4096 on a CPU, so a 24 GB machine sets N lower with
    CORD_BENCH_SPARSE_N=1024 (the token count of those rows)
    CORD_BENCH_DEVICE=cpu    force the CPU even where CUDA is present
    CORD_BENCH_OUT=DIR       where results go (default bench/results)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

QWEN2_VOCAB = 151_936
GEMMA3N_VOCAB = 262_400
QWEN2_0_5B_HIDDEN = 896

RESULTS_DIR = Path(__file__).parent / "results"


class _Shape:
    """A shape's ``id`` (its name in tables and test ids): the class's ``ID`` filled in with
    its fields."""

    ID: ClassVar[str]

    @property
    def id(self) -> str:
        return self.ID.format(**vars(self))


@dataclass(frozen=True)
class LogitsShape(_Shape):
    """Logits-in losses: N = B * T token rows of V logits."""

    ID: ClassVar[str] = "N{n_tokens}-V{vocab}"
    n_tokens: int
    vocab: int


@dataclass(frozen=True)
class HiddenShape(_Shape):
    """Hidden-states-in (fused-linear) losses: N token rows of H, an LM head of (V, H)."""

    ID: ClassVar[str] = "N{n_tokens}-H{hidden}-V{vocab}"
    n_tokens: int
    vocab: int
    hidden: int


@dataclass(frozen=True)
class BenchConfig:
    full: bool
    device: torch.device
    dtype: torch.dtype
    logits_shapes: tuple[LogitsShape, ...]
    fused_shapes: tuple[HiddenShape, ...]
    # The hidden-in token-logprob loss costs a quarter of the CORD comparison; smaller defaults.
    fused_logprob_shapes: tuple[HiddenShape, ...]
    modes: tuple[str, ...] = ("fwd", "bwd", "fwd+bwd")
    fused_modes: tuple[str, ...] = ("fwd+bwd",)
    out_dir: Path = field(default=RESULTS_DIR)
    # Sparse-teacher losses (bench/test_sparse.py): teacher top-k sizes and the shapes, logits
    # in and hidden states in. The CPU default is one small case (k = 8, N = 256); issue 22's
    # N = 4096 sweep runs on CUDA, with CORD_BENCH_FULL=1 or CORD_BENCH_SPARSE_FULL=1.
    sparse_ks: tuple[int, ...] = (8,)
    sparse_logits_shapes: tuple[LogitsShape, ...] = (LogitsShape(256, QWEN2_VOCAB),)
    sparse_fused_shapes: tuple[HiddenShape, ...] = (
        HiddenShape(256, QWEN2_VOCAB, QWEN2_0_5B_HIDDEN),)

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def rounds(self, seconds_per_call: float) -> int:
        """Timed rounds for a call of the given cost: ~0.5 s of timing per benchmark on the
        CPU by default (1 s on CUDA, 10 s in the full sweep), 1..25. (The harness takes at
        least 3 rounds of sub-second calls.)"""
        budget = 10.0 if self.full else 1.0 if self.on_cuda else 0.5
        return int(min(25, max(1, budget // max(seconds_per_call, 1e-6))))


def _pick_device() -> torch.device:
    forced = os.environ.get("CORD_BENCH_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _env_tokens(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return int(raw)


def load_config() -> BenchConfig:
    full = os.environ.get("CORD_BENCH_FULL", "0") == "1"
    device = _pick_device()
    on_cuda = device.type == "cuda"
    # bf16 is what training runs use on a GPU (and what SPEC's 6 B/entry floor assumes); CPU
    # matmuls and softmaxes are fastest and most representative in fp32.
    dtype = torch.bfloat16 if on_cuda else torch.float32
    H = QWEN2_0_5B_HIDDEN
    modes = ("fwd", "bwd", "fwd+bwd")
    if os.environ.get("CORD_BENCH_QUICK", "0") == "1":
        logits = (LogitsShape(16, 4096), LogitsShape(64, 4096))
        fused = fused_lp = (HiddenShape(256, 4096, 64),)
        fused_modes = ("fwd", "fwd+bwd")
    elif full:
        ns = (1024, 4096, 16384)
        logits = tuple(LogitsShape(n, v) for v in (QWEN2_VOCAB, GEMMA3N_VOCAB) for n in ns)
        fused = tuple(HiddenShape(n, QWEN2_VOCAB, H) for n in (1024, 4096, 16384))
        fused += tuple(HiddenShape(n, GEMMA3N_VOCAB, 2048) for n in (4096, 16384))
        fused_lp = fused
        fused_modes = ("fwd", "fwd+bwd")
    elif on_cuda:
        logits = tuple(LogitsShape(n, QWEN2_VOCAB) for n in (1024, 4096, 16384))
        fused = tuple(HiddenShape(n, QWEN2_VOCAB, H) for n in (1024, 4096))
        fused_lp = fused
        fused_modes = ("fwd", "fwd+bwd")
    else:
        # fwd and bwd alone are GPU questions (which pass is bandwidth-bound); on the CPU the
        # default times what a training step runs, and keeps `pytest bench/` within 5 minutes.
        modes = ("fwd+bwd",)
        logits = tuple(LogitsShape(n, QWEN2_VOCAB) for n in (64, 256))
        fused = (HiddenShape(1024, QWEN2_VOCAB, H),)
        fused_lp = (HiddenShape(256, QWEN2_VOCAB, H),)
        fused_modes = ("fwd+bwd",)
    out = Path(os.environ.get("CORD_BENCH_OUT", RESULTS_DIR))
    sparse = {}
    if os.environ.get("CORD_BENCH_QUICK", "0") == "1":
        sparse = dict(sparse_ks=(8,), sparse_logits_shapes=(LogitsShape(64, 4096),),
                      sparse_fused_shapes=(HiddenShape(256, 4096, 64),))
    elif full or on_cuda or os.environ.get("CORD_BENCH_SPARSE_FULL", "0") == "1":
        n = _env_tokens("CORD_BENCH_SPARSE_N", 4096)
        sparse = dict(sparse_ks=(1, 8, 64), sparse_logits_shapes=(LogitsShape(n, QWEN2_VOCAB),),
                      sparse_fused_shapes=(HiddenShape(n, QWEN2_VOCAB, H),))
    return BenchConfig(full, device, dtype, logits, fused, fused_lp, modes=modes,
                       fused_modes=fused_modes, out_dir=out, **sparse)
