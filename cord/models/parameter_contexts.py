"""Parameter contexts for sharded models: gather ZeRO-3 / FSDP / FSDP2 weights for a
``generate`` call, and run a model's forward with its LM head bypassed (the fused-linear path
applies the head itself)."""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP


@contextmanager
def gathered_parameters(model: nn.Module):
    """Full parameters for ``generate`` under FSDP (v1, v2) or DeepSpeed ZeRO-3 (no-op
    otherwise).

    Sharded engines only hold full weights inside their own forward; ``generate`` runs the bare
    model many times, so the shards are gathered once around the whole call."""
    if isinstance(model, FSDPModule):
        with fsdp2_gathered(model):
            yield
        return
    if isinstance(model, FSDP):
        with FSDP.summon_full_params(model, writeback=False, recurse=True):
            yield
        return
    stage = getattr(model, "zero_optimization_stage", None)
    if callable(stage) and stage() == 3:
        import deepspeed  # local: an optional dependency, present only under DeepSpeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield
        return
    yield


@contextmanager
def fsdp2_gathered(model: nn.Module):
    """FSDP2: the blocks keep the parameters their first forward gathers until the end of the
    block (instead of gathering and freeing them again for every generated token), then free
    them. The root unit already stays gathered after its forward."""
    blocks = [m for m in model.modules() if isinstance(m, FSDPModule) and m is not model]
    # FSDP2 has a setter for reshard_after_forward but no getter: read what the setter writes.
    before = [any(g.post_forward_mesh_info is not None
                  for g in m._get_fsdp_state()._fsdp_param_groups) for m in blocks]
    for m in blocks:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m, reshard in zip(blocks, before, strict=True):
            m.set_reshard_after_forward(reshard, recurse=False)
            m.reshard()


@contextmanager
def bypassed_lm_head(model: nn.Module, head: nn.Module):
    """Replaces ``head`` (wherever it sits in ``model``) by an identity for the duration."""
    found = [(parent, name) for parent in model.modules()
             for name, child in parent.named_children() if child is head]
    if not found:
        raise TypeError(
            f"{type(model).__name__}'s LM head is not a submodule of the model; override "
            "ChatAdapter.completion_hidden for this model"
        )
    parent, name = found[0]
    setattr(parent, name, nn.Identity())
    try:
        yield head
    finally:
        setattr(parent, name, head)
