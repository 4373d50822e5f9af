"""Fast checks of the benchmark harness (bench/) on tiny shapes: every provider of a loss
computes the same thing, the timing modes do what they say, the memory probe and the byte
counts are right, and the report computes its ratios from the rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench/ is not an installed package

from bench.config import HiddenShape, LogitsShape, load_config  # noqa: E402
from bench.inputs import IGNORE_INDEX, batch_layout, make_hidden_case, make_logits_case  # noqa: E402
from bench.measure import floor_bytes, gemm_flops, mode_callables  # noqa: E402
from bench.providers import FUSED_PROVIDERS, LOGITS_PROVIDERS, get_provider  # noqa: E402
from bench.recorder import Recorder, compute_ratios  # noqa: E402
from bench.tables import render_markdown  # noqa: E402

CPU = torch.device("cpu")


def _runnable(providers):
    # torch.compile is skipped here: its first call compiles for tens of seconds.
    return [p for p in providers if p.unavailable(CPU) is None and not p.needs_warmup]


def _loss_and_grads(provider, case):
    for t in case.leaves():
        t.grad = None
    loss = provider.build(case)()
    loss.backward()
    return loss.detach(), [t.grad.clone() for t in case.leaves()]


def _close(a, b, rtol=2e-4):
    return (a - b).norm() <= rtol * b.norm() + 1e-6


def test_batch_layout_keeps_token_count():
    assert batch_layout(64) == (1, 64)
    assert batch_layout(1024) == (4, 256)
    with pytest.raises(ValueError, match="n_tokens"):
        batch_layout(0)


def test_ragged_inputs_are_masked_and_seeded():
    a = make_logits_case(512, 33, dtype=torch.float32, device=CPU, seed=3)
    b = make_logits_case(512, 33, dtype=torch.float32, device=CPU, seed=3)
    assert torch.equal(a.student, b.student) and torch.equal(a.mask, b.mask)
    assert a.student.shape == (2, 256, 33) and a.student.requires_grad
    assert 0.4 < a.mask.float().mean() < 0.95  # ragged lengths and dropped tokens
    assert torch.equal(a.labels == IGNORE_INDEX, ~a.mask)


@pytest.mark.parametrize("loss", list(LOGITS_PROVIDERS))
def test_logits_providers_agree(loss):
    """Each provider computes the same loss and student gradient as naive torch (Liger's
    beta=1 JSD is a mean over valid rows: rescaled to the sum / B the others use)."""
    case = make_logits_case(48, 97, dtype=torch.float32, device=CPU, seed=1)
    naive = get_provider(loss, "torch")
    ref_loss, ref_grads = _loss_and_grads(naive, case)
    others = [p for p in _runnable(LOGITS_PROVIDERS[loss]) if p.role != "naive"]
    assert any(p.role == "ours" for p in others)
    for p in others:
        got, grads = _loss_and_grads(p, case)
        assert torch.allclose(got, ref_loss, rtol=1e-4, atol=1e-5), p.name
        assert all(_close(g, r) for g, r in zip(grads, ref_grads, strict=True)), p.name


def test_trl_reverse_kl_of_the_gpu_check_agrees():
    """The GPU check's TRL row on logits in (bench.gpu_check; not a provider of pytest bench/):
    generalized_jsd_loss at beta=1 is the reverse KL, sum / B like the others."""
    pytest.importorskip("trl")
    from bench.providers import TRL_REVERSE_KL

    case = make_logits_case(48, 97, dtype=torch.float32, device=CPU, seed=1)
    ref_loss, ref_grads = _loss_and_grads(get_provider("reverse_kl", "torch"), case)
    got, grads = _loss_and_grads(TRL_REVERSE_KL, case)
    assert torch.allclose(got, ref_loss, rtol=1e-4, atol=1e-5)
    assert all(_close(g, r) for g, r in zip(grads, ref_grads, strict=True))


@pytest.mark.parametrize("loss", list(FUSED_PROVIDERS))
def test_fused_providers_agree(loss):
    case = make_hidden_case(300, 97, 16, dtype=torch.float32, device=CPU, seed=2)
    ref_loss, ref_grads = _loss_and_grads(get_provider(loss, "torch"), case)
    checked = 0
    for p in _runnable(FUSED_PROVIDERS[loss]):
        got, grads = _loss_and_grads(p, case)
        if p.role in ("floor", "baseline"):
            # Only GEMMs (a zero loss), or another loss shown beside (the dense-teacher fused
            # KL beside the sparse one): gradients of the leaves' shapes.
            assert got.item() == 0.0 or p.role == "baseline"
            assert [g.shape for g in grads] == [r.shape for r in ref_grads]
            continue
        if p.name.startswith("liger"):
            # Uniform weights, mean over valid tokens: compare with the same naive quantity
            # (the divergence of a fused_linear_distill_loss[...] row, else reverse KL).
            from bench.providers import naive_divergence

            c = case
            div = loss.removeprefix("fused_linear_distill_loss[").removesuffix("]")
            div = div if div in ("reverse_kl", "forward_kl", "jsd") else "reverse_kl"
            with torch.no_grad():
                d = naive_divergence(div, c.student_hidden @ c.weight.T,
                                     c.teacher_hidden @ c.weight.T)
            assert torch.allclose(got, d[c.mask].mean(), rtol=1e-4), p.name
            continue
        assert torch.allclose(got, ref_loss, rtol=1e-4, atol=1e-5), p.name
        assert all(_close(g, r, 1e-3) for g, r in zip(grads, ref_grads, strict=True)), p.name
        checked += 1
    assert checked >= 1


def test_liger_jsd_beta_one_is_reverse_kl():
    """LigerJSD(beta=1)(log q_student, log p_teacher) = mean KL(student || teacher), checked
    through the Triton interpreter (its kernel has no CPU path)."""
    pytest.importorskip("liger_kernel")
    code = """
import torch, torch.nn.functional as F
from liger_kernel.transformers import LigerJSD
torch.manual_seed(0)
s = torch.randn(6, 257, requires_grad=True); u = torch.randn(6, 257)
out = LigerJSD(beta=1.0)(F.log_softmax(s, -1), F.log_softmax(u, -1))
out.backward(); g = s.grad.clone(); s.grad = None
lq, lp = F.log_softmax(s, -1), F.log_softmax(u, -1)
ref = (lq.exp() * (lq - lp)).sum(-1).mean(); ref.backward()
print(abs(out.item() - ref.item()), (g - s.grad).abs().max().item())
"""
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    err_value, err_grad = map(float, res.stdout.split()[-2:])
    assert err_value < 1e-5 and err_grad < 1e-5


def test_modes_time_the_right_work():
    case = make_logits_case(16, 33, dtype=torch.float32, device=CPU)
    closure = get_provider("reverse_kl", "torch").build(case)
    fwd, setup = mode_callables(closure, case.leaves(), "fwd", CPU)
    args, kwargs = setup()
    assert fwd(*args, **kwargs).requires_grad and case.student.grad is None
    bwd, setup = mode_callables(closure, case.leaves(), "bwd", CPU)
    (loss,), _ = setup()
    assert case.student.grad is None  # the forward ran in setup, untimed
    bwd(loss)
    assert case.student.grad is not None
    with pytest.raises(ValueError, match="mode must be one of"):
        mode_callables(closure, case.leaves(), "both", CPU)


def test_counted_bytes_and_flops():
    # SPEC section 3: 6 B per vocab entry for bf16 reverse KL fwd+bwd, 4 B for log-probs.
    assert floor_bytes("reverse_kl", "fwd+bwd", 16384, 152064, torch.bfloat16) == 6 * 16384 * 152064
    assert floor_bytes("token_logprobs", "fwd+bwd", 10, 100, torch.bfloat16) == 4 * 1000
    assert floor_bytes("cord_token_loss", "fwd", 10, 100, torch.float32) == 8 * 1000
    assert gemm_flops("fused_linear_cord_token_loss", "fwd+bwd", 1024, 151936, 896) == (
        4 * 2 * 1024 * 896 * 151936)
    assert gemm_flops("fused_linear_token_logprobs", "fwd+bwd", 1, 1, 1) == 3 * 2


class _FakeBenchmark:
    """pytest-benchmark's fixture as the harness uses it (it is off under xdist): rounds of
    setup then target, no statistics."""

    def __init__(self, disabled: bool = False):
        self.group, self.extra_info, self.stats = None, {}, None
        self.disabled = disabled

    def pedantic(self, target, *, setup, rounds, iterations, warmup_rounds):
        for _ in range(1 if self.disabled else rounds):  # disabled: one call, as the plugin
            args, kwargs = setup()
            target(*args, **kwargs)


def test_cpu_peak_rss_sees_a_round_and_not_what_came_before():
    """The window's peak is what ran inside it: an earlier, larger peak of the process is
    forgotten at start, and a 64 MiB tensor touched inside shows up in full."""
    from bench.measure import CpuPeakRss

    before = torch.ones(64 * 2**20)  # 256 MiB peak before the window
    del before
    rss = CpuPeakRss()
    rss.start()
    inside = torch.ones(16 * 2**20)  # 64 MiB, written so its pages are resident
    del inside
    mem = rss.stop()
    if "error" in mem:
        pytest.skip(mem["error"])
    assert mem["peak_bytes"] == mem["baseline_bytes"] + mem["delta_bytes"]
    assert 60 * 2**20 <= mem["delta_bytes"] < 200 * 2**20  # a few pages may be reused


def test_cpu_fwd_bwd_rows_carry_their_peak_memory(tmp_path):
    """A CPU fwd+bwd row gets the peak RSS of its timed round; naive reverse KL holds several
    fp32 (N, V) temporaries, our torch path fewer."""
    from bench.harness import RECORDER, run_benchmark
    from bench.providers import get_provider

    shape = LogitsShape(64, 4096)
    for disabled in (False, True):  # --benchmark-disable (and xdist) run a single round
        rows = []
        for name in ("torch", "cord_kernels"):
            provider = get_provider("reverse_kl", name)
            run_benchmark(_FakeBenchmark(disabled), loss="reverse_kl", provider=provider,
                          shape=shape, mode="fwd+bwd")
            rows.append(RECORDER.rows[-1])
        naive, ours = (r["memory"] for r in rows)
        if "error" in naive:
            pytest.skip(naive["error"])
        assert naive["delta_bytes"] >= 64 * 4096 * 4
        assert ours["delta_bytes"] < naive["delta_bytes"]


def test_recorder_keeps_time_per_provider_and_reports_the_slowest():
    rec = Recorder(load_config())
    for loss, prov, sec in (("reverse_kl", "torch", 2.0), ("reverse_kl", "torch", 3.0),
                            ("token_logprobs", "trl", 1.0), ("reverse_kl", "liger", 9.0),
                            ("reverse_kl", "cord_kernels", 0.5)):
        rec.add_time(loss, prov, sec)
    assert rec.slowest(3) == [("reverse_kl", "liger", 9.0), ("reverse_kl", "torch", 5.0),
                              ("token_logprobs", "trl", 1.0)]
    rec.rows.append({"loss": "reverse_kl", "provider": "torch", "role": "naive",
                     "mode": "fwd+bwd", "shape_id": "N1-V1", "status": "skipped",
                     "reason": "x", "note": ""})
    assert "liger (reverse_kl) 9 s, torch (reverse_kl) 5 s" in render_markdown(rec)


def _fake_stats(median):
    class S:
        pass

    s = S()
    s.median = s.min = s.max = median
    s.rounds = 3
    return s


def test_report_ratios_and_markdown(tmp_path):
    cfg = load_config()
    rec = Recorder(cfg)
    shape = LogitsShape(64, 4096)
    for name, t, mem in (("cord_kernels", 1.0, 100), ("torch", 2.0, 400),
                         ("torch.compile", 1.6, 200)):
        # the copy rate at which reverse KL's 5 elements x 64 x 4096 rows (fp32) take 1 s
        row = rec.ok(loss="reverse_kl", provider=get_provider("reverse_kl", name), shape=shape,
                     mode="fwd+bwd", stats=_fake_stats(t), calibration_s=t,
                     memory={"delta_bytes": mem, "peak_bytes": mem + 1000},
                     valid_fraction=0.75, rates={"copy_gb_s": 5 * 64 * 4096 * 4 / 1e9})
        assert row["gbps"] > 0
        # reverse KL takes no mask: every row is its work, whatever the valid share
        assert row["n_valid"] == 48 and row["floor"]["pct_floor"] == pytest.approx(100 / t)
        assert row["floor"]["pct_floor_all_rows"] == pytest.approx(100 / t)
    rec.skip(loss="reverse_kl", provider=get_provider("reverse_kl", "liger LigerJSD(beta=1)"),
             shape=shape, mode="fwd+bwd", reason="needs CUDA")
    fshape = HiddenShape(1024, 151936, 896)
    # the GEMM rate at which the 4 GEMMs on the 512 valid rows take 4 s
    rate = 4 * 2 * 512 * 896 * 151936 / 4.0 / 1e12
    for name, t in (("cord_kernels", 8.0), ("4 GEMMs (floor)", 6.0),
                    ("trl ChunkedDivergenceFunction", 20.0)):
        row = rec.ok(loss="fused_linear_cord_token_loss",
                     provider=get_provider("fused_linear_cord_token_loss", name), shape=fshape,
                     mode="fwd+bwd", stats=_fake_stats(t), calibration_s=t, memory=None,
                     valid_fraction=0.5, rates={"copy_gb_s": 1.0, "gemm_tflops": rate})
        assert row["floor"]["pct_floor"] == pytest.approx(400 / t)
        assert row["floor"]["pct_floor_all_rows"] == pytest.approx(800 / t)
    rec.rows[0]["physical_floor_s"] = 0.25  # as on a known GPU: a quarter of the 1 s measured
    rows = {(r["loss"], r["provider"]): r for r in compute_ratios(rec.rows)}
    ours = rows[("reverse_kl", "cord_kernels")]
    assert ours["time_vs_naive"] == pytest.approx(0.5)
    assert ours["ours_vs_best_peer_time"] == pytest.approx(1.0 / 1.6)
    assert ours["best_peer_time"] == "torch.compile"
    assert ours["ours_vs_best_peer_mem"] == pytest.approx(0.5)
    fused = rows[("fused_linear_cord_token_loss", "cord_kernels")]
    assert fused["time_vs_floor"] == pytest.approx(8 / 6)
    trl = rows[("fused_linear_cord_token_loss", "trl ChunkedDivergenceFunction")]
    assert trl["time_vs_ours"] == pytest.approx(2.5)
    assert fused["pct_timed_floor_all"] == pytest.approx(75.0)  # the GEMMs timed: 6 s
    md = render_markdown(rec)
    assert "x0.50" in md and "x0.62 (torch.compile)" in md
    assert "(25% of peak)" in md
    assert "| 100.0 | 100.0 |" in md  # reverse KL's floor columns: valid rows, all rows
    assert "| 8.00 s | 50.0 | 100.0 |" in md  # the fused CORD loss's
    assert "charged at the copy bandwidth measured in this run" in md
    assert "TRL / cord_kernels = x2.50 time" in md
    assert "skipped (see below)" in md and "- liger LigerJSD(beta=1): needs CUDA" in md
    json.dumps(rec.rows, default=str)  # the rows serialise
