"""Providers: each loss as this library, naive torch, torch.compile, Liger-Kernel and TRL run it.

A provider turns a case (``bench.inputs``) into a closure that returns the scalar training
loss, so that every mode (fwd, bwd, fwd+bwd) times the same computation. Every provider of a
loss computes the same per-token quantity; where a peer's API cannot express the whole loss
(Liger has no per-token weights), ``note`` says what it computes instead.

Roles: ``ours`` (cord_kernels), ``naive`` (the eager torch baseline every ratio refers to),
``peer`` (what people use today), ``floor`` (plain GEMMs: no loss can be cheaper) and
``baseline`` (another cord_kernels loss shown for comparison, never a peer).

Losses (the scalar each closure returns):
    reverse_kl                    sum_valid D_t / B
    cord_token_loss               sum_t w_t D_t / B, CORD weights (top-K, position)
    token_logprobs                sum_valid log p(y_t)
    jsd                           sum_valid JSD_0.5(p, q) / B (TRL's / Liger's generalized JSD)
    fused_linear_cord_token_loss  cord_token_loss on logits = hidden @ W.T
    fused_linear_token_logprobs   token_logprobs on logits = hidden @ W.T
    fused_linear_distill_loss[d]  sum_valid Div_t / B on logits = hidden @ W.T, for d one of
                                  reverse_kl, forward_kl, jsd (beta 0.5)
    sparse_teacher_loss[kK]       TRL's server loss against the teacher's top-K log-probs: forward
                                  KL with the tail bucket, mean over valid tokens
    fused_linear_sparse_teacher_loss[kK]  the same on logits = hidden @ W.T
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.inputs import IGNORE_INDEX, LogitsCase
from bench.provider_base import (
    DISTILL_BETA,
    DISTILL_LOSSES,
    FUSED_LOSSES,
    FUSED_SPARSE_LOSSES,
    JSD_BETA,
    LOGITS_LOSSES,
    SPARSE_KS,
    SPARSE_LOSSES,
    Closure,
    Provider,
    compiled,
    cuda_only,
    masked_sum_per_batch,
    missing_module,
    naive_divergence,
    naive_jsd,
    naive_reverse_kl,
    naive_token_logprobs,
    weighted_cord,
)
from bench.providers_hidden import (
    FUSED_PROVIDERS,
    SPARSE_LOGITS_PROVIDERS,
    naive_sparse_forward_kl,
    trl_server_loss,
)

# What callers import from here (the losses' names and helpers live in bench.provider_base,
# the hidden-in and sparse-teacher providers in bench.providers_hidden).
__all__ = ["ALL_PROVIDERS", "DISTILL_BETA", "DISTILL_LOSSES", "FUSED_LOSSES",
           "FUSED_PROVIDERS", "FUSED_SPARSE_LOSSES", "JSD_BETA", "LOGITS_LOSSES",
           "LOGITS_PROVIDERS", "SPARSE_KS", "SPARSE_LOSSES", "TRL_REVERSE_KL", "Provider",
           "get_provider", "naive_divergence", "naive_jsd", "naive_reverse_kl",
           "naive_sparse_forward_kl", "naive_token_logprobs", "trl_generalized_jsd",
           "trl_server_loss"]

# ------------------------------------------------------------------------- logits-in providers


def _ours_reverse_kl(c: LogitsCase) -> Closure:
    from cord_kernels import reverse_kl

    return lambda: masked_sum_per_batch(reverse_kl(c.student, c.teacher), c.mask)


def _ours_cord(c: LogitsCase) -> Closure:
    from cord_kernels import cord_token_loss

    return lambda: cord_token_loss(c.student, c.teacher, c.mask)


def _ours_logprobs(c: LogitsCase) -> Closure:
    from cord_kernels import token_logprobs

    return lambda: token_logprobs(c.student, c.labels).sum()


def _with_torch_compile(build: Callable[[LogitsCase], Closure]) -> Callable[[LogitsCase], Closure]:
    """cord_kernels with the opt-in compiled torch path: the ``torch_compile`` setting
    (CORD_TORCH_COMPILE=1) around the forward call (backward follows what forward chose)."""

    def wrapped(c: LogitsCase) -> Closure:
        inner = build(c)

        def loss() -> torch.Tensor:
            from cord_kernels import settings

            with settings.override(torch_compile=True):
                return inner()

        return loss

    return wrapped


def _cpu_only(device: torch.device) -> str | None:
    if device.type == "cuda":
        return "the opt-in compiled torch path is for CPUs; on CUDA cord_kernels runs Triton"
    return None


def _ours_compiled(build: Callable[[LogitsCase], Closure]) -> Provider:
    return Provider("cord_kernels.compile (CORD_TORCH_COMPILE=1)", "ours",
                    _with_torch_compile(build), _cpu_only, needs_warmup=True,
                    note="opt-in compiled torch path; its first call compiles",
                    modes=("fwd+bwd",))


def _liger_reverse_kl(c: LogitsCase) -> Closure:
    from liger_kernel.transformers import LigerJSD

    # LigerJSD(log_q, log_p) takes the student's log-probs first; beta=1 gives
    # sum_v q_v (log q_v - log p_v) = KL(student || teacher), the reverse KL, averaged over the
    # rows whose label is not ignore_index (so it differs from ours by the factor B / n_valid).
    jsd = LigerJSD(beta=1.0, ignore_index=IGNORE_INDEX)
    V = c.student.shape[-1]

    def loss() -> torch.Tensor:
        log_q = F.log_softmax(c.student.view(-1, V).float(), dim=-1)
        log_p = F.log_softmax(c.teacher.view(-1, V).float(), dim=-1)
        return jsd(log_q, log_p, c.labels.view(-1))

    return loss


def _ours_jsd(c: LogitsCase) -> Closure:
    from cord_kernels import jsd

    return lambda: masked_sum_per_batch(jsd(c.student, c.teacher, beta=JSD_BETA), c.mask)


def trl_generalized_jsd(beta: float) -> Callable[[LogitsCase], Closure]:
    """TRL's GKDTrainer.generalized_jsd_loss at ``beta`` (1: the reverse KL), sum / B."""

    def build(c: LogitsCase) -> Closure:
        # trl.experimental warns on import: a peer's own choice, imported only when used.
        from trl.experimental.gkd import GKDTrainer

        labels = torch.where(c.mask, 0, IGNORE_INDEX)
        B = c.mask.shape[0]
        return lambda: GKDTrainer.generalized_jsd_loss(c.student, c.teacher, labels=labels,
                                                       beta=beta, reduction="sum") / B

    return build


def _liger_jsd(c: LogitsCase) -> Closure:
    from liger_kernel.transformers import LigerJSD

    # LigerJSD(student log-probs, teacher log-probs, labels), mixture (1 - beta) p + beta q,
    # mean over the valid rows (so it differs from ours by the factor B / n_valid).
    fn = LigerJSD(beta=JSD_BETA, ignore_index=IGNORE_INDEX)
    V = c.student.shape[-1]
    labels = torch.where(c.mask, 0, IGNORE_INDEX).view(-1)

    def loss() -> torch.Tensor:
        log_p = F.log_softmax(c.student.view(-1, V).float(), dim=-1)
        log_q = F.log_softmax(c.teacher.view(-1, V).float(), dim=-1)
        return fn(log_p, log_q, labels)

    return loss


def _liger_logprobs(c: LogitsCase) -> Closure:
    from liger_kernel.transformers.functional import liger_cross_entropy

    V = c.student.shape[-1]
    # Per-token cross entropy is -log p(label); ignored labels give 0.
    return lambda: -liger_cross_entropy(c.student.view(-1, V), c.labels.view(-1),
                                        ignore_index=IGNORE_INDEX, reduction="none").sum()


def _trl_logprobs(c: LogitsCase) -> Closure:
    from trl.trainer.utils import selective_log_softmax

    # TRL's own helper: a Triton kernel on CUDA, a logsumexp + gather loop elsewhere.
    return lambda: (selective_log_softmax(c.student, c.labels.clamp_min(0)) * c.mask).sum()


def _naive_pair(naive: Callable, reduce: Callable, note: str = "") -> list[Provider]:
    """The eager-torch row of a divergence ``naive(student, teacher)`` reduced by ``reduce(d,
    mask)``, and its torch.compile peer (the naive function compiled, the reduction eager)."""
    return [
        Provider("torch", "naive",
                 lambda c: lambda: reduce(naive(c.student, c.teacher), c.mask)),
        Provider("torch.compile", "peer",
                 lambda c: lambda: reduce(compiled(naive)(c.student, c.teacher), c.mask),
                 needs_warmup=True, note=note),
    ]


LOGITS_PROVIDERS: dict[str, list[Provider]] = {
    "reverse_kl": [
        Provider("cord_kernels", "ours", _ours_reverse_kl),
        _ours_compiled(_ours_reverse_kl),
        *_naive_pair(naive_reverse_kl, masked_sum_per_batch),
        Provider("liger LigerJSD(beta=1)", "peer", _liger_reverse_kl,
                 cuda_only("liger_kernel"),
                 note="mean over valid rows; log_softmax of both sides in torch first"),
    ],
    "cord_token_loss": [
        Provider("cord_kernels", "ours", _ours_cord),
        _ours_compiled(_ours_cord),
        *_naive_pair(naive_reverse_kl, weighted_cord,
                     note="compiled D, CORD weights in eager torch"),
    ],
    "token_logprobs": [
        Provider("cord_kernels", "ours", _ours_logprobs),
        _ours_compiled(_ours_logprobs),
        Provider("torch", "naive",
                 lambda c: lambda: naive_token_logprobs(c.student, c.labels).sum()),
        Provider("torch.compile", "peer",
                 lambda c: lambda: compiled(naive_token_logprobs)(c.student, c.labels).sum(),
                 needs_warmup=True),
        Provider("trl selective_log_softmax", "peer", _trl_logprobs,
                 lambda device: missing_module("trl")),
        Provider("liger cross_entropy", "peer", _liger_logprobs, cuda_only("liger_kernel"),
                 note="-cross_entropy(reduction='none')"),
    ],
    "jsd": [
        Provider("cord_kernels", "ours", _ours_jsd),
        *_naive_pair(naive_jsd, masked_sum_per_batch),
        Provider("trl generalized_jsd_loss", "peer", trl_generalized_jsd(JSD_BETA),
                 lambda device: missing_module("trl"),
                 note="GKDTrainer's loss (eager torch), sum / B"),
        Provider(f"liger LigerJSD(beta={JSD_BETA})", "peer", _liger_jsd,
                 cuda_only("liger_kernel"),
                 note="mean over valid rows; log_softmax of both sides in torch first"),
    ],
}

# TRL's reverse KL on logits in, for scripts/gpu_check.sh (bench.gpu_check): not among the
# reverse_kl providers of ``pytest bench/``, where it is TRL's eager torch, the naive row again.
TRL_REVERSE_KL = Provider("trl generalized_jsd_loss(beta=1)", "peer", trl_generalized_jsd(1.0),
                          lambda device: missing_module("trl"),
                          note="GKDTrainer's loss at beta=1 (eager torch), sum / B")



LOGITS_PROVIDERS.update(SPARSE_LOGITS_PROVIDERS)

ALL_PROVIDERS = {**LOGITS_PROVIDERS, **FUSED_PROVIDERS}


def get_provider(loss: str, name: str) -> Provider:
    if loss not in ALL_PROVIDERS:
        raise ValueError(f"loss must be one of {tuple(ALL_PROVIDERS)}, got {loss!r}")
    for p in ALL_PROVIDERS[loss]:
        if p.name == name:
            return p
    names = [p.name for p in ALL_PROVIDERS[loss]]
    raise ValueError(f"provider for {loss!r} must be one of {names}, got {name!r}")
