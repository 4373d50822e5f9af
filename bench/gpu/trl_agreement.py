"""The TRL drop-in on a GPU: ``chunked_divergence_loss`` (the Triton tile kernels) against TRL's
own ``_chunked_divergence_loss`` (its Triton kernels) on CUDA, values and time side by side.

    python -m bench.gpu.trl_agreement OUT_DIR   # on the GPU (TRL importable), writes trl_gpu.json

1. agreement, fp32, V = 5003 with biases, a softcap, tau = 1.5, holes in the mask: the loss,
   entropy sum, count and the student gradients, relative error, for beta in {0, 0.5, 1};
2. bf16 at V = 151,936, H = 896, N = 4096 valid tokens (4 x 1024): fwd+bwd time (median of 3
   after a warm-up call) and peak allocated memory above the inputs, TRL's and ours, for
   beta in {1, 0.5}.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    den = b.norm().item()
    return (a - b).norm().item() / den if den else (a - b).norm().item()


def _inputs(B, T, H, V, dtype, bias, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    kw = dict(device="cuda", generator=g)
    hs = torch.randn(B, T, H, **kw).to(dtype).requires_grad_()
    ht = torch.randn(B, T, H, **kw).to(dtype)
    ws = (torch.randn(V, H, **kw) * 0.05).to(dtype).requires_grad_()
    wt = (torch.randn(V, H, **kw) * 0.05).to(dtype)
    bs = (torch.randn(V, **kw) * 0.1).to(dtype).requires_grad_() if bias else None
    bt = (torch.randn(V, **kw) * 0.1).to(dtype) if bias else None
    mask = (torch.rand(B, T, **kw) > 0.2).long()
    return hs, ht, ws, wt, mask, bs, bt


def call_trl_signature(fn, x, beta, *, cotangent: float = 1.0, **kw) -> list:
    """One call of a function with TRL's ``_chunked_divergence_loss`` signature on ``x`` = (h_s,
    h_t, W_s, W_t, mask, b_s, b_t), then ``(loss * cotangent).backward()``: [loss, entropy
    sum, n valid, grad h_s, grad W_s, grad b_s (None without a bias)] (tests/test_trl_integration
    uses it too)."""
    hs, ht, ws, wt, mask, bs, bt = x
    for t in (hs, ws, bs):
        if t is not None:
            t.grad = None
    loss, ent, n = fn(hs, ht, ws, wt, mask, beta, student_lm_head_bias=bs,
                      teacher_lm_head_bias=bt, **kw)
    (loss * cotangent).backward()
    return [loss.detach(), ent, n, hs.grad, ws.grad, None if bs is None else bs.grad]


def main(out: Path) -> int:
    from trl.trainer.distillation_trainer import _chunked_divergence_loss as trl_loss

    from cord_kernels.integrations.trl import chunked_divergence_loss as ours

    out.mkdir(parents=True, exist_ok=True)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "agreement": [], "timing": []}

    def save():
        (out / "trl_gpu.json").write_text(json.dumps(res, indent=1) + "\n")

    kw = dict(temperature=1.5, student_final_logit_softcapping=30.0,
              teacher_final_logit_softcapping=30.0, num_items_in_batch=100)
    x = _inputs(3, 37, 64, 5003, torch.float32, bias=True)
    for beta in (0.0, 0.5, 1.0):
        ref = call_trl_signature(trl_loss, x, beta, **kw)
        got = call_trl_signature(ours, x, beta, **kw)
        errs = [_rel(a, b) for a, b in zip(got, ref) if b is not None]
        res["agreement"].append({"beta": beta, "max_rel": max(errs), "per_output": errs})
        print("agreement", beta, max(errs), flush=True)
        save()

    x = _inputs(4, 1024, 896, 151936, torch.bfloat16, bias=False)
    x[4].fill_(1)
    base = torch.cuda.memory_allocated()
    for beta in (1.0, 0.5):
        for name, fn in (("trl", trl_loss), ("cord_kernels", ours)):
            call_trl_signature(fn, x, beta)  # warm-up: Triton JIT
            times = []
            for _ in range(3):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                call_trl_signature(fn, x, beta)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            torch.cuda.reset_peak_memory_stats()
            loss = call_trl_signature(fn, x, beta)[0]
            peak = torch.cuda.max_memory_allocated() - base
            res["timing"].append({"beta": beta, "backend": name, "fwd_bwd_s": statistics.median(
                times), "peak_above_inputs_bytes": peak, "loss": loss.item()})
            print("timing", beta, name, statistics.median(times), peak / 2**30, loss.item(),
                  flush=True)
            save()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
