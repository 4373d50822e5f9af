"""Reverse and forward KL between two logits tensors, streamed over the vocabulary.

    reverse_kl(s, u) = KL(p || q),  forward_kl(s, u) = KL(q || p)

The public functions: they check their arguments once and hand the rows to the divergence's
parts through the registry (``divergences/registry.py``); the kernels, the torch math and the
vocabulary-parallel statistics live in ``divergences/kl/``.
"""

from __future__ import annotations

import torch

from cord_kernels.core.options import TEMPERATURE, Divergence, LossOptions
from cord_kernels.core.validation import check_logits_pair
from cord_kernels.divergences.common import DivParams
from cord_kernels.divergences.registry import logits_rows


def _check(student_logits, teacher_logits, temperature, teacher_grad, inplace_backward, impl,
           process_group=None):
    check_logits_pair(student_logits, teacher_logits)
    return LossOptions.check(temperature=temperature, teacher_grad=teacher_grad,
                             inplace_backward=inplace_backward, impl=impl,
                             process_group=process_group).temperature


# Spelled out on purpose, as docs/api.md's "Logits in" table fixes it (tests/test_options.py
# reads it with inspect); LossOptions.check holds its rules and defaults. (`duplicates` pairs
# such signatures.)
def reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = TEMPERATURE,
    teacher_grad: bool = False,
    inplace_backward: bool = False,
    impl: str | None = None,
    process_group=None,
) -> torch.Tensor:
    """Per-row reverse KL, KL(p || q), the CORD token divergence D_t (paper eq. 2).

        p = softmax(s / tau) (student, gets the gradient), q = softmax(u / tau) (teacher)
        D = sum_v p_v (log p_v - log q_v)

    Args:
        student_logits, teacher_logits: (..., V), same shape, dtype (fp32/bf16/fp16), device.
        temperature: tau > 0, applied to both.
        teacher_grad: also differentiate through the teacher (detached by default).
        inplace_backward: Triton path only: write dD/ds into ``student_logits``' own storage
            in backward, saving an (N, V) allocation. The student logits are overwritten, so
            nothing else may read them after backward (Triton writes are invisible to
            autograd's in-place checks). Ignored where impl=None picks the torch path; an
            error with impl="torch".
        impl: "triton", "torch" or None (Triton on CUDA or under TRITON_INTERPRET=1).
        process_group: vocabulary parallel: the logits are this rank's contiguous slice of
            the vocabulary (or DTensors sharded on it); every rank gets the full D, the
            gradient is the local slice of the full one (2 all-reduces of (rows, 3) stats).

    Returns:
        (...) float32 D >= 0, differentiable.

    Example:
        >>> d = reverse_kl(student_logits, teacher_logits)      # (B, T)
        >>> (d * mask).sum().backward()
    """
    temperature = _check(student_logits, teacher_logits, temperature, teacher_grad,
                         inplace_backward, impl, process_group)
    u = teacher_logits if teacher_grad else teacher_logits.detach()
    return logits_rows(Divergence.REVERSE_KL, student_logits, u,
                       DivParams(temperature, inplace_backward=inplace_backward), impl=impl,
                       process_group=process_group)


# Spelled out on purpose, as docs/api.md's "Logits in" table fixes it (tests/test_options.py
# reads it with inspect); LossOptions.check holds its rules and defaults. (`duplicates` pairs
# such signatures.)
def forward_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = TEMPERATURE,
    teacher_grad: bool = False,
    impl: str | None = None,
    process_group=None,
) -> torch.Tensor:
    """Per-row forward KL, KL(q || p): the paper's FKL baseline (on teacher rollouts).

        dKL/ds_v = (1/tau) (p_v - q_v)

    Same arguments and shapes as :func:`reverse_kl` (``process_group`` too); returns (...)
    float32.

    Example:
        >>> loss = (forward_kl(student_logits, teacher_logits) * mask).sum() / mask.shape[0]
    """
    temperature = _check(student_logits, teacher_logits, temperature, teacher_grad, False, impl,
                         process_group)
    u = teacher_logits if teacher_grad else teacher_logits.detach()
    return logits_rows(Divergence.FORWARD_KL, student_logits, u, DivParams(temperature),
                       impl=impl, process_group=process_group)
