"""The generalized Jensen-Shannon divergence of TRL's GKD and Liger, streamed over the vocabulary.

    p = softmax(s / tau) (student), q = softmax(u / tau) (teacher), m = (1 - beta) p + beta q
    JSD_beta = beta KL(q || m) + (1 - beta) KL(p || m)

The public function: it checks its arguments once and hands the rows to the divergence's parts
through the registry (``divergences/registry.py``); beta = 0 and 1 go to the KLs
(``core.options.resolve_divergence``). Kernels, torch math and vocabulary-parallel statistics:
``divergences/jsd/``.
"""

from __future__ import annotations

import torch

from cord_kernels.core.options import JSD_BETA, TEMPERATURE, LossOptions, resolve_divergence
from cord_kernels.core.validation import check_logits_pair, check_unit
from cord_kernels.divergences.common import DivParams
from cord_kernels.divergences.registry import logits_rows


# Spelled out on purpose, as docs/api.md's "Logits in" table fixes it (tests/test_options.py
# reads it with inspect); LossOptions.check holds its rules and defaults. (`duplicates` pairs
# such signatures.)
def jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    beta: float = JSD_BETA,
    temperature: float = TEMPERATURE,
    teacher_grad: bool = False,
    impl: str | None = None,
    process_group=None,
) -> torch.Tensor:
    """Per-row generalized Jensen-Shannon divergence, TRL's and Liger's convention.

        p = softmax(s / tau) (student), q = softmax(u / tau) (teacher)
        m = (1 - beta) p + beta q,  JSD_beta = beta KL(q || m) + (1 - beta) KL(p || m)

    ``beta = 0`` returns :func:`forward_kl` and ``beta = 1`` :func:`reverse_kl` exactly (the
    KLs, as TRL's ``generalized_jsd_loss`` special-cases them, not the formula's limit 0).

    Args:
        student_logits, teacher_logits: (..., V), same shape, dtype (fp32/bf16/fp16), device.
        beta: in [0, 1], the teacher's share of the mixture.
        temperature: tau > 0, applied to both.
        teacher_grad: also differentiate through the teacher (detached by default).
        impl: "triton", "torch" or None (Triton on CUDA or under TRITON_INTERPRET=1).
        process_group: vocabulary parallel, as :func:`reverse_kl` (3 all-reduces of (rows, 2)
            stats; 2 at beta 0 or 1).

    Returns:
        (...) float32 JSD >= 0, differentiable.

    Example:
        >>> d = jsd(student_logits, teacher_logits, beta=0.5)        # (B, T)
        >>> loss = (d * mask).sum() / mask.sum()                     # TRL's batchmean
        >>> loss.backward()
    """
    beta = check_unit("beta", beta)  # the public name of LossOptions.jsd_beta here
    check_logits_pair(student_logits, teacher_logits)
    temperature = LossOptions.check(temperature=temperature, teacher_grad=teacher_grad,
                                    impl=impl, process_group=process_group).temperature
    u = teacher_logits if teacher_grad else teacher_logits.detach()
    return logits_rows(resolve_divergence("jsd", beta), student_logits, u,
                       DivParams(temperature, beta), impl=impl, process_group=process_group)
