"""The inputs of the vocabulary-parallel tests (``test_vocab_parallel.py``, whose spawned ranks
build them from one seed each, and ``test_vocab_parallel_local.py``): tiny logits over an
uneven vocabulary split, a ragged mask, a teacher whose largest divergences sit in different
ranks' slices, a sparse teacher and LM heads."""

from __future__ import annotations

import torch

import cord_kernels as ck

# Slices per world size: uneven on purpose (V = 13 is not divisible by 2 or 3).
SIZES = {2: [7, 6], 3: [3, 6, 4]}
B, T, V = 3, 7, 13


def gen(seed):
    return torch.Generator().manual_seed(seed)


def logits(seed, *shape):
    return torch.randn(*shape, generator=gen(seed)) * 2.0


def ragged_mask():
    m = torch.ones(B, T, dtype=torch.bool)
    m[0, 2] = m[0, 5] = False  # holes
    m[1, :2] = False  # left padding
    m[2, 6] = False
    return m


def spread_teacher(s, sizes):
    """A teacher whose largest divergences sit in different ranks' slices: token t gets a
    large bump in rank (t mod W)'s slice, so the CORD top-K crosses shard boundaries."""
    u = s + 0.3 * torch.randn(s.shape, generator=gen(7))
    starts = [sum(sizes[:r]) for r in range(len(sizes))]
    for t in range(s.shape[1]):
        r = t % len(sizes)
        u[:, t, starts[r]] += 3.0 + t
    return u


def topk_targets(k=4):
    """A sparse teacher whose ids spread over every rank's slice, with unused (-inf) slots."""
    lp, ids = ck.teacher_topk(logits(8, B, T, V), k)
    lp[0, 3, 2:] = float("-inf")
    lp[2, 1, :] = float("-inf")  # a valid position without any valid slot
    return lp, ids


def heads(H=8, Ht=6):
    h_s = torch.randn(B, T, H, generator=gen(20)).requires_grad_()
    h_t = torch.randn(B, T, Ht, generator=gen(21))
    w = (torch.randn(V, H, generator=gen(22)) * 0.7).requires_grad_()
    b = (torch.randn(V, generator=gen(23)) * 0.5).requires_grad_()
    w_t = torch.randn(V, Ht, generator=gen(24)) * 0.7
    b_t = torch.randn(V, generator=gen(25)) * 0.5
    return h_s, h_t, w, b, w_t, b_t
