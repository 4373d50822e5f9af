"""fused_linear_cord_token_loss / fused_linear_token_logprobs: values and gradients (hidden,
weight, bias) against the same losses on materialised logits and against a float64 reference,
both impls (Triton through the interpreter), chunking edge cases, the GEMM count of the
design, the absence of (N, V) temporaries, and bad input."""

from __future__ import annotations

import pytest
import torch
from helpers import TOL, rel_err
from torch.utils._python_dispatch import TorchDispatchMode

from cord_kernels import (
    cord_token_loss,
    fused_linear_cord_token_loss,
    fused_linear_token_logprobs,
    token_logprobs,
)
from cord_kernels import reference as ref
from cord_kernels.fused.chunked_head import plan_chunks

REDUCTIONS = ["batchmean", "sum", "mean", "none"]


def _rows_bytes(rows: int, V: int, tiles: int = 2) -> int:
    """chunk_bytes that gives chunks of ``rows`` tokens (fp32 tiles)."""
    return rows * tiles * 4 * V


def _problem(B, T, H, V, *, dtype=torch.float32, seed=0, p_mask=0.3, bias=True,
             device="cpu"):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, T, H, generator=g)
    ht = (hs + 0.5 * torch.randn(B, T, H, generator=g)).to(dtype)  # a teacher close by
    hs = hs.to(dtype)
    W = (torch.randn(V, H, generator=g) / H**0.5 * 3).to(dtype)
    b = torch.randn(V, generator=g).to(dtype) if bias else None
    # Ragged right padding, then random holes inside the sequences.
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]) & (torch.rand(B, T, generator=g) > p_mask)
    return tuple(None if t is None else t.to(device) for t in (hs, ht, W, b, mask))


def _leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def _grads(out, leaves, cot):
    live = [t for t in leaves if t is not None]
    got = iter(torch.autograd.grad(out, live, cot))
    return [None if t is None else next(got) for t in leaves]


def _assert_close(out, expect, tol, what):
    err = rel_err(out, expect)
    assert err < tol, f"{what}: relative error {err:.3g} >= {tol}"


def _assert_matches_both(out, got, expect64, want64, expect32, want32, tol):
    """The fused value and its (hidden, weight, bias) gradients ``got`` against the float64
    reference (within ``tol``) and the materialised-logits fp32 path (within max(tol, 1e-5))."""
    _assert_close(out, expect64, tol, "value vs fp64")
    _assert_close(out, expect32, max(tol, 1e-5), "value vs materialised logits")
    for name, g, w32, w64 in zip(("hidden", "weight", "bias"), got, want32, want64,
                                 strict=True):
        if g is None:
            continue
        _assert_close(g, w64, tol, f"grad {name} vs fp64")
        _assert_close(g, w32, max(tol, 1e-5), f"grad {name} vs materialised logits")


def _check_cord(hs, ht, W, b, mask, *, impl, reduction, tol, teacher=None, **opts):
    """Runs the fused loss and checks value and every gradient against (1) cord_token_loss
    on materialised logits and (2) the float64 reference. Returns the fused value."""
    tw, tb = teacher if teacher is not None else (None, None)
    x = _leaves(hs, W, b)
    out = fused_linear_cord_token_loss(x[0], ht, x[1], mask, bias=x[2], teacher_weight=tw,
                                       teacher_bias=tb, reduction=reduction, impl=impl, **opts)
    assert out.dtype == torch.float32
    assert out.shape == (mask.shape if reduction == "none" else ())
    cot = torch.randn_like(out)
    got = _grads(out, x, cot)
    for g, t in zip(got, (hs, W, b), strict=True):
        assert (g is None) == (t is None)
        assert g is None or (g.dtype, g.shape) == (t.dtype, t.shape)

    cord_opts = {k: v for k, v in opts.items() if k != "chunk_bytes"}
    # (1) the logits-in loss on materialised logits, in fp32
    y = _leaves(hs, W, b)
    s = y[0].float() @ y[1].float().T + (0 if b is None else y[2].float())
    with torch.no_grad():
        u = ht.float() @ (W if tw is None else tw).float().T
        u = u + (0 if (b if tw is None else tb) is None else (b if tw is None else tb).float())
    expect32 = cord_token_loss(s, u, mask, reduction=reduction, impl="torch", **cord_opts)
    want32 = _grads(expect32, y, cot)
    # (2) the float64 reference
    z = [None if t is None else t.detach().double().requires_grad_() for t in (hs, W, b)]
    expect64 = ref.fused_linear_cord_token_loss(
        z[0], ht.double(), z[1], mask, bias=z[2],
        teacher_weight=None if tw is None else tw.double(),
        teacher_bias=None if tb is None else tb.double(),
        reduction=reduction, **cord_opts)
    want64 = _grads(expect64, z, cot.double())

    _assert_matches_both(out, got, expect64, want64, expect32, want32, tol)
    # Masked positions never reach the loss: exactly zero gradient there.
    assert (got[0][~mask] == 0).all()
    return out


# Each case is here for a reason; chunk_bytes is set in rows of tokens per chunk.
CORD_CASES = [
    # Several whole-sequence chunks: a chunk boundary falls inside the batch.
    pytest.param(dict(B=5, T=9, H=16, V=123), dict(chunk_rows=12), {}, id="B5-T9-V123-chunks"),
    # Sequences longer than a chunk: pieces, then the top-K correction; odd temperature.
    pytest.param(dict(B=3, T=30, H=24, V=200, p_mask=0.1), dict(chunk_rows=7),
                 dict(top_k=3, alpha=3.0, beta=1.5, temperature=0.7), id="B3-T30-V200-long"),
    # One chunk holds everything (the default budget), no bias, T <= K.
    pytest.param(dict(B=2, T=6, H=32, V=300, bias=False), dict(chunk_rows=None), {},
                 id="B2-T6-V300-nobias-default-chunk"),
    # Chunks of one token: every sequence is long, every top-K row is corrected.
    pytest.param(dict(B=2, T=5, H=16, V=64), dict(chunk_rows=1), dict(top_k=2),
                 id="B2-T5-V64-one-row-chunks"),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("shape, chunk, opts", CORD_CASES)
def test_cord_matches_references(shape, chunk, opts, impl, reduction, device, interpret,
                                 nan_poison):
    hs, ht, W, b, mask = _problem(**shape, device=device)
    mask[1] = False  # an all-masked sequence
    rows = chunk["chunk_rows"]
    chunk_bytes = None if rows is None else _rows_bytes(rows, shape["V"])
    _check_cord(hs, ht, W, b, mask, impl=impl, reduction=reduction, tol=1e-5,
                chunk_bytes=chunk_bytes, **opts)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cord_half_precision(dtype, impl, device, interpret, nan_poison):
    hs, ht, W, b, mask = _problem(3, 12, 32, 150, dtype=dtype, seed=1, device=device)
    _check_cord(hs, ht, W, b, mask, impl=impl, reduction="batchmean", tol=TOL[dtype],
                chunk_bytes=_rows_bytes(9, 150), top_k=4)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_cord_separate_teacher_head(impl, interpret, nan_poison):
    """A teacher with its own head (and hidden size): no gradient reaches it."""
    hs, _, W, b, mask = _problem(3, 8, 16, 90, seed=2)
    g = torch.Generator().manual_seed(5)
    ht = torch.randn(3, 8, 12, generator=g).requires_grad_()
    tw = torch.randn(90, 12, generator=g).requires_grad_()
    tb = torch.randn(90, generator=g).requires_grad_()
    _check_cord(hs, ht, W, b, mask, impl=impl, reduction="sum", tol=1e-5,
                teacher=(tw, tb), chunk_bytes=_rows_bytes(10, 90), top_k=2)
    W.requires_grad_()
    fused_linear_cord_token_loss(hs, ht, W, mask, teacher_weight=tw, teacher_bias=tb,
                                 impl=impl).backward()
    assert W.grad is not None
    assert ht.grad is None and tw.grad is None and tb.grad is None


def test_cord_teacher_never_gets_gradient():
    hs, ht, W, b, mask = _problem(2, 5, 8, 40)
    ht.requires_grad_()
    hs.requires_grad_()
    fused_linear_cord_token_loss(hs, ht, W, mask, bias=b).backward()
    assert ht.grad is None and hs.grad is not None


def test_cord_masked_rows_may_hold_garbage():
    """Padding rows are never projected: NaN hidden states there change nothing."""
    hs, ht, W, b, mask = _problem(3, 10, 16, 70, seed=3)
    clean = fused_linear_cord_token_loss(hs, ht, W, mask, bias=b)
    hs_bad, ht_bad = hs.clone(), ht.clone()
    hs_bad[~mask] = float("nan")
    ht_bad[~mask] = float("inf")
    hs_bad.requires_grad_()
    dirty = fused_linear_cord_token_loss(hs_bad, ht_bad, W, mask, bias=b)
    dirty.backward()
    assert torch.equal(clean, dirty)
    assert torch.isfinite(hs_bad.grad).all() and (hs_bad.grad[~mask] == 0).all()


def test_cord_all_masked_batch():
    hs, ht, W, b, _ = _problem(2, 4, 8, 30)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    x = _leaves(hs, W, b)
    out = fused_linear_cord_token_loss(x[0], ht, x[1], mask, bias=x[2], reduction="mean")
    out.backward()
    assert out.item() == 0.0
    assert all((t.grad == 0).all() for t in x)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_sequences(reduction):
    """T = 0 (nothing generated): zero loss and zero gradients of the right shapes."""
    hs = torch.randn(2, 0, 8, requires_grad=True)
    W = torch.randn(30, 8, requires_grad=True)
    out = fused_linear_cord_token_loss(hs, hs.detach(), W, torch.zeros(2, 0, dtype=torch.bool),
                                       reduction=reduction)
    out.sum().backward()
    assert out.shape == ((2, 0) if reduction == "none" else ())
    assert hs.grad.shape == hs.shape and (W.grad == 0).all()
    lp = fused_linear_token_logprobs(hs, W, torch.zeros(2, 0, dtype=torch.long))
    assert lp.shape == (2, 0)


def test_cord_no_grad_value_matches():
    hs, ht, W, b, mask = _problem(3, 7, 16, 60, seed=4)
    with_grad = fused_linear_cord_token_loss(hs.requires_grad_(), ht, W, mask, bias=b)
    with torch.no_grad():
        without = fused_linear_cord_token_loss(hs, ht, W, mask, bias=b)
    assert not without.requires_grad
    assert torch.allclose(with_grad.detach(), without, rtol=1e-6)


def test_cord_backward_twice_is_an_error():
    hs, ht, W, b, mask = _problem(2, 5, 8, 40)
    loss = fused_linear_cord_token_loss(hs.requires_grad_(), ht, W, mask)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        loss.backward()


def test_cord_chunking_changes_nothing():
    """Any chunk size, from one token to everything at once, gives the same value and
    gradients: pieces and the top-K correction add up to the whole-sequence result."""
    hs, ht, W, b, mask = _problem(4, 12, 16, 80, seed=11, p_mask=0.1)
    results = []
    for rows in (None, 100, 13, 8, 5, 3, 2, 1):
        x = _leaves(hs, W, b)
        chunk_bytes = None if rows is None else _rows_bytes(rows, 80)
        loss = fused_linear_cord_token_loss(x[0], ht, x[1], mask, bias=x[2], top_k=4,
                                            chunk_bytes=chunk_bytes)
        loss.backward()
        results.append([loss.detach()] + [t.grad for t in x])
    for got in results[1:]:
        for g, want in zip(got, results[0], strict=True):
            assert rel_err(g, want) < 1e-6


def test_plan_chunks_holds_whole_sequences():
    chunks = plan_chunks([3, 2, 7, 1, 0, 2], 4)
    got = [(c.row_lo, c.row_hi, c.seq_lo, c.seq_hi, c.whole) for c in chunks]
    assert got == [
        (0, 3, 0, 1, True),  # 3 + 2 > 4: sequence 1 opens the next chunk
        (3, 5, 1, 2, True),
        (5, 9, 2, 3, False),  # 7 > 4: sequence 2 in pieces of its own
        (9, 12, 2, 3, False),
        (12, 15, 3, 6, True),  # 1 + 0 + 2, the empty sequence riding along
    ]
    assert plan_chunks([0, 0], 3) == []


# ------------------------------------------------------------------------- GEMM accounting


class _GemmLog(TorchDispatchMode):
    """Records every matrix product that touches the LM head (V and H both among its
    dimensions), and the largest tensor any out-of-place op produced."""

    GEMMS = {"mm", "addmm", "addmm_", "matmul", "bmm", "baddbmm", "addbmm"}

    def __init__(self, V, H):
        super().__init__()
        self.V, self.H = V, H
        self.flops = 0
        self.calls = 0
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in self.GEMMS:
            mats = [a for a in args if isinstance(a, torch.Tensor) and a.dim() >= 2][-2:]
            (m, k), (_, n) = mats[0].shape[-2:], mats[1].shape[-2:]
            dims = {m, k, n}
            if self.V in dims and self.H in dims:
                self.calls += 1
                self.flops += 2 * m * k * n
        if not name.endswith("_"):  # in-place ops (and the interpreter's set_) allocate nothing
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.max_numel = max(self.max_numel, t.numel())
        return out


def _gemm_units(log: _GemmLog, rows: int, H: int, V: int) -> float:
    """GEMM work in units of one (rows x H x V) product."""
    return log.flops / (2 * rows * H * V)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_cord_is_four_gemms(impl, interpret):
    """4 GEMMs of (valid tokens x H x V) for forward + backward, all of them in forward; the
    largest tensor is a chunk's pair of tiles, far below the (N, V) logits."""
    B, T, H, V, rows = 6, 8, 24, 257, 16
    hs, ht, W, b, mask = _problem(B, T, H, V, seed=6, p_mask=0.2)
    assert int(mask.sum(1).max()) <= rows  # no long sequence here: exactly 4
    n_valid = int(mask.sum())
    x = _leaves(hs, W, b)
    with _GemmLog(V, H) as fwd:
        loss = fused_linear_cord_token_loss(x[0], ht, x[1], mask, bias=x[2], impl=impl,
                                            chunk_bytes=_rows_bytes(rows, V))
    with _GemmLog(V, H) as bwd:
        loss.backward()
    assert _gemm_units(fwd, n_valid, H, V) == 4
    assert bwd.flops == 0  # backward only scales the stored gradients
    assert fwd.max_numel <= 2 * rows * V < B * T * V


def test_cord_gemm_counts_of_the_other_paths():
    B, T, H, V, rows = 4, 10, 16, 300, 8
    hs, ht, W, b, mask = _problem(B, T, H, V, seed=7, p_mask=0.0)
    mask[:, :] = True
    mask[0, 7:] = False  # lengths 7, 10, 10, 10: three sequences longer than a chunk
    n_valid, top_k = int(mask.sum()), 3
    kw = dict(bias=b, chunk_bytes=_rows_bytes(rows, V), top_k=top_k)

    # Long sequences: 4 GEMMs plus 4 small ones for at most K corrected rows per sequence.
    hs.requires_grad_()
    W.requires_grad_()
    with _GemmLog(V, H) as log:
        fused_linear_cord_token_loss(hs, ht, W, mask, **kw).backward()
    assert 4 < _gemm_units(log, n_valid, H, V) <= 4 + 4 * 3 * top_k / n_valid

    # A frozen head (LoRA, say) needs no weight gradient: 3 GEMMs.
    with _GemmLog(V, H) as log:
        fused_linear_cord_token_loss(hs, ht, W.detach(), mask, chunk_bytes=kw["chunk_bytes"],
                                     alpha=1.0).backward()
    assert _gemm_units(log, n_valid, H, V) == 3

    # reduction="none": D in forward (2), both projections recomputed in backward (4).
    with _GemmLog(V, H) as log:
        out = fused_linear_cord_token_loss(hs, ht, W, mask, reduction="none", **kw)
        out.backward(torch.randn_like(out))
    assert _gemm_units(log, n_valid, H, V) == 6

    # Evaluation under no_grad: the two projections only.
    with torch.no_grad(), _GemmLog(V, H) as log:
        fused_linear_cord_token_loss(hs, ht, W, mask, **kw)
    assert _gemm_units(log, n_valid, H, V) == 2


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_logprobs_is_four_gemms(impl, interpret):
    hs, _, W, b, mask = _problem(3, 9, 16, 211, seed=8)
    labels = torch.randint(0, 211, (3, 9))
    labels[~mask] = -100
    x = _leaves(hs, W, b)
    with _GemmLog(211, 16) as fwd:
        lp = fused_linear_token_logprobs(x[0], x[1], labels, bias=x[2], impl=impl,
                                         chunk_bytes=_rows_bytes(5, 211, tiles=1))
    with _GemmLog(211, 16) as bwd:
        lp.backward(torch.randn_like(lp))
    n_valid = int(mask.sum())
    assert _gemm_units(fwd, n_valid, 16, 211) == 1 and _gemm_units(bwd, n_valid, 16, 211) == 3
    assert max(fwd.max_numel, bwd.max_numel) <= max(5 * 211, 211 * 16)


# ------------------------------------------------------------------------- token log-probs

LOGPROB_CASES = [
    pytest.param((4, 7), 16, 123, torch.float32, 1.0, 5, True, id="B4-T7-V123-chunks5"),
    pytest.param((30,), 24, 300, torch.float32, 0.6, 1, False, id="N30-V300-tau0.6-rows1"),
    pytest.param((2, 6), 32, 97, torch.bfloat16, 1.0, None, True, id="B2-T6-V97-bf16"),
]


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("lead, H, V, dtype, temperature, rows, bias", LOGPROB_CASES)
def test_logprobs_match_references(lead, H, V, dtype, temperature, rows, bias, impl,
                                   device, interpret, nan_poison):
    g = torch.Generator().manual_seed(9)
    hs = torch.randn(*lead, H, generator=g).to(device, dtype)
    W = (torch.randn(V, H, generator=g) / H**0.5 * 3).to(device, dtype)
    b = torch.randn(V, generator=g).to(device, dtype) if bias else None
    labels = torch.randint(0, V, lead, generator=g)
    labels[torch.rand(lead, generator=g) < 0.3] = -7  # custom ignore_index
    labels = labels.to(device)
    chunk_bytes = None if rows is None else _rows_bytes(rows, V, tiles=1)

    x = _leaves(hs, W, b)
    out = fused_linear_token_logprobs(x[0], x[1], labels, bias=x[2], temperature=temperature,
                                      ignore_index=-7, chunk_bytes=chunk_bytes, impl=impl)
    assert out.shape == lead and out.dtype == torch.float32
    assert (out[labels == -7] == 0).all() and (out[labels != -7] <= 0).all()
    cot = torch.randn_like(out)
    got = _grads(out, x, cot)

    y = _leaves(hs, W, b)
    logits = y[0].float() @ y[1].float().T + (0 if b is None else y[2].float())
    expect32 = token_logprobs(logits, labels, temperature=temperature, ignore_index=-7,
                              impl="torch")
    want32 = _grads(expect32, y, cot)
    z = [None if t is None else t.detach().double().requires_grad_() for t in (hs, W, b)]
    expect64 = ref.fused_linear_token_logprobs(z[0], z[1], labels, bias=z[2],
                                               temperature=temperature, ignore_index=-7)
    want64 = _grads(expect64, z, cot.double())

    assert all(gt is None or gt.dtype == dtype for gt in got)
    _assert_matches_both(out, got, expect64, want64, expect32, want32, TOL[dtype])
    assert (got[0][labels == -7] == 0).all()


# ------------------------------------------------------------------------------ bad input


def _bad_cord_calls():
    hs, ht, W, b, mask = _problem(2, 5, 8, 40)
    ok = dict(student_hidden=hs, teacher_hidden=ht, weight=W, mask=mask)

    def call(**change):
        kw = {**ok, **change}
        args = [kw.pop(k) for k in ("student_hidden", "teacher_hidden", "weight", "mask")]
        return lambda: fused_linear_cord_token_loss(*args, **kw)

    return [
        (call(weight=torch.randn(40, 9)), ValueError, "hidden size 8 but weight"),
        (call(teacher_hidden=torch.randn(2, 5, 6)), ValueError, "teacher_hidden has hidden"),
        (call(teacher_hidden=torch.randn(2, 4, 8)), ValueError, "teacher_hidden must have"),
        (call(student_hidden=hs[0]), ValueError, "student_hidden must have 3 dimensions"),
        (call(mask=mask[:, :4]), ValueError, "mask must have shape"),
        (call(mask=mask.float() * 3), ValueError, "mask must be bool, or hold only 0 and 1"),
        (call(weight=W[0]), ValueError, "weight must have 2 dimensions"),
        (call(weight=W.int()), TypeError, "weight must be float32"),
        (call(student_hidden=hs.long()), TypeError, "student_hidden must be float32"),
        (call(bias=torch.randn(41)), ValueError, "bias must have shape"),
        (call(teacher_bias=torch.randn(40)), ValueError, "teacher_bias needs teacher_weight"),
        (call(teacher_weight=torch.randn(39, 8)), ValueError, "vocabulary mismatch"),
        (call(teacher_weight=torch.randn(40, 5)), ValueError, "teacher_hidden has hidden"),
        (call(weight=W.to("meta")), ValueError, "same device"),
        (call(chunk_bytes=0), ValueError, "chunk_bytes must be >= 1"),
        (call(chunk_bytes=1.5), TypeError, "chunk_bytes must be an int"),
        (call(reduction="avg"), ValueError, "reduction must be one of"),
        (call(temperature=0.0), ValueError, "temperature"),
        (call(top_k=-1), ValueError, "top_k"),
        (call(impl="cuda"), ValueError, "impl must be one of"),
        (call(student_hidden="x"), TypeError, "student_hidden must be a torch.Tensor"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cord_calls())))
def test_cord_bad_input(case):
    fn, err, match = _bad_cord_calls()[case]
    with pytest.raises(err, match=match):
        fn()


def test_logprobs_bad_input():
    hs = torch.randn(2, 5, 8)
    W = torch.randn(40, 8)
    labels = torch.randint(0, 40, (2, 5))
    with pytest.raises(ValueError, match="hidden size 8 but weight"):
        fused_linear_token_logprobs(hs, torch.randn(40, 7), labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        fused_linear_token_logprobs(hs, W, labels[:, :3])
    with pytest.raises(TypeError, match="labels must be an integer"):
        fused_linear_token_logprobs(hs, W, labels.float())
    bad = labels.clone()
    bad[0, 0] = 40
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 40\)"):
        fused_linear_token_logprobs(hs, W, bad)
    bad[0, 0] = -100  # the ignore_index is fine
    fused_linear_token_logprobs(hs, W, bad)
    with pytest.raises(ValueError, match="hidden must have at least 2"):
        fused_linear_token_logprobs(hs[0, 0], W, labels[0, 0])
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        fused_linear_token_logprobs(hs, W, labels, ignore_index=None)
