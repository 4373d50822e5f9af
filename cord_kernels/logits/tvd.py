"""Total variation distance between two logits tensors, streamed over the vocabulary.

    TVD = 1/2 sum_v |p_v - q_v|,  p = softmax(s / tau) (student), q = softmax(u / tau)

The public function: it checks its arguments once and hands the rows to the divergence's parts
through the registry (``divergences/registry.py``). Kernels, torch math and
vocabulary-parallel statistics: ``divergences/tvd/``.
"""

from __future__ import annotations

import torch

from cord_kernels.core.options import TEMPERATURE, Divergence, LossOptions
from cord_kernels.core.validation import check_logits_pair
from cord_kernels.divergences.common import DivParams
from cord_kernels.divergences.registry import logits_rows


# Spelled out on purpose, as docs/api.md's "Logits in" table fixes it (tests/test_options.py
# reads it with inspect); LossOptions.check holds its rules and defaults.
def tvd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = TEMPERATURE,
    impl: str | None = None,
    process_group=None,
) -> torch.Tensor:
    """Per-row total variation distance between the student's and the teacher's distributions.

        p = softmax(s / tau) (student, gets the gradient), q = softmax(u / tau) (teacher)
        TVD = 1/2 sum_v |p_v - q_v|  in [0, 1]
        dTVD/ds_j = (1/tau) p_j (sigma_j - sum_v sigma_v p_v) / 2,  sigma = sign(p - q)

    Args:
        student_logits, teacher_logits: (..., V), same shape, dtype (fp32/bf16/fp16), device.
            The teacher gets no gradient.
        temperature: tau > 0, applied to both.
        impl: "triton", "torch" or None (Triton on CUDA or under TRITON_INTERPRET=1).
        process_group: vocabulary parallel, as :func:`reverse_kl` (3 all-reduces of (rows, 2)
            stats; torch row math on each rank's slice).

    Returns:
        (...) float32 TVD in [0, 1], differentiable.

    Example:
        >>> d = tvd(student_logits, teacher_logits)          # (B, T)
        >>> loss = (d * mask).sum() / mask.sum()
        >>> loss.backward()
    """
    check_logits_pair(student_logits, teacher_logits)
    temperature = LossOptions.check(temperature=temperature, impl=impl,
                                    process_group=process_group).temperature
    return logits_rows(Divergence.TVD, student_logits, teacher_logits.detach(),
                       DivParams(temperature), impl=impl, process_group=process_group)
