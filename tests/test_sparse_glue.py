"""The sparse losses' Triton path without (N, k) torch glue (``sparse/support_loss.py``): the
aten ops of one call (forward + backward) counted under the interpreter, the id range check
through the kernel's error flag (no host sync on a GPU) and duplicate ids. The kernels' static
builds for sm_80 / sm_90 are in ``scripts/kernel_builds.py`` (``tests/test_gpu_build.py``)."""

from __future__ import annotations

import collections
import os
import sys

import pytest
import torch
from helpers import rel_err
from torch._library.custom_ops import _maybe_get_opdef
from torch.utils._python_dispatch import TorchDispatchMode

from cord_kernels import reference as ref
from cord_kernels import sparse_teacher_loss, student_topk_distill_loss
from cord_kernels.sparse import inputs
from cord_kernels.sparse.support_loss import SparseLossParams, sparse_support_loss

# The budget for one sparse_teacher_loss call, forward + backward (125 before the
# kernels took the glue: 149 counted this way, inside the custom ops too).
MAX_OPS = 30
_TRITON_RUNTIME = os.path.join("triton", "runtime")


def _from_triton_runtime() -> bool:
    f = sys._getframe(2)
    while f is not None:
        if _TRITON_RUNTIME in f.f_code.co_filename:
            return True
        f = f.f_back
    return False


class AtenOps(TorchDispatchMode):
    """Counts the aten ops of a region, those inside the library's custom ops included (each
    op is run through its Python body under this mode); not those the Triton interpreter
    makes to run a kernel on CPU tensors (a launch on a GPU makes none)."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "cord_kernels":
            with self:
                return _maybe_get_opdef(func._schema.name)._init_fn(*args, **kwargs)
        if not _from_triton_runtime():
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def _batch(B=2, T=3, V=50, k=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, T, V, generator=g)
    lp, ids = torch.log_softmax(torch.randn(B, T, V, generator=g), -1).topk(k)
    lp[0, 0, 5:] = float("-inf")
    mask = torch.rand(B, T, generator=g) > 0.3
    return s, lp, ids, mask, torch.rand(B, T, generator=g)


def _count(fn, s):
    x = s.clone().requires_grad_()
    with AtenOps() as c:
        fn(x).backward()
    return c


CALLS = [
    pytest.param({}, id="defaults"),
    pytest.param(dict(divergence="jsd", tail="renormalize", temperature=0.7), id="jsd-renorm"),
    pytest.param(dict(divergence="reverse_kl", reduction="mean",
                      num_items_in_batch=torch.tensor(7)), id="rkl-num_items"),
]


@pytest.mark.parametrize("kw", CALLS)
def test_aten_ops_per_call(kw, interpret, capsys):
    """At most 30 aten ops per call; no scatter, no (N, k) where-chains; the one host read is
    the CPU's read of the id flag (a GPU copies it to pinned memory instead)."""
    s, lp, ids, mask, _ = _batch()
    c = _count(lambda x: sparse_teacher_loss(x, lp, ids, mask, impl="triton", **kw), s)
    with capsys.disabled():
        print(f"\nsparse_teacher_loss {kw}: {c.total} aten ops {dict(c.ops)}")
    assert c.total <= MAX_OPS, c.ops
    assert c.ops["scatter_add_"] == 0 and c.ops["where"] == 0 and c.ops["logsumexp"] == 0
    assert c.ops["_local_scalar_dense"] == 1


def test_aten_ops_with_token_weights_and_student_topk(interpret):
    """Token weights add one where and one mul, plus core's check of the weights (10 ops and a
    host sync of its own); the student's top-k loss shares the kernels."""
    s, lp, ids, mask, w = _batch()
    base = _count(lambda x: sparse_teacher_loss(x, lp, ids, mask, impl="triton"), s).total
    c = _count(lambda x: sparse_teacher_loss(x, lp, ids, mask, token_weights=w,
                                             impl="triton"), s)
    assert c.total <= MAX_OPS and c.total - base <= 14, c.ops
    u = torch.randn_like(s)
    c = _count(lambda x: student_topk_distill_loss(x, u, mask, k=8, impl="triton"), s)
    assert c.total <= MAX_OPS and c.ops["scatter_add_"] == 0 and c.ops["where"] == 0, c.ops


def test_bad_ids_on_the_triton_path(interpret):
    """The kernel flags an id outside [0, V) at a used slot: a ValueError naming the argument
    (at once on the CPU), NaN on that row only if the flag were ignored; such an id at an
    unused slot or a masked position is never read."""
    s, lp, ids, mask, _ = _batch()
    mask[:] = True
    bad = ids.clone()
    bad[1, 2, 3] = 50
    with pytest.raises(ValueError, match=r"teacher_topk_ids must lie in \[0, 50\)"):
        sparse_teacher_loss(s, lp, bad, mask, impl="triton")
    d, flag = sparse_support_loss(s, lp, bad, mask, SparseLossParams())
    assert int(flag) == 1 and torch.isnan(d[1, 2]) and torch.isfinite(d.flatten()[:-1]).all()
    bad[0, 0, 6] = -1  # an unused slot (-inf log-prob)
    bad[1, 2, 3] = ids[1, 2, 3]
    mask[0, 1] = False
    bad[0, 1, 0] = 10**6  # a masked position
    out = sparse_teacher_loss(s, lp, bad, mask, impl="triton")
    assert torch.equal(out, sparse_teacher_loss(s, lp, ids, mask, impl="triton"))


def test_bad_ids_on_the_fused_triton_path(interpret):
    """fused_linear_sparse_teacher_loss's Triton chunks check the ids in their kernel too."""
    from cord_kernels import fused_linear_sparse_teacher_loss

    g = torch.Generator().manual_seed(4)
    hs, W = torch.randn(2, 3, 16, generator=g), torch.randn(50, 16, generator=g)
    _, lp, ids, mask, _ = _batch()
    bad = ids.clone()
    bad[mask.nonzero()[0].tolist() + [0]] = 50
    for reduction in ("batchmean", "none"):
        with pytest.raises(ValueError, match=r"teacher_topk_ids must lie in \[0, 50\)"):
            fused_linear_sparse_teacher_loss(hs.requires_grad_(), W, lp, bad, mask,
                                             reduction=reduction, impl="triton")
    out = fused_linear_sparse_teacher_loss(hs, W, lp, ids, mask, impl="triton")
    assert rel_err(out, ref.fused_linear_sparse_teacher_loss(hs, W, lp, ids, mask)) < 1e-5


class _Event:
    def __init__(self, done):
        self.done = done

    def query(self):
        return self.done

    def synchronize(self):
        self.done = True


def test_deferred_flag_raises_once_its_copy_has_landed(monkeypatch):
    """On a GPU the flag's host copy is read by a later call only when its event says it has
    landed (no wait); more than MAX_PENDING queued flags wait for the oldest."""
    monkeypatch.setattr(inputs, "_PENDING", [])
    inputs.defer_flag(torch.tensor([0], dtype=torch.int32), None, "fine")
    pending = _Event(False)
    inputs.defer_flag(torch.tensor([1], dtype=torch.int32), pending, "teacher_topk_ids bad")
    inputs.raise_pending()  # the clean flag is read, the pending one is left
    assert len(inputs._PENDING) == 1
    pending.done = True
    with pytest.raises(ValueError, match="teacher_topk_ids bad .*earlier call"):
        inputs.raise_pending()
    assert not inputs._PENDING
    monkeypatch.setattr(inputs, "MAX_PENDING", 1)
    inputs.defer_flag(torch.tensor([0], dtype=torch.int32), _Event(False), "fine")
    with pytest.raises(ValueError, match="bad"):
        inputs.defer_flag(torch.tensor([1], dtype=torch.int32), _Event(False), "bad")


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("divergence, beta", [("forward_kl", 0.5), ("reverse_kl", 0.5),
                                              ("jsd", 0.3)])
def test_duplicate_ids_sum_their_slots(tail, divergence, beta, interpret):
    """A row naming one id in several slots (not what a top-k gives, but accepted): each slot
    counts, and the backward kernel sums their gradient terms at that id."""
    s, lp, ids, mask, w = _batch(B=2, T=4, V=40, k=6, seed=3)
    ids[0, 1, 2] = ids[0, 1, 0]
    ids[1, 3, 1:4] = ids[1, 3, 5]
    lp[0, 1, 2] = lp[0, 1, 0]
    kw = dict(divergence=divergence, jsd_beta=beta, tail=tail, token_weights=w,
              temperature=1.3, reduction="none")
    cot = torch.randn(2, 4, generator=torch.Generator().manual_seed(2))
    x = s.clone().requires_grad_()
    out = sparse_teacher_loss(x, lp, ids, mask, impl="triton", **kw)
    (g,) = torch.autograd.grad(out, x, cot)
    x64 = s.double().requires_grad_()
    expect = ref.sparse_teacher_loss(x64, lp.double(), ids, mask, **kw)
    (g64,) = torch.autograd.grad(expect, x64, cot.double())
    assert rel_err(out, expect) < 1e-5 and rel_err(g, g64) < 1e-5


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_student_topk_support_keeps_slots_the_teacher_rules_out(tail, divergence, interpret):
    """On the student's top-k every slot of a valid row is on the support (the kernels'
    all-slots mode), a teacher log-prob of -inf there included (Q = 0, not an unused slot)."""
    g = torch.Generator().manual_seed(0)
    s, u = torch.randn(2, 4, 60, generator=g) * 3, torch.randn(2, 4, 60, generator=g) * 3
    u.scatter_(-1, s.topk(6).indices[..., :2], float("-inf"))
    mask = torch.rand(2, 4, generator=g) > 0.2
    kw = dict(k=6, divergence=divergence, tail=tail, temperature=1.2, reduction="none")
    cot = torch.randn(2, 4, generator=g)
    x = s.clone().requires_grad_()
    out = student_topk_distill_loss(x, u, mask, impl="triton", **kw)
    (grad,) = torch.autograd.grad(out, x, cot)
    x64 = s.double().requires_grad_()
    expect = ref.student_topk_distill_loss(x64, u.double(), mask, **kw)
    (g64,) = torch.autograd.grad(expect, x64, cot.double())
    assert rel_err(out, expect) < 1e-5 and rel_err(grad, g64) < 1e-5
