"""The hidden-states-in (fused-linear) and sparse-teacher providers of ``bench.providers``:
the plain-GEMM floors, each fused loss as cord_kernels, naive torch, TRL and Liger run it, and
the sparse-teacher losses against a teacher's top-k (logits in and fused)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.inputs import IGNORE_INDEX, HiddenCase, LogitsCase
from bench.provider_base import (
    DISTILL_BETA,
    FUSED_SPARSE_LOSSES,
    JSD_BETA,
    SPARSE_LOSSES,
    Closure,
    Provider,
    masked_sum_per_batch,
    missing_module,
    naive_divergence,
    naive_reverse_kl,
    naive_token_logprobs,
    weighted_cord,
)

# ------------------------------------------------------------------------ hidden-in providers


class _PlainGemms(torch.autograd.Function):
    """The GEMMs any hidden-in loss must run, and nothing else: the floor.

    forward:  s = h_s @ W.T, u = h_t @ W.T (teacher only when ``with_teacher``)
    backward: dh = s @ W, dW = s.T @ h_s (s stands in for the logits gradient)
    """

    @staticmethod
    def forward(ctx, h_s, h_t, weight, with_teacher: bool):
        s = h_s @ weight.T  # (N, H) x (H, V) -> (N, V)
        if with_teacher:
            h_t @ weight.T  # the teacher projection; its result is not needed here
        ctx.save_for_backward(h_s, weight, s)
        return s.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        h_s, weight, s = ctx.saved_tensors
        return s @ weight, None, s.T @ h_s, None  # (N, V)x(V, H), (V, N)x(N, H)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _floor(with_teacher: bool, valid_only: bool = False) -> Callable[[HiddenCase], Closure]:
    def build(c: HiddenCase) -> Closure:
        def rows(h: torch.Tensor) -> torch.Tensor:
            return h[c.mask] if valid_only else _flat(h)

        return lambda: _PlainGemms.apply(rows(c.student_hidden), rows(c.teacher_hidden),
                                         c.weight, with_teacher)

    return build


def _naive_fused_cord(c: HiddenCase) -> Closure:
    def loss() -> torch.Tensor:
        s = c.student_hidden @ c.weight.T  # (B, T, V) materialised
        with torch.no_grad():
            u = c.teacher_hidden @ c.weight.T
        return weighted_cord(naive_reverse_kl(s, u), c.mask)

    return loss


def _naive_fused_logprobs(c: HiddenCase) -> Closure:
    return lambda: naive_token_logprobs(c.student_hidden @ c.weight.T, c.labels).sum()


def _ours_fused_cord(c: HiddenCase) -> Closure:
    from cord_kernels import fused_linear_cord_token_loss

    return lambda: fused_linear_cord_token_loss(c.student_hidden, c.teacher_hidden, c.weight,
                                                c.mask)


def _ours_fused_logprobs(c: HiddenCase) -> Closure:
    from cord_kernels import fused_linear_token_logprobs

    return lambda: fused_linear_token_logprobs(c.student_hidden, c.weight, c.labels).sum()


def _trl_fused_cord(c: HiddenCase) -> Closure:
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    valid = c.mask.reshape(-1)
    # As TRL's distillation trainer calls it: beta=1 is the reverse KL(student || teacher);
    # on Triton devices only the valid rows are projected, elsewhere every row is.
    compact = c.weight.device.type == "cuda"

    def loss() -> torch.Tensor:
        h_s, h_t = _flat(c.student_hidden), _flat(c.teacher_hidden)
        if compact:
            h_s, h_t = h_s[valid], h_t[valid]
        d, _entropy = ChunkedDivergenceFunction.apply(h_s, c.weight, None, h_t,
                                                      c.weight.detach(), None, 1.0)
        if compact:
            d = d.new_zeros(valid.shape).masked_scatter(valid, d)
        return weighted_cord(d.view(c.mask.shape), c.mask)

    return loss


def _trl_fused_logprobs(c: HiddenCase) -> Closure:
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    # TRL's default vocabulary chunk (trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE).
    chunk = 32768

    def loss() -> torch.Tensor:
        lp = ChunkedLogProbFunction.apply(_flat(c.student_hidden), c.weight, None,
                                          c.labels.clamp_min(0).reshape(-1), 1.0, chunk, None,
                                          1.0, ())[0]
        return (lp.view(c.mask.shape) * c.mask).sum()

    return loss


def _liger_fused_available(device: torch.device) -> str | None:
    # liger_kernel.chunked_loss is pure torch (torch.func over token chunks): it runs on the CPU.
    return missing_module("liger_kernel")


def _liger_fused_jsd(c: HiddenCase) -> Closure:
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    # beta=1: F.kl_div(teacher_logp, student_logp, log_target=True) summed over V is
    # KL(student || teacher), the reverse KL; weight_hard_loss=0 drops its CE term. It takes
    # no per-token weights (uniform, mean over valid tokens) and runs forward and backward
    # inside forward. compiled=False: its torch.compile path targets GPUs.
    fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=1.0,
                                 ignore_index=IGNORE_INDEX, compiled=c.weight.is_cuda,
                                 chunk_size=1024)
    return lambda: fn(_flat(c.student_hidden), c.weight, _flat(c.teacher_hidden),
                      c.weight.detach(), c.labels.reshape(-1))


def _ours_fused_distill(divergence: str) -> Callable[[HiddenCase], Closure]:
    def build(c: HiddenCase) -> Closure:
        from cord_kernels import fused_linear_distill_loss

        return lambda: fused_linear_distill_loss(c.student_hidden, c.teacher_hidden, c.weight,
                                                 c.mask, divergence=divergence,
                                                 jsd_beta=JSD_BETA)

    return build


def _naive_fused_distill(divergence: str) -> Callable[[HiddenCase], Closure]:
    def build(c: HiddenCase) -> Closure:
        def loss() -> torch.Tensor:
            s = c.student_hidden @ c.weight.T  # (B, T, V) materialised
            with torch.no_grad():
                u = c.teacher_hidden @ c.weight.T
            return masked_sum_per_batch(naive_divergence(divergence, s, u), c.mask)

        return loss

    return build


def _trl_fused_distill(beta: float) -> Callable[[HiddenCase], Closure]:
    def build(c: HiddenCase) -> Closure:
        from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

        valid = c.mask.reshape(-1)
        B = c.mask.shape[0]

        def loss() -> torch.Tensor:
            # As TRL's DistillationTrainer calls it, on the valid rows only.
            d, _entropy = ChunkedDivergenceFunction.apply(
                _flat(c.student_hidden)[valid], c.weight, None, _flat(c.teacher_hidden)[valid],
                c.weight.detach(), None, beta)
            return d.sum() / B

        return loss

    return build


def _liger_fused_distill(beta: float) -> Callable[[HiddenCase], Closure]:
    def build(c: HiddenCase) -> Closure:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta,
                                     ignore_index=IGNORE_INDEX, compiled=c.weight.is_cuda,
                                     chunk_size=1024)
        return lambda: fn(_flat(c.student_hidden), c.weight, _flat(c.teacher_hidden),
                          c.weight.detach(), c.labels.reshape(-1))

    return build


def _distill_providers(divergence: str) -> list[Provider]:
    beta = DISTILL_BETA[divergence]
    return [
        Provider("cord_kernels", "ours", _ours_fused_distill(divergence)),
        Provider("4 GEMMs, valid rows", "floor", _floor(True, valid_only=True),
                 note="student + teacher projections, grad wrt hidden and weight"),
        Provider("torch", "naive", _naive_fused_distill(divergence),
                 note="materialised (N, V) logits"),
        Provider("trl ChunkedDivergenceFunction", "peer", _trl_fused_distill(beta),
                 lambda device: missing_module("trl"), note=f"beta={beta}, valid rows"),
        Provider("liger LigerFusedLinearJSDLoss", "peer", _liger_fused_distill(beta),
                 _liger_fused_available, note=f"beta={beta}, mean over valid tokens"),
    ]


# ------------------------------------------------------------------ sparse-teacher providers


class _TeacherTopK:
    """The teacher's top-k of the latest case, computed once outside any timing (and shared
    by every provider of that case, so all of them see the same targets)."""

    def __init__(self):
        self.case, self.k, self.value = None, None, None

    def __call__(self, c, k: int):
        if self.case is not c or self.k != k:
            from cord_kernels import teacher_topk

            self.value = None
            src = (c.teacher if isinstance(c, LogitsCase)
                   else (c.teacher_hidden, c.weight.detach()))
            self.case, self.k, self.value = c, k, teacher_topk(src, k)
        return self.value


_teacher_topk = _TeacherTopK()


def naive_sparse_forward_kl(student: torch.Tensor, lp: torch.Tensor, ids: torch.Tensor,
                            mask: torch.Tensor) -> torch.Tensor:
    """Forward KL on the top-k plus a tail bucket, mean over valid tokens, as a training script
    writes it: log-softmax of the whole student, gather, two tails."""
    log_p = F.log_softmax(student.float(), dim=-1).gather(-1, ids)

    def tail(x):
        log_sum = torch.logsumexp(x, dim=-1, keepdim=True).clamp(max=-1e-7)
        return torch.cat([x, torch.log(-torch.expm1(log_sum))], dim=-1)

    a, b = tail(log_p), tail(lp.float())
    d = (b.exp() * (b - a)).sum(-1)
    return d[mask].sum() / mask.sum().clamp_min(1)


def trl_server_loss(student: torch.Tensor, lp: torch.Tensor, ids: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """TRL's server trainer (``_compute_server_forward_kl_loss`` with ``loss_add_tail``): its own
    ``_add_tail_bucket``, ``_jsd_divergence`` (beta 0, support mask) and reduction."""
    from trl.experimental.server_distillation import server_distillation_trainer as sd

    student_log_probs = F.log_softmax(student.float(), dim=-1)
    valid = lp > float("-inf")
    neg_inf = torch.full((), float("-inf"), device=lp.device)
    a = torch.where(valid, student_log_probs.gather(-1, ids), neg_inf)
    b = torch.where(valid, lp.float(), neg_inf)
    a, support = sd._add_tail_bucket(a, valid)
    b, _ = sd._add_tail_bucket(b, valid)
    jsd = sd._jsd_divergence(a, b, 0.0, support).sum(-1)
    return sd.ServerDistillationTrainer._reduce_divergence_loss(jsd, completion_mask=mask)


def _sparse_k(loss: str) -> int:
    return int(loss.rsplit("[k", 1)[1].rstrip("]"))


def _sparse_logits_providers(k: int) -> list[Provider]:
    def ours(c):
        from cord_kernels import sparse_teacher_loss

        lp, ids = _teacher_topk(c, k)
        return lambda: sparse_teacher_loss(c.student, lp, ids, c.mask, reduction="mean")

    def naive(c):
        lp, ids = _teacher_topk(c, k)
        return lambda: naive_sparse_forward_kl(c.student, lp, ids, c.mask)

    def trl(c):
        lp, ids = _teacher_topk(c, k)
        return lambda: trl_server_loss(c.student, lp, ids, c.mask)

    return [
        Provider("cord_kernels", "ours", ours),
        Provider("torch", "naive", naive, note="materialised log-softmax"),
        Provider("trl server loss", "peer", trl, lambda device: missing_module("trl"),
                 note="TRL's _add_tail_bucket + _jsd_divergence(beta=0)"),
    ]


def _sparse_fused_providers(k: int) -> list[Provider]:
    def ours(c):
        from cord_kernels import fused_linear_sparse_teacher_loss

        lp, ids = _teacher_topk(c, k)
        return lambda: fused_linear_sparse_teacher_loss(c.student_hidden, c.weight, lp, ids,
                                                        c.mask, reduction="mean")

    def materialised(loss_fn):
        def build(c):
            lp, ids = _teacher_topk(c, k)
            return lambda: loss_fn(c.student_hidden @ c.weight.T, lp, ids, c.mask)

        return build

    return [
        Provider("cord_kernels", "ours", ours),
        Provider("3 GEMMs, valid rows", "floor", _floor(False, valid_only=True),
                 note="projection, grad wrt hidden and weight (torch.mm)"),
        Provider("torch", "naive", materialised(naive_sparse_forward_kl),
                 note="materialised (N, V) logits"),
        Provider("trl server loss", "peer", materialised(trl_server_loss),
                 lambda device: missing_module("trl"),
                 note="materialised logits, then TRL's _add_tail_bucket + _jsd_divergence"),
        Provider("cord_kernels dense-teacher reverse KL", "baseline",
                 _ours_fused_distill("reverse_kl"),
                 note="fused_linear_distill_loss with the full teacher (4 GEMMs): its memory"),
    ]



SPARSE_LOGITS_PROVIDERS: dict[str, list[Provider]] = {
    loss: _sparse_logits_providers(_sparse_k(loss)) for loss in SPARSE_LOSSES}

FUSED_PROVIDERS: dict[str, list[Provider]] = {
    "fused_linear_cord_token_loss": [
        Provider("cord_kernels", "ours", _ours_fused_cord),
        Provider("4 GEMMs (floor)", "floor", _floor(True),
                 note="student + teacher projections, grad wrt hidden and weight"),
        Provider("4 GEMMs, valid rows", "floor", _floor(True, valid_only=True),
                 note="the same on the valid (mask=True) rows only: cord_kernels' own floor"),
        Provider("torch", "naive", _naive_fused_cord, note="materialised (N, V) logits"),
        Provider("trl ChunkedDivergenceFunction", "peer", _trl_fused_cord,
                 lambda device: missing_module("trl"),
                 note="beta=1, CORD weights via the cotangent"),
        Provider("liger LigerFusedLinearJSDLoss", "peer", _liger_fused_jsd,
                 _liger_fused_available, note="beta=1, uniform weights (no per-token weights)"),
    ],
    "fused_linear_token_logprobs": [
        Provider("cord_kernels", "ours", _ours_fused_logprobs),
        Provider("3 GEMMs (floor)", "floor", _floor(False),
                 note="projection, grad wrt hidden and weight"),
        Provider("torch", "naive", _naive_fused_logprobs, note="materialised (N, V) logits"),
        Provider("trl ChunkedLogProbFunction", "peer", _trl_fused_logprobs,
                 lambda device: missing_module("trl")),
    ],
    **{f"fused_linear_distill_loss[{d}]": _distill_providers(d) for d in DISTILL_BETA},
    **{loss: _sparse_fused_providers(_sparse_k(loss)) for loss in FUSED_SPARSE_LOSSES},
}

