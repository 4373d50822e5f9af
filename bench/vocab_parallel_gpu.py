"""The vocabulary-parallel losses on one CUDA GPU (issue 28's GPU case): a 1-rank NCCL group
(one GPU cannot host a 2-rank NCCL group), so every rank-local slice is the whole vocabulary and
``process_group=`` must give the single-process answer, through the paths a real
tensor-parallel run takes (the streaming KL kernels on the slice for the logits-in KL losses,
the torch row math for the others, the all-reduces through NCCL). Prints one JSON line per case:
relative errors against ``process_group=None`` and both timings (CUDA events, fwd+bwd).

    python bench/vocab_parallel_gpu.py            (on a CUDA machine, about a minute)
"""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist

import cord_kernels as ck


def _time(fn, reps=5):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1e3


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _case(name, make, call, group):
    """call(inputs, group) -> loss; make() -> (inputs dict, leaves)."""
    out = {"case": name}
    results = {}
    for key, g in (("single", None), ("parallel", group)):
        x, leaves = make()
        loss = call(x, g)
        loss.backward()
        results[key] = (loss, [t.grad for t in leaves])

        def step(x=x, leaves=leaves, g=g):
            for t in leaves:
                t.grad = None
            call(x, g).backward()

        out[f"{key}_s"] = _time(step)
    out["value_rel_err"] = _rel(results["parallel"][0], results["single"][0])
    out["grad_rel_err"] = max(_rel(a, b) for a, b in zip(results["parallel"][1],
                                                         results["single"][1], strict=True))
    print(json.dumps(out), flush=True)
    return out


def main():
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    dist.init_process_group("nccl", rank=0, world_size=1)
    group = dist.group.WORLD
    dev = torch.device("cuda")
    B, T, V, H = 8, 512, 151_936, 896
    g = torch.Generator(device=dev).manual_seed(0)
    mask = torch.ones(B, T, dtype=torch.bool, device=dev)
    mask[:, :16] = False
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        s0 = torch.randn(B, T, V, device=dev, generator=g).to(dtype)
        u0 = (s0.float() + torch.randn(B, T, V, device=dev, generator=g)).to(dtype)

        def make_logits(s0=s0):
            s = s0.clone().requires_grad_()
            return {"s": s}, [s]

        def cord(x, grp, u0=u0):
            return ck.cord_token_loss(x["s"], u0, mask, process_group=grp)

        def jsd(x, grp, u0=u0):
            return (ck.jsd(x["s"], u0, beta=0.5, process_group=grp) * mask).sum()

        rows.append(_case(f"cord_token_loss[{dtype}]", make_logits, cord, group))
        rows.append(_case(f"jsd[{dtype}]", make_logits, jsd, group))
        del s0, u0
    h_s0 = torch.randn(B, T, H, device=dev, generator=g, dtype=torch.bfloat16)
    h_t0 = torch.randn(B, T, H, device=dev, generator=g, dtype=torch.bfloat16)
    w0 = (torch.randn(V, H, device=dev, generator=g) * 0.05).to(torch.bfloat16)

    def make_head():
        h, w = h_s0.clone().requires_grad_(), w0.clone().requires_grad_()
        return {"h": h, "w": w}, [h, w]

    def fused(x, grp):
        return ck.fused_linear_cord_token_loss(x["h"], h_t0, x["w"], mask, process_group=grp)

    rows.append(_case("fused_linear_cord_token_loss[bf16]", make_head, fused, group))
    dist.destroy_process_group()
    bad = [r["case"] for r in rows if r["value_rel_err"] > 1e-2 or r["grad_rel_err"] > 2e-2]
    print(json.dumps({"all_ok": not bad, "bad": bad}))


if __name__ == "__main__":
    main()
