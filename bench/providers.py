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

import functools
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.inputs import IGNORE_INDEX, HiddenCase, LogitsCase

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


def _missing(module: str) -> str | None:
    return None if importlib.util.find_spec(module) else f"{module} is not installed"


def _cuda_only(package: str) -> Callable[[torch.device], str | None]:
    def check(device: torch.device) -> str | None:
        if device.type != "cuda":
            return (f"{package}'s kernel is Triton-only; on the CPU it would run in the Triton "
                    "interpreter, which measures the interpreter, not the kernel")
        return _missing(package)

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
def _compiled(fn: Callable) -> Callable:
    # Made on first use: building a compiled function imports dynamo (seconds), which the
    # providers that never compile should not pay. dynamic=False: one specialised graph per
    # shape, like a training run with fixed padding.
    return torch.compile(fn, dynamic=False)


def _weighted(d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_t w_t D_t / B with the CORD weights computed from D (no gradient through w)."""
    from cord_kernels import cord_weights

    d = d.masked_fill(~mask, 0.0)
    w = cord_weights(d.detach(), mask)
    return (w * d).sum() / mask.shape[0]


def _masked_sum_per_batch(d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return d.masked_fill(~mask, 0.0).sum() / mask.shape[0]


# ------------------------------------------------------------------------- logits-in providers


def _ours_reverse_kl(c: LogitsCase) -> Closure:
    from cord_kernels import reverse_kl

    return lambda: _masked_sum_per_batch(reverse_kl(c.student, c.teacher), c.mask)


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

    return lambda: _masked_sum_per_batch(jsd(c.student, c.teacher, beta=JSD_BETA), c.mask)


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


LOGITS_PROVIDERS: dict[str, list[Provider]] = {
    "reverse_kl": [
        Provider("cord_kernels", "ours", _ours_reverse_kl),
        _ours_compiled(_ours_reverse_kl),
        Provider("torch", "naive",
                 lambda c: lambda: _masked_sum_per_batch(naive_reverse_kl(c.student, c.teacher),
                                                         c.mask)),
        Provider("torch.compile", "peer",
                 lambda c: lambda: _masked_sum_per_batch(
                     _compiled(naive_reverse_kl)(c.student, c.teacher), c.mask),
                 needs_warmup=True),
        Provider("liger LigerJSD(beta=1)", "peer", _liger_reverse_kl,
                 _cuda_only("liger_kernel"),
                 note="mean over valid rows; log_softmax of both sides in torch first"),
    ],
    "cord_token_loss": [
        Provider("cord_kernels", "ours", _ours_cord),
        _ours_compiled(_ours_cord),
        Provider("torch", "naive",
                 lambda c: lambda: _weighted(naive_reverse_kl(c.student, c.teacher), c.mask)),
        Provider("torch.compile", "peer",
                 lambda c: lambda: _weighted(
                     _compiled(naive_reverse_kl)(c.student, c.teacher), c.mask),
                 needs_warmup=True, note="compiled D, CORD weights in eager torch"),
    ],
    "token_logprobs": [
        Provider("cord_kernels", "ours", _ours_logprobs),
        _ours_compiled(_ours_logprobs),
        Provider("torch", "naive",
                 lambda c: lambda: naive_token_logprobs(c.student, c.labels).sum()),
        Provider("torch.compile", "peer",
                 lambda c: lambda: _compiled(naive_token_logprobs)(c.student, c.labels).sum(),
                 needs_warmup=True),
        Provider("trl selective_log_softmax", "peer", _trl_logprobs,
                 lambda device: _missing("trl")),
        Provider("liger cross_entropy", "peer", _liger_logprobs, _cuda_only("liger_kernel"),
                 note="-cross_entropy(reduction='none')"),
    ],
    "jsd": [
        Provider("cord_kernels", "ours", _ours_jsd),
        Provider("torch", "naive",
                 lambda c: lambda: _masked_sum_per_batch(naive_jsd(c.student, c.teacher),
                                                         c.mask)),
        Provider("torch.compile", "peer",
                 lambda c: lambda: _masked_sum_per_batch(
                     _compiled(naive_jsd)(c.student, c.teacher), c.mask),
                 needs_warmup=True),
        Provider("trl generalized_jsd_loss", "peer", trl_generalized_jsd(JSD_BETA),
                 lambda device: _missing("trl"), note="GKDTrainer's loss (eager torch), sum / B"),
        Provider(f"liger LigerJSD(beta={JSD_BETA})", "peer", _liger_jsd,
                 _cuda_only("liger_kernel"),
                 note="mean over valid rows; log_softmax of both sides in torch first"),
    ],
}

# TRL's reverse KL on logits in, for scripts/gpu_check.sh (bench.gpu_check): not among the
# reverse_kl providers of ``pytest bench/``, where it is TRL's eager torch, the naive row again.
TRL_REVERSE_KL = Provider("trl generalized_jsd_loss(beta=1)", "peer", trl_generalized_jsd(1.0),
                          lambda device: _missing("trl"),
                          note="GKDTrainer's loss at beta=1 (eager torch), sum / B")


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
        return _weighted(naive_reverse_kl(s, u), c.mask)

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
        return _weighted(d.view(c.mask.shape), c.mask)

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
    return _missing("liger_kernel")


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
            return _masked_sum_per_batch(naive_divergence(divergence, s, u), c.mask)

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
                 lambda device: _missing("trl"), note=f"beta={beta}, valid rows"),
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
        Provider("trl server loss", "peer", trl, lambda device: _missing("trl"),
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
                 lambda device: _missing("trl"),
                 note="materialised logits, then TRL's _add_tail_bucket + _jsd_divergence"),
        Provider("cord_kernels dense-teacher reverse KL", "baseline",
                 _ours_fused_distill("reverse_kl"),
                 note="fused_linear_distill_loss with the full teacher (4 GEMMs): its memory"),
    ]


LOGITS_PROVIDERS.update({loss: _sparse_logits_providers(_sparse_k(loss))
                         for loss in SPARSE_LOSSES})

FUSED_PROVIDERS: dict[str, list[Provider]] = {
    "fused_linear_cord_token_loss": [
        Provider("cord_kernels", "ours", _ours_fused_cord),
        Provider("4 GEMMs (floor)", "floor", _floor(True),
                 note="student + teacher projections, grad wrt hidden and weight"),
        Provider("4 GEMMs, valid rows", "floor", _floor(True, valid_only=True),
                 note="the same on the valid (mask=True) rows only: cord_kernels' own floor"),
        Provider("torch", "naive", _naive_fused_cord, note="materialised (N, V) logits"),
        Provider("trl ChunkedDivergenceFunction", "peer", _trl_fused_cord,
                 lambda device: _missing("trl"), note="beta=1, CORD weights via the cotangent"),
        Provider("liger LigerFusedLinearJSDLoss", "peer", _liger_fused_jsd,
                 _liger_fused_available, note="beta=1, uniform weights (no per-token weights)"),
    ],
    "fused_linear_token_logprobs": [
        Provider("cord_kernels", "ours", _ours_fused_logprobs),
        Provider("3 GEMMs (floor)", "floor", _floor(False),
                 note="projection, grad wrt hidden and weight"),
        Provider("torch", "naive", _naive_fused_logprobs, note="materialised (N, V) logits"),
        Provider("trl ChunkedLogProbFunction", "peer", _trl_fused_logprobs,
                 lambda device: _missing("trl")),
    ],
    **{f"fused_linear_distill_loss[{d}]": _distill_providers(d) for d in DISTILL_BETA},
    **{loss: _sparse_fused_providers(_sparse_k(loss)) for loss in FUSED_SPARSE_LOSSES},
}

ALL_PROVIDERS = {**LOGITS_PROVIDERS, **FUSED_PROVIDERS}


def get_provider(loss: str, name: str) -> Provider:
    if loss not in ALL_PROVIDERS:
        raise ValueError(f"loss must be one of {tuple(ALL_PROVIDERS)}, got {loss!r}")
    for p in ALL_PROVIDERS[loss]:
        if p.name == name:
            return p
    names = [p.name for p in ALL_PROVIDERS[loss]]
    raise ValueError(f"provider for {loss!r} must be one of {names}, got {name!r}")
