"""The GPU check's ``trl`` step: the TRL drop-in against TRL 1.16's own Triton kernel.

``cord_kernels.integrations.trl.chunked_divergence_loss`` (what ``enable()`` patches in)
against ``trl.trainer.distillation_trainer._chunked_divergence_loss``, which runs TRL's
``trl/kernels/chunked_divergence.py`` on CUDA: bf16, fwd+bwd, V = 151,936, every row valid
(N tokens, B = N / 1024 sequences of 1024), beta = 1 (reverse KL, TRL's default) and 0.5 (the
JSD). Each row: the median of a few calls after a warm-up call, the peak memory above the
inputs, the 4-GEMM floor on the N rows at ``torch.mm``'s rate measured at that shape in the
same step, and the ratio to TRL's row of the same shape and beta.

The order puts what matters most first: H = 896, N = 4096 (Qwen2.5-0.5B; issue 34's goal:
at most 0.65x TRL at beta = 1, 0.6x at 0.5), then a ``torch.profiler`` trace of one drop-in
call at that shape (its aten ops and kernels; the trace itself is this step's file, which
Perfetto and chrome://tracing open, since it carries ``traceEvents``), then the rest of
H in {896, 2048, 3584} x N in {1024, 4096, 16384}, the small H first.
"""

from __future__ import annotations

import time
from collections import Counter

import torch

from bench.floors import gemm_floor_flops, pct
from bench.gpu.timing import QWEN2_VOCAB
from bench.measure import gemm_tflops, median_seconds

HIDDENS = (896, 2048, 3584)  # Qwen2.5-0.5B, Qwen2.5-3B / Llama-3.2-3B, Qwen2.5-7B
TOKENS = (1024, 4096, 16384)
BETAS = (1.0, 0.5)
GOAL_SHAPE = (4096, 896)
SEQ_LEN = 1024
BACKENDS = ("cord_kernels", "trl")
# The trace keeps this many events at most (a file comes back at 16 MiB at most).
MAX_TRACE_EVENTS = 10_000
DRY_SHAPES = {"tokens": (32, 64), "hiddens": (32,), "vocab": 1000, "seq_len": 32}


def plan(dry_run: bool) -> list[dict]:
    """The rows of the step, in the order they run."""
    tokens, hiddens = (DRY_SHAPES["tokens"], DRY_SHAPES["hiddens"]) if dry_run else (
        TOKENS, HIDDENS)
    vocab = DRY_SHAPES["vocab"] if dry_run else QWEN2_VOCAB
    goal = (tokens[-1], hiddens[0]) if dry_run else GOAL_SHAPE
    shapes = [goal] + [(n, h) for h in hiddens for n in tokens if (n, h) != goal]
    rows = []

    def add(table, n, h, beta, provider):
        row = {"table": table, "loss": f"trl_drop_in[beta={beta}]", "provider": provider,
               "role": "ours" if provider == "cord_kernels" else "peer", "n_tokens": n,
               "vocab": vocab, "hidden": h, "beta": beta}
        row["id"] = f"{row['loss']}|{provider}|N{n}|V{vocab}|H{h}" + (
            "|profile" if table == "profile" else "")
        rows.append(row)

    for i, (n, h) in enumerate(shapes):
        for beta in BETAS:
            for provider in BACKENDS:
                add("trl", n, h, beta, provider)
        if i == 0:
            add("profile", n, h, BETAS[0], "cord_kernels")
    return rows


def _functions():
    from trl.trainer.distillation_trainer import _chunked_divergence_loss as trl_loss

    from cord_kernels.integrations.trl import chunked_divergence_loss as ours

    return {"cord_kernels": ours, "trl": trl_loss}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Inputs:
    """(hidden states, weights, mask) of one shape, drawn on the device; the student's are
    leaves. Kept while consecutive rows share the shape."""

    def __init__(self, n: int, h: int, v: int, seq_len: int, device, dtype, seed: int = 0):
        g = torch.Generator(device=device).manual_seed(seed)
        kw = dict(device=device, generator=g)
        b = max(1, n // seq_len)
        self.hs = torch.randn(b, n // b, h, **kw).to(dtype).requires_grad_()
        self.ht = torch.randn(b, n // b, h, **kw).to(dtype)
        self.ws = (torch.randn(v, h, **kw) * h**-0.5 * 4).to(dtype).requires_grad_()
        self.wt = (self.ws.detach().float() + torch.randn(v, h, **kw) * h**-0.5).to(dtype)
        self.mask = torch.ones(b, n // b, dtype=torch.long, device=device)

    def call(self, fn, beta: float) -> torch.Tensor:
        self.hs.grad = self.ws.grad = None
        loss, _entropy, _count = fn(self.hs, self.ht, self.ws, self.wt, self.mask, beta)
        loss.backward()
        return loss.detach()


class TrlRunner:
    def __init__(self, device: torch.device, dry_run: bool, reps: int):
        self.device, self.dry_run, self.reps = device, dry_run, reps
        self.seq_len = DRY_SHAPES["seq_len"] if dry_run else SEQ_LEN
        self.dtype = torch.bfloat16
        self.key, self.inputs, self.rate, self.doc = None, None, None, {}
        self.fns = None

    def prepare(self, doc: dict) -> None:
        self.doc = doc
        self.fns = _functions()
        doc["gemm_tflops_by_shape"] = {}

    def _inputs(self, row: dict) -> _Inputs:
        key = (row["n_tokens"], row["hidden"], row["vocab"])
        if key != self.key:
            self.key = self.inputs = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            n, h, v = key
            self.inputs = _Inputs(n, h, v, self.seq_len, self.device, self.dtype)
            self.rate = gemm_tflops(self.device, n, h, v, self.dtype)
            self.doc["gemm_tflops_by_shape"][f"N{n}-H{h}-V{v}"] = self.rate
            self.key = key
        return self.inputs

    def run(self, row: dict) -> dict:
        try:
            x = self._inputs(row)
            if row["table"] == "profile":
                return self._profile(row, x)
            return self._time(row, x)
        except torch.OutOfMemoryError:
            return {"status": "skipped", "reason": "out of device memory"}
        except Exception as err:
            return {"status": "error", "reason": f"{type(err).__name__}: {str(err)[:300]}"}

    def _time(self, row: dict, x: _Inputs) -> dict:
        fn, beta = self.fns[row["provider"]], row["beta"]
        t0 = time.perf_counter()
        x.call(fn, beta)  # warm-up: Triton JIT
        _sync(self.device)
        first_s = time.perf_counter() - t0
        seconds = median_seconds(lambda: x.call(fn, beta), self.device, self.reps)
        found = {"status": "ok", "time_ms": 1e3 * seconds, "first_call_s": first_s,
                 "n_valid": row["n_tokens"], "gemm_tflops": self.rate}
        if self.device.type == "cuda":  # the peak above the inputs, no gradient held
            x.hs.grad = x.ws.grad = None
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            found["loss"] = x.call(fn, beta).item()
            found["peak_above_inputs_bytes"] = torch.cuda.max_memory_allocated() - base
        else:
            found["loss"] = x.call(fn, beta).item()
        flops = gemm_floor_flops("fused_linear_distill_loss", row["n_tokens"], row["n_tokens"],
                                 row["hidden"], row["vocab"])["valid"]
        floor_s = flops / (self.rate * 1e12)
        found.update(floor_ms=1e3 * floor_s, pct_floor=pct(floor_s, seconds),
                     tflops=flops / seconds / 1e12)
        if row["provider"] == "trl":  # TRL runs second: the pair's ratio goes on our row
            same = (row["n_tokens"], row["hidden"], row["beta"])
            ours = next((r for r in self.doc["rows"] if r["table"] == "trl"
                         and r["provider"] == "cord_kernels" and r["status"] == "ok"
                         and (r["n_tokens"], r["hidden"], r["beta"]) == same), None)
            if ours is not None:
                ours["x_trl"] = ours["time_ms"] / found["time_ms"]
        return found

    def _profile(self, row: dict, x: _Inputs) -> dict:
        """One drop-in call (fwd+bwd) under torch.profiler after a warm-up call: its aten ops
        by count, the top kernels by device time, and the trace into the step's file."""
        import json
        import tempfile

        from torch.profiler import ProfilerActivity, profile

        fn, beta = self.fns[row["provider"]], row["beta"]
        x.call(fn, beta)
        _sync(self.device)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                         if self.device.type == "cuda" else [])
        t0 = time.perf_counter()
        with profile(activities=acts, record_shapes=True) as prof:
            x.call(fn, beta)
            _sync(self.device)
        seconds = time.perf_counter() - t0
        events = prof.key_averages()
        on_cuda = self.device.type == "cuda"

        def device_us(e):
            return getattr(e, "device_time_total", 0.0) if on_cuda else e.cpu_time_total

        aten = Counter({e.key: e.count for e in events if e.key.startswith("aten::")})
        top = sorted(events, key=device_us, reverse=True)[:25]
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/trace.json"
            prof.export_chrome_trace(path)
            with open(path) as f:
                trace = json.load(f)
        kept = trace.get("traceEvents", [])[:MAX_TRACE_EVENTS]
        self.doc["traceEvents"] = kept
        self.doc["trace_of"] = row["id"]
        return {"status": "ok", "time_ms": 1e3 * seconds,
                "aten_ops": dict(aten.most_common()),
                "aten_op_calls": sum(aten.values()),
                "top": [{"name": e.key, "count": e.count, "self_cpu_us": e.self_cpu_time_total,
                         "device_us": device_us(e)} for e in top],
                "trace_events": len(kept),
                "note": "one profiled call (the profiler's overhead included); the trace is "
                        "this file's traceEvents"}

    def close(self) -> None:
        self.key = self.inputs = None
