"""sparse_teacher_loss: the Triton kernels (interpreted) and the torch path against the fp64
reference over hypothesis shapes with NaN-poisoned padding and -inf slots; agreement with TRL's
server-distillation functions (_add_tail_bucket, _jsd_divergence with a support mask,
_reduce_divergence_loss) for beta 0 / 0.5 / 1, both tails, k = 1 and k = V, all-masked
sequences; num_items_in_batch under gradient accumulation; inplace_backward; bad input."""

from __future__ import annotations

import pytest
import torch
from helpers import TOL, rel_err
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cord_kernels import reference as ref
from cord_kernels import sparse_teacher_loss

DIVS = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.2)]
SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def make_batch(B, T, V, k, *, seed=0, dtype=torch.float32, scale=3.0, unused=0.25,
               masked=0.3):
    """Student logits (NaN at masked positions), a teacher's top-k log-probs with ~``unused``
    of the slots -inf (and NaN at masked positions), ids, mask, token weights."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, T, V, generator=g) * scale).to(dtype)
    t_logp = torch.log_softmax(torch.randn(B, T, V, generator=g) * scale, -1)
    lp, ids = t_logp.topk(k, dim=-1)
    lp = lp.masked_fill(torch.rand(B, T, k, generator=g) < unused, float("-inf"))
    mask = torch.rand(B, T, generator=g) >= masked
    s[~mask] = float("nan")
    lp[~mask] = float("nan")
    w = torch.rand(B, T, generator=g) * 2
    return s, lp, ids, mask, w


def _loss_and_grad(fn, s, lp, ids, mask, cot=None, **kw):
    x = s.clone().requires_grad_()
    out = fn(x, lp, ids, mask, **kw)
    cot = torch.ones_like(out) if cot is None else cot
    (g,) = torch.autograd.grad(out, x, cot)
    return out, g


def fp32_tolerances(ref_fn, args, kw, expect, g64, *, cot=None):
    """max(1e-5, 2x the error of the reference formula itself in fp32), for the value and the
    gradient: a tail bucket next to a near-certain top-k, 1 - p with p ~ 1, loses digits in
    any fp32 evaluation (test_jsd.py does the same for the JSD's gradient)."""
    expect32, g32 = _loss_and_grad(ref_fn, *args, cot, **kw)
    return (max(1e-5, 2 * rel_err(expect32, expect)), max(1e-5, 2 * rel_err(g32, g64)))


@st.composite
def shapes(draw):
    V = draw(st.integers(1, 300))
    return dict(B=draw(st.integers(1, 3)), T=draw(st.integers(1, 6)), V=V,
                k=draw(st.integers(1, min(V, 20))), seed=draw(st.integers(0, 2**16)))


@SETTINGS
@given(shape=shapes(), div=st.sampled_from(DIVS), tail=st.sampled_from(["bucket", "renormalize"]),
       temperature=st.sampled_from([0.7, 1.0, 2.0]), impl=st.sampled_from(["triton", "torch"]))
@example(shape={"B": 1, "T": 1, "V": 17, "k": 1, "seed": 0}, div=("reverse_kl", 0.5),
         tail="bucket", temperature=0.7, impl="triton")
# The kernel's reverse-KL gradient once lost digits here to a + 1 that the normalisation cancels.
@example(shape={"B": 1, "T": 3, "V": 125, "k": 3, "seed": 8144}, div=("reverse_kl", 0.5),
         tail="renormalize", temperature=0.7, impl="triton")
def test_matches_fp64_reference(shape, div, tail, temperature, impl, interpret, nan_poison):
    s, lp, ids, mask, w = make_batch(**shape)
    kw = dict(divergence=div[0], jsd_beta=div[1], tail=tail, temperature=temperature,
              token_weights=w)
    cot = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))
    out, g = _loss_and_grad(sparse_teacher_loss, s, lp, ids, mask, cot, reduction="none",
                            impl=impl, **kw)
    expect, g64 = _loss_and_grad(ref.sparse_teacher_loss, s.double(), lp.double(), ids, mask,
                                 cot.double(), reduction="none", **kw)
    tol, grad_tol = fp32_tolerances(ref.sparse_teacher_loss, (s, lp, ids, mask),
                                    dict(kw, reduction="none"), expect, g64, cot=cot)
    assert out.dtype == torch.float32 and (out[~mask] == 0).all() and (out >= -1e-6).all()
    assert rel_err(out, expect) < tol
    assert torch.isfinite(g).all() and (g[~mask] == 0).all()
    # The gradient is a difference of O(1) probabilities (the tail bucket's 1 - p next to a
    # near-certain top-k): fp32 rounds it to about 1e-7 absolute, which a gradient of 1e-3 sees
    # as 1e-4 relative (hypothesis found V=17, k=1, tau=0.7 with teacher p = 0.987: both impls
    # 7e-5 relative, 1.6e-7 absolute). Either bound holds for a right kernel.
    abs_err = float((g.double() - g64).abs().max())
    assert rel_err(g, g64) < grad_tol or abs_err < 1e-6, (rel_err(g, g64), abs_err)


# Each case is here for a reason.
CASES = [
    pytest.param(3, 5, 123, 8, torch.float32, id="N15-V123-k8-fp32"),  # V not a power of two
    pytest.param(2, 3, 4500, 64, torch.float32, id="N6-V4500-k64-fp32"),  # V > BLOCK_V
    pytest.param(2, 4, 77, 1, torch.float32, id="N8-V77-k1-fp32"),  # k = 1 (TRL's top-1)
    pytest.param(2, 3, 40, 40, torch.float32, id="N6-V40-k40-fp32"),  # k = V
    pytest.param(2, 3, 700, 300, torch.float32, id="N6-V700-k300-fp32"),  # k > MAX_BLOCK_K
    pytest.param(2, 4, 257, 16, torch.bfloat16, id="N8-V257-k16-bf16"),  # one past a block
    pytest.param(2, 4, 200, 5, torch.float16, id="N8-V200-k5-fp16"),
]


@pytest.mark.parametrize("B, T, V, k, dtype", CASES)
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
def test_shapes_and_dtypes(B, T, V, k, dtype, impl, reduction, device, interpret, nan_poison):
    s, lp, ids, mask, w = make_batch(B, T, V, k, dtype=dtype)
    s, lp, ids, mask, w = (t.to(device) for t in (s, lp, ids, mask, w))
    for div, beta in DIVS[:3]:
        kw = dict(divergence=div, jsd_beta=beta, tail="bucket", token_weights=w,
                  reduction=reduction)
        out, g = _loss_and_grad(sparse_teacher_loss, s, lp, ids, mask, impl=impl, **kw)
        expect, g64 = _loss_and_grad(ref.sparse_teacher_loss, s.double(), lp.double(), ids,
                                     mask, **kw)
        assert rel_err(out, expect) < TOL[dtype] and g.dtype == dtype
        assert rel_err(g, g64) < TOL[dtype] * (2 if dtype != torch.float32 else 1)


def _trl():
    pytest.importorskip("trl")
    from trl.experimental.server_distillation import server_distillation_trainer as sd

    return sd


def trl_server_loss(sd, student_logits, lp, ids, labels, *, beta, tail, temperature=1.0,
                    num_items_in_batch=None):
    """TRL's server path, line for line as ``_compute_server_forward_kl_loss`` with a general
    beta: log-softmax of the student, gather, -inf at unused slots, tail or renormalise,
    ``_jsd_divergence`` with the support mask, ``_reduce_divergence_loss``."""
    student_log_probs = torch.log_softmax(student_logits / temperature, dim=-1)
    valid = lp > float("-inf")
    neg_inf = torch.full((), float("-inf"))
    a = torch.where(valid, student_log_probs.gather(-1, ids), neg_inf)
    b = torch.where(valid, lp, neg_inf)
    if tail == "bucket":
        a, support = sd._add_tail_bucket(a, valid)
        b, _ = sd._add_tail_bucket(b, valid)
    else:
        support = valid
        a = a - torch.logsumexp(a, dim=-1, keepdim=True)
        b = b - torch.logsumexp(b, dim=-1, keepdim=True)
    jsd = sd._jsd_divergence(a, b, beta, support).sum(-1)
    return sd.ServerDistillationTrainer._reduce_divergence_loss(
        jsd, completion_mask=labels != -100, reduction="batchmean",
        num_items_in_batch=num_items_in_batch)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("k, V", [(1, 50), (6, 50), (50, 50)], ids=["k1", "k6", "kV"])
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_matches_trl_server_path(beta, tail, k, V, impl, interpret):
    """TRL's masked batchmean (sum over valid tokens / their number) is our "mean"; with
    num_items_in_batch both return sum / n. Values and student-logit gradients to 1e-5."""
    sd = _trl()
    s, lp, ids, mask, _ = make_batch(3, 5, V, k, seed=k, masked=0.0, unused=0.3)
    mask[1] = False  # an all-masked sequence
    lp[0, 0] = float("-inf")  # a valid token whose slots are all unused
    lp[0, 1, 0] = 0.0  # a slot with all the mass: the tail's clamp
    labels = torch.where(mask, 0, -100)
    kw = dict(jsd_beta=beta, divergence="jsd", tail=tail, temperature=1.3)
    for n in (None, 11):
        ours, g = _loss_and_grad(sparse_teacher_loss, s, lp, ids, mask, impl=impl,
                                 reduction="mean", num_items_in_batch=n, **kw)
        x = torch.where(mask[..., None], s, 0.0).requires_grad_()
        theirs = trl_server_loss(sd, x, lp, ids, labels, beta=beta, tail=tail,
                                 temperature=1.3, num_items_in_batch=n)
        (g_trl,) = torch.autograd.grad(theirs, x)
        assert rel_err(ours, theirs) < 1e-5, (ours, theirs)
        assert rel_err(g, g_trl) < 1e-5, rel_err(g, g_trl)


def test_default_is_trls_forward_kl_server_loss(interpret):
    """The defaults (forward KL, tail bucket) are TRL's server trainer with loss_add_tail."""
    sd = _trl()
    s, lp, ids, mask, _ = make_batch(2, 6, 90, 8, seed=7, masked=0.2)
    labels = torch.where(mask, 0, -100)
    x = torch.where(mask[..., None], s, 0.0)
    theirs = trl_server_loss(sd, x, lp, ids, labels, beta=0.0, tail="bucket")
    ours = sparse_teacher_loss(s, lp, ids, mask, reduction="mean", impl="triton")
    assert rel_err(ours, theirs) < 1e-5


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_num_items_in_batch_accumulates_to_the_full_batch(impl, interpret):
    """Micro-batches with num_items_in_batch = the global valid-token count sum to the full
    batch's "mean" loss, gradients included (TRL issue #4719)."""
    s, lp, ids, mask, w = make_batch(4, 5, 60, 4, seed=3)
    kw = dict(divergence="jsd", token_weights=w, impl=impl)
    full, g_full = _loss_and_grad(sparse_teacher_loss, s, lp, ids, mask, reduction="mean", **kw)
    n = int(mask.sum())
    x = s.clone().requires_grad_()
    total = sum(sparse_teacher_loss(x[i:i + 2], lp[i:i + 2], ids[i:i + 2], mask[i:i + 2],
                                    num_items_in_batch=torch.tensor(n), token_weights=w[i:i + 2],
                                    divergence="jsd", impl=impl) for i in (0, 2))
    (g,) = torch.autograd.grad(total, x)
    assert rel_err(total, full) < 1e-6 and rel_err(g, g_full) < 1e-6


def test_inplace_backward_and_per_token(interpret):
    s, lp, ids, mask, _ = make_batch(2, 5, 130, 6, seed=4, masked=0.0)
    loss, per_tok = _loss_and_grad(sparse_teacher_loss, s, lp, ids, mask, impl="triton",
                                   reduction="none")
    x = s.clone().requires_grad_()
    buf = x.detach()
    (g,) = torch.autograd.grad(sparse_teacher_loss(x * 1.0, lp, ids, mask, impl="triton"), x)
    y = s.clone().requires_grad_()
    z = y * 1.0  # a non-leaf whose buffer may be overwritten
    out, d = sparse_teacher_loss(z, lp, ids, mask, impl="triton", inplace_backward=True,
                                 return_per_token=True)
    (g2,) = torch.autograd.grad(out, y)
    assert torch.equal(g, g2) and torch.equal(buf, s)
    assert not d.requires_grad and rel_err(d, loss) < 1e-7


def test_masked_rows_are_not_read(interpret):
    """NaN student logits at masked positions leave the loss and gradient finite and exactly 0
    there (the kernels skip rows without a used slot)."""
    s, lp, ids, mask, _ = make_batch(2, 4, 70, 5, seed=5, masked=0.5)
    assert (~mask).any()
    for impl in ("triton", "torch"):
        out, g = _loss_and_grad(sparse_teacher_loss, s, lp, ids, mask, impl=impl)
        assert torch.isfinite(out) and torch.isfinite(g).all() and (g[~mask] == 0).all()


def test_bad_input():
    s, lp, ids, mask, w = make_batch(2, 3, 20, 4, seed=6, masked=0.0)
    call = lambda **kw: sparse_teacher_loss(  # noqa: E731
        kw.pop("s", s), kw.pop("lp", lp), kw.pop("ids", ids), mask, **kw)
    bad_ids = ids.clone()
    bad_ids[0, 0, 0] = 20
    unused = lp.clone()
    unused[0, 0, 0] = float("-inf")
    cases = [
        (dict(ids=bad_ids), ValueError, r"teacher_topk_ids must lie in \[0, 20\)"),
        (dict(ids=ids[..., :3]), ValueError, "teacher_topk_ids must have the shape of"),
        (dict(lp=lp[:1]), ValueError, r"teacher_topk_logprobs must have shape \(2, 3\)"),
        (dict(ids=ids.float()), TypeError, "teacher_topk_ids must be an integer tensor"),
        (dict(tail="drop"), ValueError, "tail must be one of"),
        (dict(divergence="tvd"), ValueError, "divergence must be one of"),
        (dict(jsd_beta=2.0), ValueError, r"jsd_beta must be in \[0, 1\]"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(num_items_in_batch=0), ValueError, "num_items_in_batch must be >= 1"),
        (dict(num_items_in_batch=2.0), TypeError, "num_items_in_batch must be an int"),
        (dict(num_items_in_batch=3, reduction="none"), ValueError, "scalar reduction"),
        (dict(token_weights=-w), ValueError, "token_weights must be finite and >= 0"),
        (dict(s=s[0]), ValueError, r"student_logits must be \(B, T, V\)"),
    ]
    for kw, err, msg in cases:
        with pytest.raises(err, match=msg):
            call(**kw)
    # An out-of-range id at an unused slot is never read.
    bad_ids[0, 0, 0] = -1
    assert torch.isfinite(call(ids=bad_ids, lp=unused, impl="torch"))


def test_strided_logits_and_inplace_backward_into_a_view(interpret):
    """logits[:, :-1] of a (B, T+1, V) tensor (a view with a row stride of V but a batch
    stride of (T+1) V) is read without a copy, and inplace_backward writes the gradient into
    that view, the sparse terms included."""
    s, lp, ids, mask, _ = make_batch(2, 5, 90, 6, seed=8, masked=0.2)
    full = torch.cat([s, torch.randn(2, 1, 90)], dim=1)
    expect, g_ref = _loss_and_grad(sparse_teacher_loss, s, lp, ids, mask, impl="torch")
    for inplace in (False, True):
        leaf = full.clone().requires_grad_()
        z = leaf * 1.0
        loss = sparse_teacher_loss(z[:, :-1], lp, ids, mask, impl="triton",
                                   inplace_backward=inplace)
        (g,) = torch.autograd.grad(loss, leaf)
        assert rel_err(loss, expect) < 1e-6
        assert rel_err(g[:, :-1], g_ref) < 1e-6 and (g[:, -1] == 0).all()
