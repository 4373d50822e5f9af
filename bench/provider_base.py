"""What every provider module of ``bench.providers`` shares: the losses' names, ``Provider``,
the availability checks and the naive torch building blocks (see ``bench.providers``)."""


from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.inputs import IGNORE_INDEX

LOGITS_LOSSES = ("reverse_kl", "cord_token_loss", "token_logprobs", "jsd")
# TRL's and Liger's beta for each divergence of fused_linear_distill_loss (0: forward KL,
# 1: reverse KL, in between the generalized JSD), and the JSD's beta everywhere here.
DISTILL_BETA = {"reverse_kl": 1.0, "forward_kl": 0.0, "jsd": 0.5}
JSD_BETA = DISTILL_BETA["jsd"]
DISTILL_LOSSES = tuple(f"fused_linear_distill_loss[{d}]" for d in DISTILL_BETA)
# Teacher top-k sizes of the sparse-teacher rows (bench/test_sparse.py; the config picks).
SPARSE_KS = (1, 8, 64)
SPARSE_LOSSES = tuple(f"sparse_teacher_loss[k{k}]" for k in SPARSE_KS)
FUSED_SPARSE_LOSSES = tuple(f"fused_linear_sparse_teacher_loss[k{k}]" for k in SPARSE_KS)
FUSED_LOSSES = ("fused_linear_cord_token_loss", "fused_linear_token_logprobs", *DISTILL_LOSSES,
                *FUSED_SPARSE_LOSSES)

Closure = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class Provider:
    name: str
    role: str  # "ours" | "naive" | "peer" | "floor"
    build: Callable[[object], Closure]
    # Why this provider cannot run on this device/install, or None when it can.
    unavailable: Callable[[torch.device], str | None] = lambda device: None
    note: str = ""
    # torch.compile providers compile on their first call: warm them up outside any timing.
    needs_warmup: bool = False
    # The modes worth a row (None: every mode of the run).
    modes: tuple[str, ...] | None = None

    @property
    def slug(self) -> str:
        """A short test id: "liger LigerJSD(beta=1)" -> "liger", "4 GEMMs (floor)" -> "floor"."""
        if self.role == "floor":
            return "floor_valid" if "valid" in self.name else "floor"
        return self.name.split()[0]


# ------------------------------------------------------------------------------ availability


def missing_module(module: str) -> str | None:
    return None if importlib.util.find_spec(module) else f"{module} is not installed"


def cuda_only(package: str) -> Callable[[torch.device], str | None]:
    def check(device: torch.device) -> str | None:
        if device.type != "cuda":
            return (f"{package}'s kernel is Triton-only; on the CPU it would run in the Triton "
                    "interpreter, which measures the interpreter, not the kernel")
        return missing_module(package)

    return check


# ------------------------------------------------------------------- shared naive building blocks


def naive_reverse_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """(..., V) logits -> (...) KL(p || q) in fp32, the way a training script writes it."""
    log_p = F.log_softmax(student.float(), dim=-1)
    log_q = F.log_softmax(teacher.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def naive_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(..., V), (...) -> (...) log p(label) in fp32; ignored labels give 0."""
    logp = F.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(labels == IGNORE_INDEX, 0.0)


def naive_jsd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """(..., V) logits -> (...) generalized JSD (beta = JSD_BETA) in fp32, as TRL writes it:
    log-softmax of both, the mixture's log by logsumexp, two KLs."""
    log_p = F.log_softmax(student.float(), dim=-1)
    log_q = F.log_softmax(teacher.float(), dim=-1)
    log_m = torch.logaddexp(log_p + math.log1p(-JSD_BETA), log_q + math.log(JSD_BETA))
    kl_q = (log_q.exp() * (log_q - log_m)).sum(-1)
    kl_p = (log_p.exp() * (log_p - log_m)).sum(-1)
    return JSD_BETA * kl_q + (1 - JSD_BETA) * kl_p


def naive_divergence(divergence: str, student: torch.Tensor, teacher: torch.Tensor):
    """The per-row divergence of ``fused_linear_distill_loss[divergence]`` in plain torch."""
    if divergence == "reverse_kl":
        return naive_reverse_kl(student, teacher)
    if divergence == "forward_kl":
        return naive_reverse_kl(teacher, student)
    return naive_jsd(student, teacher)


@functools.cache
def compiled(fn: Callable) -> Callable:
    # Made on first use: building a compiled function imports dynamo (seconds), which the
    # providers that never compile should not pay. dynamic=False: one specialised graph per
    # shape, like a training run with fixed padding.
    return torch.compile(fn, dynamic=False)


def weighted_cord(d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_t w_t D_t / B with the CORD weights computed from D (no gradient through w)."""
    from cord_kernels import cord_weights

    d = d.masked_fill(~mask, 0.0)
    w = cord_weights(d.detach(), mask)
    return (w * d).sum() / mask.shape[0]


def masked_sum_per_batch(d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return d.masked_fill(~mask, 0.0).sum() / mask.shape[0]


