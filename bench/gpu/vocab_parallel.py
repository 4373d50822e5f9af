"""The vocabulary-parallel losses on one CUDA GPU (issue 28's GPU case), the GPU check's
``vparallel`` step: a 1-rank NCCL group (one GPU cannot host a 2-rank NCCL group), so every
rank-local slice is the whole vocabulary and ``process_group=`` must give the single-process
answer, through the paths a real tensor-parallel run takes (the streaming KL kernels on the
slice for the logits-in KL losses, the torch row math for the others, the all-reduces through
NCCL). One row per case and dtype: relative errors against ``process_group=None`` and both
timings (CUDA events, fwd+bwd). The dry run takes a 1-rank gloo group on the CPU, tiny shapes.

    python -m bench.gpu.vocab_parallel       (standalone, on a CUDA machine: one JSON line a case)
"""

from __future__ import annotations

import json
import os
import time

import torch
import torch.distributed as dist

SHAPES = {"B": 8, "T": 512, "V": 151_936, "H": 896}
DRY_SHAPES = {"B": 2, "T": 8, "V": 1000, "H": 32}
CASES = ("cord_token_loss[bf16]", "jsd[bf16]", "cord_token_loss[fp32]", "jsd[fp32]",
         "fused_linear_cord_token_loss[bf16]")
VALUE_TOL, GRAD_TOL = 1e-2, 2e-2


def plan(dry_run: bool) -> list[dict]:
    s = DRY_SHAPES if dry_run else SHAPES
    rows = []
    for case in CASES:
        fused = case.startswith("fused")
        row = {"table": "vparallel", "loss": case, "provider": "cord_kernels process_group",
               "role": "ours", "n_tokens": s["B"] * s["T"], "vocab": s["V"],
               **({"hidden": s["H"]} if fused else {})}
        row["id"] = f"{case}|vparallel|N{row['n_tokens']}|V{s['V']}"
        rows.append(row)
    return rows


def _time(fn, device: torch.device, reps: int = 5) -> float:
    for _ in range(2):
        fn()
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1e3


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def compare(make, call, group, device: torch.device, reps: int) -> dict:
    """call(inputs, group) -> loss; make() -> (inputs dict, leaves): the loss and gradients
    with ``process_group=group`` against ``None``, and both timings."""
    out, results = {}, {}
    for key, g in (("single", None), ("parallel", group)):
        x, leaves = make()
        loss = call(x, g)
        loss.backward()
        results[key] = (loss, [t.grad for t in leaves])

        def step(x=x, leaves=leaves, g=g):
            for t in leaves:
                t.grad = None
            call(x, g).backward()

        out[f"{key}_ms"] = 1e3 * _time(step, device, reps)
    out["value_rel_err"] = _rel(results["parallel"][0], results["single"][0])
    out["grad_rel_err"] = max(_rel(a, b) for a, b in zip(results["parallel"][1],
                                                         results["single"][1], strict=True))
    return out


class VocabParallelRunner:
    def __init__(self, device: torch.device, dry_run: bool, reps: int):
        self.device, self.dry_run, self.reps = device, dry_run, reps
        self.shapes = DRY_SHAPES if dry_run else SHAPES
        self.group, self.owned, self.logits = None, False, {}

    def prepare(self, doc: dict) -> None:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29531")
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, rank=0, world_size=1)
            self.owned = True
        self.group = dist.group.WORLD
        doc["process_group"] = f"{backend}, 1 rank"
        doc["tolerances"] = {"value_rel_err": VALUE_TOL, "grad_rel_err": GRAD_TOL}

    def _inputs(self, dtype: torch.dtype):
        if dtype not in self.logits:
            self.logits.clear()
            s, dev = self.shapes, self.device
            g = torch.Generator(device=dev).manual_seed(0)
            s0 = torch.randn(s["B"], s["T"], s["V"], device=dev, generator=g).to(dtype)
            u0 = (s0.float() + torch.randn(s["B"], s["T"], s["V"], device=dev,
                                           generator=g)).to(dtype)
            self.logits[dtype] = (s0, u0)
        return self.logits[dtype]

    def _mask(self) -> torch.Tensor:
        s = self.shapes
        mask = torch.ones(s["B"], s["T"], dtype=torch.bool, device=self.device)
        mask[:, : max(1, s["T"] // 32)] = False
        return mask

    def run(self, row: dict) -> dict:
        import cord_kernels as ck

        case, mask = row["loss"], self._mask()
        try:
            if case.startswith("fused"):
                self.logits.clear()
                s, dev = self.shapes, self.device
                g = torch.Generator(device=dev).manual_seed(1)
                bf = dict(device=dev, generator=g)
                h_s0 = torch.randn(s["B"], s["T"], s["H"], **bf).to(torch.bfloat16)
                h_t0 = torch.randn(s["B"], s["T"], s["H"], **bf).to(torch.bfloat16)
                w0 = (torch.randn(s["V"], s["H"], **bf) * 0.05).to(torch.bfloat16)

                def make():
                    h, w = h_s0.clone().requires_grad_(), w0.clone().requires_grad_()
                    return {"h": h, "w": w}, [h, w]

                def call(x, grp):
                    return ck.fused_linear_cord_token_loss(x["h"], h_t0, x["w"], mask,
                                                           process_group=grp)
            else:
                dtype = torch.bfloat16 if case.endswith("[bf16]") else torch.float32
                s0, u0 = self._inputs(dtype)

                def make():
                    s = s0.clone().requires_grad_()
                    return {"s": s}, [s]

                if case.startswith("jsd"):
                    def call(x, grp):
                        return (ck.jsd(x["s"], u0, beta=0.5, process_group=grp) * mask).sum()
                else:
                    def call(x, grp):
                        return ck.cord_token_loss(x["s"], u0, mask, process_group=grp)
            found = compare(make, call, self.group, self.device, self.reps)
        except torch.OutOfMemoryError:
            return {"status": "skipped", "reason": "out of device memory"}
        except Exception as err:
            return {"status": "error", "reason": f"{type(err).__name__}: {str(err)[:300]}"}
        agrees = found["value_rel_err"] <= VALUE_TOL and found["grad_rel_err"] <= GRAD_TOL
        found.update(time_ms=found["parallel_ms"], agrees=agrees,
                     x_single=found["parallel_ms"] / found["single_ms"])
        if not agrees:
            return {**found, "status": "error", "reason": "process_group= differs from the "
                    f"single-process answer beyond {VALUE_TOL} / {GRAD_TOL}"}
        return {**found, "status": "ok"}

    def close(self) -> None:
        self.logits.clear()
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
            self.owned = False


def main() -> int:
    runner = VocabParallelRunner(torch.device("cuda"), dry_run=False, reps=5)
    doc: dict = {}
    runner.prepare(doc)
    bad = []
    try:
        for row in plan(dry_run=False):
            found = runner.run(row)
            print(json.dumps({"case": row["loss"], **found}), flush=True)
            if found["status"] != "ok":
                bad.append(row["loss"])
    finally:
        runner.close()
    print(json.dumps({"all_ok": not bad, "bad": bad}))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
