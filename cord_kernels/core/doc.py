"""Docstring paragraphs that several losses share, written once (as cut-cross-entropy's
``doc.py``): a public function's docstring names a fragment on a line of its own, ``{name}``,
and :func:`shared_doc` puts the fragment there at that line's indentation.

    @shared_doc
    def my_loss(...):
        \"\"\"...
        Args:
            {reduction}
        \"\"\"
"""

from __future__ import annotations

import re
import textwrap

FRAGMENTS = {
    "labels": """\
labels, ignore_index: instead of ``mask``, TRL's and Liger's convention: (B, T)
    integer labels, valid where ``labels != ignore_index``.""",
    "reduction": """\
reduction: "batchmean" (sum / B sequences, the paper's) | "sum" | "mean" (sum / valid
    tokens) | "none" ((B, T), 0 where masked). TRL's and Liger's losses divide by valid
    tokens, i.e. our "mean": batchmean = mean * mask.sum() / B.""",
    "num_items_in_batch": """\
num_items_in_batch: the valid tokens of the whole accumulated batch (int or one-element
    tensor): the loss is then sum / num_items_in_batch under every scalar reduction, so
    that gradient accumulation gives the full batch's "mean" (TRL's and transformers'
    convention); with reduction="none" it is an error.""",
    "logit_transform": """\
softcap, logit_scale: the model's logit transform, applied to the logits inside the
    stream (before tau): t = logit_scale * z, then softcap * tanh(t / softcap). Pass
    Gemma 2 / 3n's ``final_logit_softcapping`` as ``softcap`` and Cohere's
    ``logit_scale``: without them such a model's loss is wrong.""",
    "inplace_backward": """\
inplace_backward: Triton path only: write the gradient into the student logits' storage
    (garbage after backward). Ignored where impl=None picks the torch path; an error
    with impl="torch".""",
    "process_group": """\
process_group: vocabulary (tensor) parallel: the logits are this rank's contiguous slice
    of the vocabulary, slices in rank order (or DTensors sharded on it, ``Shard(-1)``).
    Every rank gets the full-vocabulary loss and per-token values; the gradient is the
    local slice of the full one. None: the whole vocabulary here (today's behaviour).""",
    "process_group_head": """\
process_group, reduce_hidden_grad: vocabulary (tensor) parallel: ``weight`` (and
    ``bias``, and the teacher's head) are this rank's contiguous rows of the vocabulary,
    in rank order (or DTensors sharded on it, ``Shard(0)``); the hidden states are
    replicated. Every rank gets the full-vocabulary loss and per-token values; the head
    gradients are the local slices of the full ones; the hidden-state gradient is the
    full one, all-reduced inside the loss, unless ``reduce_hidden_grad=False`` (a
    Megatron-style caller whose parallel region already reduces it). Chunks hold the
    statistics of their rows: 1 all-reduce to agree on the chunks, 2 per chunk (3 for
    the JSD), 1 of the (rows, H) hidden-state gradient.""",
    "impl": """\
impl: "triton", "torch" or None (Triton on CUDA tensors or under TRITON_INTERPRET=1,
    the torch path otherwise).""",
}

_LINE = re.compile(r"^( *)\{(\w+)\}$", re.MULTILINE)


def shared_doc(fn):
    """Fills the ``{name}`` lines of ``fn.__doc__`` with :data:`FRAGMENTS` (an unknown name is
    a KeyError at import, so a typo cannot ship)."""
    if fn.__doc__:
        fn.__doc__ = _LINE.sub(
            lambda m: textwrap.indent(FRAGMENTS[m.group(2)], m.group(1)), fn.__doc__)
    return fn
