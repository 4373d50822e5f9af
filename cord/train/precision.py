"""Float32 master weights, and a measure of how much each optimizer step really moved them.

A model loaded with ``dtype="auto"`` (Qwen2-Audio ships bf16 weights) would otherwise be trained
in bf16: AdamW adds ``lr * m / (sqrt(v) + eps)``, at most about ``lr`` per weight, and bf16
keeps 8 significant bits, so an update below half a bf16 step (between ``|w| / 512`` and
``|w| / 256``) rounds away. At ``lr = 3e-5`` every weight above ~0.015 in magnitude stays where
it is, a large share of a trained LM's weights, and the loss curve does not say so. The trainer
therefore upcasts the model to float32 before training (``fp32_master_weights=true``, the
default); bf16 compute then comes from autocast (``bf16``).

:class:`WeightChange` reports, per step, the relative change ``||w' - w|| / ||w||`` and the
fraction of weights that changed at all, over a fixed sample of the trained weights, so a run
that does not learn shows it in its metrics.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from cord.train.distributed import local_tensor

#: Dtypes whose parameters are upcast to float32 for training.
LOW_PRECISION = (torch.bfloat16, torch.float16)


def fp32_master_weights(model: nn.Module) -> bool:
    """Upcasts ``model`` to float32 (in place) when any trainable parameter is bf16/fp16.

    The whole model is cast, frozen parts and buffers included: without autocast (a CPU run) a
    bf16 frozen part feeding a float32 trained part would fail on mixed dtypes. Returns True if
    the model was cast."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad and p.dtype in LOW_PRECISION for p in model.parameters()):
        return False
    model.float()
    return True


class WeightChange:
    """Measures what one optimizer step did to the trained weights.

    Usage: ``before()`` just before ``optimizer.step()``, ``after()`` just after; ``after``
    returns ``{"weight_change": ||w' - w|| / ||w||, "weights_changed": fraction of weights
    whose stored value changed}``.

    Only a fixed strided sample of about ``max_elements`` entries per process is compared (every
    entry when the process holds fewer), so the copy costs about ``4 * max_elements`` bytes. A
    sharded (FSDP2) parameter contributes its local shard; with several processes the sums are
    all-reduced, so every process calls both methods (the trainer does, every step).

    Args:
        params: the trained parameters.
        max_elements: the sample size per process.
    """

    def __init__(self, params, *, max_elements: int = 1 << 20):
        if not isinstance(max_elements, int) or max_elements < 1:
            raise ValueError(f"max_elements must be a positive int, got {max_elements!r}")
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("params holds no trainable parameter")
        total = sum(local_tensor(p).numel() for p in self.params)
        self.stride = max(1, math.ceil(total / max_elements))
        self._before: torch.Tensor | None = None

    def _sample(self) -> torch.Tensor:
        parts = [local_tensor(p.detach()).reshape(-1)[:: self.stride] for p in self.params]
        return torch.cat([x.float() for x in parts])  # float() copies bf16; fp32 is cloned below

    @torch.no_grad()
    def before(self) -> None:
        self._before = self._sample().clone()

    @torch.no_grad()
    def after(self) -> dict[str, float]:
        if self._before is None:
            raise RuntimeError("WeightChange.after() without a before()")
        old, new = self._before, self._sample()
        self._before = None
        delta = new - old
        sums = torch.stack([delta.square().sum(), old.square().sum(),
                            (delta != 0).sum().float(), torch.tensor(float(old.numel()),
                                                                     device=old.device)])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
        d2, w2, changed, n = sums.tolist()
        return {"weight_change": math.sqrt(d2 / w2) if w2 > 0 else math.nan,
                "weights_changed": changed / n if n > 0 else math.nan}
