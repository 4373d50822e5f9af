"""The measuring half of ``scripts/gpu_check.sh``: JSON files with one schema, and a summary.

    python -m bench.gpu_check env       OUT [--dry-run] [--wheels STATUS]
    python -m bench.gpu_check tests     OUT [--dry-run] JUNIT_XML...
    python -m bench.gpu_check measure   OUT [--dry-run] [--budget-s S]
    python -m bench.gpu_check train     OUT [--dry-run] LOG RC SECONDS
    python -m bench.gpu_check summary   OUT [--dry-run]
    python -m bench.gpu_check validate  OUT

Every file is ``{"schema": SCHEMA, "kind", "dry_run", "device", "created", ...}``; ``validate``
checks the files, their kinds and required keys (the CPU dry run in CI relies on it).
``measure`` writes three files as it goes, so a step cut off by its time limit still leaves
every row it finished:

    logits_sweep.json     bf16 logits in, N in {4096, 16384}, V = 151,936, fwd+bwd: time,
                          GB/s, % of the 10 B/entry (two-pass) and 6 B/entry (one-pass) floors
                          at the copy bandwidth measured in the same run
    fused_linear.json     H = 3584, V = 152,064, N = 16,384: time, TFLOP/s, % of the GEMM floor
                          (torch.mm in the same run), peak memory
    launch_variants.json  BLOCK_V x warps of the streaming kernels, and V = 151,643 (rows not
                          16-byte aligned: scalar loads) beside 151,936
    sparse_teacher.json   the sparse-teacher loss (teacher top-k, k in {1, 8, 64}) against
                          TRL's server loss, bf16, N = 16,384: logits in (V = 151,936; GB/s
                          against the 6 B/entry two-pass bytes: read s twice, write ds) and
                          fused linear (H = 3584, V = 152,064; % of the 3-GEMM floor), with
                          peak memory
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import torch

SCHEMA = "cord-gpu-check/1"
FILES = {
    "env": "env.json",
    "tests": "tests.json",
    "logits_sweep": "logits_sweep.json",
    "fused_linear": "fused_linear.json",
    "launch_variants": "launch_variants.json",
    "sparse_teacher": "sparse_teacher.json",
    "train": "train.json",
}
SUMMARY = "summary.md"
MAX_FILES = 8
HEADER_KEYS = ("schema", "kind", "dry_run", "device", "created")
ROW_KEYS = ("loss", "provider", "n_tokens", "vocab", "status")
REQUIRED = {
    "env": ("torch", "triton", "cuda", "python", "wheels"),
    "tests": ("suites",),
    "logits_sweep": ("copy_gb_s", "rows"),
    "fused_linear": ("gemm_tflops", "rows"),
    "launch_variants": ("best", "rows"),
    "sparse_teacher": ("copy_gb_s", "gemm_tflops", "rows"),
    "train": ("returncode", "seconds", "steps", "final"),
}

QWEN2_VOCAB, QWEN2_7B_VOCAB, QWEN2_7B_HIDDEN = 151_936, 152_064, 3584
UNALIGNED_VOCAB = 151_643  # Qwen2's tokenizer size before padding: V % 8 != 0


# ------------------------------------------------------------------------------- file plumbing


def _device_name(dry_run: bool) -> str:
    if torch.cuda.is_available() and not dry_run:
        return torch.cuda.get_device_name()
    return "cpu (dry run)" if dry_run else "cpu"


def write(out: Path, kind: str, dry_run: bool, **payload) -> Path:
    doc = {"schema": SCHEMA, "kind": kind, "dry_run": dry_run, "device": _device_name(dry_run),
           "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **payload}
    path = out / FILES[kind]
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)  # readers never see half a file, even if the step is killed
    return path


def validate(out: Path) -> list[str]:
    """Problems with the files in ``out`` (an empty list when all is well)."""
    problems = []
    files = sorted(p for p in out.iterdir() if p.is_file())
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files, at most {MAX_FILES} allowed")
    for p in files:
        if p.suffix not in (".json", ".md"):
            problems.append(f"{p.name}: only json and markdown files may be written")
    if not (out / SUMMARY).is_file():
        problems.append(f"{SUMMARY} is missing")
    for kind, name in FILES.items():
        path = out / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        doc = json.loads(path.read_text())
        missing = [k for k in HEADER_KEYS + REQUIRED[kind] if k not in doc]
        if missing:
            problems.append(f"{name}: missing keys {missing}")
        if doc.get("schema") != SCHEMA or doc.get("kind") != kind:
            problems.append(f"{name}: schema/kind {doc.get('schema')}/{doc.get('kind')}")
        for i, row in enumerate(doc.get("rows", [])):
            lacking = [k for k in ROW_KEYS if k not in row]
            if row.get("status") == "ok":
                lacking += [k for k in ("time_ms",) if k not in row]
            elif "reason" not in row:
                lacking.append("reason")
            if lacking:
                problems.append(f"{name}: row {i} lacks {lacking}")
    return problems


# ------------------------------------------------------------------------------------- env


def cmd_env(out: Path, dry_run: bool, wheels: str) -> None:
    import platform

    try:
        import triton

        triton_v = triton.__version__
    except Exception as err:  # a broken Triton is a finding, not a crash of the check
        triton_v = f"unavailable: {err}"
    peers = {}
    for mod in ("liger_kernel", "trl", "transformers", "accelerate"):
        try:
            peers[mod] = __import__(mod).__version__
        except Exception as err:
            peers[mod] = f"unavailable: {type(err).__name__}: {str(err)[:120]}"
    write(out, "env", dry_run, torch=torch.__version__, triton=triton_v,
          cuda=torch.version.cuda, python=platform.python_version(), wheels=wheels,
          packages=peers, gpus=torch.cuda.device_count(),
          env={k: v for k, v in os.environ.items() if k.startswith(("CORD_", "TRITON_"))})


# ----------------------------------------------------------------------------------- tests


def _junit(path: Path) -> dict:
    if not path.is_file():
        return {"file": path.name, "error": "no junit report (the step crashed or timed out)"}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed, skip_reasons = [], {}
    for s in suites:
        for k in counts:
            counts[k] += int(s.get(k, 0))
        for case in s.iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            for tag in ("failure", "error"):
                el = case.find(tag)
                if el is not None:
                    failed.append({"test": name, "message": (el.get("message") or "")[:400]})
            sk = case.find("skipped")
            if sk is not None:
                msg = (sk.get("message") or "")[:200]
                skip_reasons[msg] = skip_reasons.get(msg, 0) + 1
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"file": path.name, **counts, "failed": failed, "skip_reasons": skip_reasons}


def cmd_tests(out: Path, dry_run: bool, reports: list[Path]) -> None:
    write(out, "tests", dry_run, suites={p.stem: _junit(p) for p in reports})


# --------------------------------------------------------------------------------- measure


class Budget:
    """A soft deadline: a section stops starting new rows once it is spent."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device: torch.device, reps: int) -> float:
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_gb_s(device: torch.device, nbytes: int) -> float:
    """Device copy bandwidth (read + write bytes per second) of one large bf16 copy."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * nbytes / _median_seconds(lambda: dst.copy_(src), device, 10) / 1e9


def gemm_tflops(device: torch.device, n: int, h: int, v: int, dtype: torch.dtype) -> float:
    a = torch.randn(n, h, device=device, dtype=dtype)
    b = torch.randn(h, v, device=device, dtype=dtype)
    torch.mm(a, b)
    return 2 * n * h * v / _median_seconds(lambda: torch.mm(a, b), device, 5) / 1e12


def _time_provider(provider, case, device: torch.device, reps: int) -> dict:
    """fwd+bwd median time and peak memory of one provider; OOM and peer failures become
    rows with a reason (ours re-raise nothing either: the row says what broke)."""
    from bench.measure import cuda_peak_bytes, mode_callables, run_once

    reason = provider.unavailable(device)
    if reason:
        return {"status": "skipped", "reason": reason}
    leaves = case.leaves()
    try:
        closure = provider.build(case)
        t0 = time.perf_counter()
        run_once(closure, leaves, "fwd+bwd", device)  # warm-up: Triton JIT, torch.compile
        first_s = time.perf_counter() - t0
        target, setup = mode_callables(closure, leaves, "fwd+bwd", device)

        def step():
            args, kwargs = setup()
            target(*args, **kwargs)

        row = {"status": "ok", "time_ms": 1e3 * _median_seconds(step, device, reps),
               "first_call_s": first_s}
        if device.type == "cuda":
            row.update(cuda_peak_bytes(closure, leaves, device))
        return row
    except torch.OutOfMemoryError:
        return {"status": "skipped", "reason": "out of device memory"}
    except Exception as err:
        return {"status": "error", "reason": f"{type(err).__name__}: {str(err)[:300]}"}
    finally:
        for t in leaves:
            t.grad = None
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _logits_bytes(loss: str, elt: int) -> tuple[int, int]:
    """(two-pass, one-pass) bytes per (N, V) entry of fwd+bwd: each input read in forward
    and again in backward plus the gradient write, or everything once."""
    reads = 2 if loss in ("reverse_kl", "cord_token_loss") else 1
    return (2 * reads + 1) * elt, (reads + 1) * elt


def measure_logits(out, dry_run, device, dtype, budget: Budget, shapes, reps) -> None:
    from bench.inputs import make_logits_case
    from bench.providers import LOGITS_PROVIDERS

    bw = copy_gb_s(device, 2**31 if device.type == "cuda" else 2**24)
    rows = []
    # Reverse KL with every peer; the other two losses of ours for context.
    plan = [("reverse_kl", p) for p in LOGITS_PROVIDERS["reverse_kl"]]
    plan += [(loss, p) for loss in ("cord_token_loss", "token_logprobs")
             for p in LOGITS_PROVIDERS[loss] if p.role == "ours"]
    elt = torch.empty((), dtype=dtype).element_size()
    for n, v in shapes:
        case = make_logits_case(n, v, dtype=dtype, device=device)
        for loss, p in plan:
            row = {"loss": loss, "provider": p.name, "role": p.role, "n_tokens": n, "vocab": v}
            if budget.left() <= 0:
                row.update(status="skipped", reason="the step's time budget was spent")
            elif dry_run and p.needs_warmup:
                row.update(status="skipped", reason="dry run: torch.compile is not exercised")
            else:
                row.update(_time_provider(p, case, device, reps))
            if row["status"] == "ok":
                two, one = _logits_bytes(loss, elt)
                t = row["time_ms"] / 1e3
                row.update(gb_s=two * n * v / t / 1e9,
                           pct_floor_10=100 * (two * n * v / (bw * 1e9)) / t,
                           pct_floor_6=100 * (one * n * v / (bw * 1e9)) / t,
                           bytes_per_entry=(two, one))
            rows.append(row)
            write(out, "logits_sweep", dry_run, copy_gb_s=bw, dtype=str(dtype), rows=rows)
        del case


def measure_fused(out, dry_run, device, dtype, budget: Budget, shape, reps) -> None:
    from bench.inputs import make_hidden_case
    from bench.measure import gemm_flops
    from bench.providers import FUSED_PROVIDERS

    n, v, h = shape
    rate = gemm_tflops(device, n, h, v, dtype)
    loss = "fused_linear_cord_token_loss"
    flops = gemm_flops(loss, "fwd+bwd", n, v, h)
    floor_ms = 1e3 * flops / (rate * 1e12)
    rows = []
    case = make_hidden_case(n, v, h, dtype=dtype, device=device)
    for p in FUSED_PROVIDERS[loss]:
        row = {"loss": loss, "provider": p.name, "role": p.role, "n_tokens": n, "vocab": v,
               "hidden": h}
        if budget.left() <= 0:
            row.update(status="skipped", reason="the step's time budget was spent")
        else:
            row.update(_time_provider(p, case, device, reps))
        if row["status"] == "ok":
            row.update(tflops=flops / (row["time_ms"] / 1e3) / 1e12,
                       pct_gemm_floor=100 * floor_ms / row["time_ms"])
        rows.append(row)
        write(out, "fused_linear", dry_run, gemm_tflops=rate, gemm_floor_ms=floor_ms,
              dtype=str(dtype), rows=rows)


def measure_variants(out, dry_run, device, dtype, budget: Budget, n, reps) -> None:
    """reverse_kl fwd+bwd of ours under other launch configs, and an unaligned vocabulary."""
    from bench.inputs import make_logits_case
    from bench.providers import get_provider
    from cord_kernels import settings

    ours = get_provider("reverse_kl", "cord_kernels")
    configs = [(QWEN2_VOCAB, bv, w) for bv in (4096, 8192) for w in (8, 16)]
    configs += [(UNALIGNED_VOCAB, 4096, 8)]
    rows, cases = [], {}
    for v, bv, w in configs:
        row = {"loss": "reverse_kl", "provider": ours.name, "n_tokens": n, "vocab": v,
               "block_v": bv, "num_warps": w}
        if device.type != "cuda":
            row.update(status="skipped",
                       reason="launch configs apply to the compiled kernels (CUDA only)")
        elif budget.left() <= 0:
            row.update(status="skipped", reason="the step's time budget was spent")
        else:
            if v not in cases:
                cases.clear()
                cases[v] = make_logits_case(n, v, dtype=dtype, device=device)
            with settings.override(block_v=bv, num_warps=w):
                row.update(_time_provider(ours, cases[v], device, reps))
        rows.append(row)
        ok = [r for r in rows if r["status"] == "ok" and r["vocab"] == QWEN2_VOCAB]
        best = min(ok, key=lambda r: r["time_ms"]) if ok else None
        write(out, "launch_variants", dry_run, rows=rows, best=best and {
            k: best[k] for k in ("block_v", "num_warps", "time_ms")})


def measure_sparse(out, dry_run, device, dtype, budget: Budget, logits_shape, fused_shape,
                   reps) -> None:
    """Every sparse-teacher provider (ours, naive torch, TRL's server loss; the 3-GEMM floor
    and the dense-teacher fused KL beside the fused one) for each teacher top-k size."""
    from bench.inputs import make_hidden_case, make_logits_case
    from bench.measure import gemm_flops
    from bench.providers import FUSED_PROVIDERS, LOGITS_PROVIDERS, SPARSE_KS

    bw = copy_gb_s(device, 2**31 if device.type == "cuda" else 2**24)
    n, v, h = fused_shape
    rate = gemm_tflops(device, n, h, v, dtype)
    elt = torch.empty((), dtype=dtype).element_size()
    rows = []

    def run(loss, providers, case, extra, finish):
        for p in providers:
            row = {"loss": loss, "provider": p.name, "role": p.role, **extra}
            if budget.left() <= 0:
                row.update(status="skipped", reason="the step's time budget was spent")
            else:
                row.update(_time_provider(p, case, device, reps))
            if row["status"] == "ok":
                finish(row)
            rows.append(row)
            write(out, "sparse_teacher", dry_run, copy_gb_s=bw, gemm_tflops=rate,
                  dtype=str(dtype), rows=rows)

    ln, lv = logits_shape
    case = make_logits_case(ln, lv, dtype=dtype, device=device)
    for k in SPARSE_KS:
        def logits_rates(row):  # two passes over s (lse, then the gradient) and the ds write
            t = row["time_ms"] / 1e3
            row.update(gb_s=3 * elt * ln * lv / t / 1e9,
                       pct_floor_6=100 * (3 * elt * ln * lv / (bw * 1e9)) / t)

        loss = f"sparse_teacher_loss[k{k}]"
        run(loss, LOGITS_PROVIDERS[loss], case, {"k": k, "n_tokens": ln, "vocab": lv},
            logits_rates)
    del case
    case = make_hidden_case(n, v, h, dtype=dtype, device=device)
    for k in SPARSE_KS:
        loss = f"fused_linear_sparse_teacher_loss[k{k}]"
        flops = gemm_flops(loss, "fwd+bwd", n, v, h)

        def fused_rates(row, flops=flops):
            t = row["time_ms"] / 1e3
            row.update(tflops=flops / t / 1e12,
                       pct_gemm_floor=100 * (flops / (rate * 1e12)) / t)

        run(loss, FUSED_PROVIDERS[loss], case, {"k": k, "n_tokens": n, "vocab": v, "hidden": h},
            fused_rates)


def cmd_measure(out: Path, dry_run: bool, budget_s: float) -> None:
    on_cuda = torch.cuda.is_available() and not dry_run
    device = torch.device("cuda" if on_cuda else "cpu")
    dtype = torch.bfloat16
    if on_cuda:
        logits_shapes, fused_shape, variant_n, reps = (
            [(4096, QWEN2_VOCAB), (16384, QWEN2_VOCAB)],
            (16384, QWEN2_7B_VOCAB, QWEN2_7B_HIDDEN), 16384, 5)
    else:  # the dry run: the same code on shapes a CPU runs in seconds
        logits_shapes, fused_shape, variant_n, reps = (
            [(16, 1024), (32, 1024)], (64, 1024, 32), 16, 1)
    # Shares of the step's budget: the sweep, the fused-linear comparison, the sparse-teacher
    # rows, the variants.
    t = Budget(budget_s)
    measure_logits(out, dry_run, device, dtype, Budget(0.35 * t.left()), logits_shapes, reps)
    measure_fused(out, dry_run, device, dtype, Budget(0.45 * t.left()), fused_shape, reps)
    measure_sparse(out, dry_run, device, dtype, Budget(0.65 * t.left()), logits_shapes[-1],
                   fused_shape, reps)
    measure_variants(out, dry_run, device, dtype, Budget(t.left()), variant_n, reps)


# ----------------------------------------------------------------------------------- train

_METRIC = re.compile(r"([a-z_0-9]+)=(-?[0-9.eE+-]+|nan|True|False)")


def _metrics(line: str) -> dict:
    out = {}
    for k, val in _METRIC.findall(line):
        try:
            x = float(val)
            out[k] = x if math.isfinite(x) else None  # strict JSON has no NaN
        except ValueError:
            out[k] = val == "True"
    return out


def cmd_train(out: Path, dry_run: bool, log: Path, rc: int, seconds: float) -> None:
    text = log.read_text(errors="replace") if log.is_file() else ""
    # The trainer logs "loss=... step=N ..." per logging step and "final: ..." at the end.
    steps, final = [], {}
    for line in re.split(r"[\r\n]+", text):
        if line.startswith("final:"):
            final = _metrics(line)
        elif "step=" in line and "loss=" in line:
            m = _metrics(line[line.rfind("loss="):])
            if m and (not steps or steps[-1].get("step") != m.get("step")):
                steps.append(m)
    write(out, "train", dry_run, returncode=rc, seconds=seconds, steps=steps, final=final,
          log_tail=text[-3000:] if rc else text[-600:])


# --------------------------------------------------------------------------------- summary


def _fmt(x, spec=".1f"):
    return "" if x is None else format(x, spec)


def _table(rows, cols) -> list[str]:
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for _, key in cols:
            val = key(r) if callable(key) else r.get(key)
            cells.append(val if isinstance(val, str) else _fmt(val))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _load(out: Path, kind: str) -> dict:
    path = out / FILES[kind]
    return json.loads(path.read_text()) if path.is_file() else {}


def _status(r) -> str:
    return "ok" if r.get("status") == "ok" else f"{r.get('status')}: {r.get('reason', '')}"


def cmd_summary(out: Path, dry_run: bool) -> None:
    env, tests = _load(out, "env"), _load(out, "tests")
    lines = ["# GPU check" + (" (dry run on the CPU: plumbing only)" if dry_run else ""), "",
             f"Device: {env.get('device')}; torch {env.get('torch')}, triton {env.get('triton')}, "
             f"CUDA {env.get('cuda')}, Python {env.get('python')}; wheels: {env.get('wheels')}.",
             "", "## Tests", ""]
    suites = tests.get("suites", {})
    lines += _table([{"suite": k, **v} for k, v in suites.items()],
                    [("suite", "suite"), ("passed", lambda r: str(r.get("passed", "?"))),
                     ("failed", lambda r: str(r.get("failures", 0) + r.get("errors", 0))),
                     ("skipped", lambda r: str(r.get("skipped", "?"))),
                     ("note", lambda r: r.get("error", ""))])
    for name, s in suites.items():
        for f in s.get("failed", []):
            lines.append(f"- FAILED {name}: `{f['test']}`: {f['message'][:200]}")
    sweep = _load(out, "logits_sweep")
    lines += ["", f"## Logits in, fwd+bwd ({sweep.get('dtype')}); copy bandwidth "
              f"{_fmt(sweep.get('copy_gb_s'))} GB/s", ""]
    lines += _table(sweep.get("rows", []), [
        ("loss", "loss"), ("provider", "provider"), ("N", lambda r: str(r["n_tokens"])),
        ("V", lambda r: str(r["vocab"])), ("ms", lambda r: _fmt(r.get("time_ms"), ".2f")),
        ("GB/s (two-pass bytes)", "gb_s"), ("% of 10 B/entry floor", "pct_floor_10"),
        ("% of 6 B/entry floor", "pct_floor_6"),
        ("peak GiB", lambda r: _fmt(r["peak_bytes"] / 2**30, ".2f") if "peak_bytes" in r
         else ""), ("status", _status)])
    fused = _load(out, "fused_linear")
    lines += ["", f"## Fused linear, fwd+bwd ({fused.get('dtype')}); torch.mm "
              f"{_fmt(fused.get('gemm_tflops'))} TFLOP/s, 4-GEMM floor "
              f"{_fmt(fused.get('gemm_floor_ms'), '.1f')} ms", ""]
    lines += _table(fused.get("rows", []), [
        ("provider", "provider"), ("N", lambda r: str(r["n_tokens"])),
        ("H", lambda r: str(r.get("hidden"))), ("V", lambda r: str(r["vocab"])),
        ("ms", lambda r: _fmt(r.get("time_ms"), ".1f")), ("TFLOP/s", "tflops"),
        ("% of GEMM floor", "pct_gemm_floor"),
        ("peak GiB", lambda r: _fmt(r["peak_bytes"] / 2**30, ".2f") if "peak_bytes" in r
         else ""), ("status", _status)])
    var = _load(out, "launch_variants")
    lines += ["", f"## Launch configs (reverse_kl fwd+bwd); best: {var.get('best')}", ""]
    lines += _table(var.get("rows", []), [
        ("V", lambda r: str(r["vocab"])), ("BLOCK_V", lambda r: str(r.get("block_v"))),
        ("warps", lambda r: str(r.get("num_warps"))),
        ("ms", lambda r: _fmt(r.get("time_ms"), ".2f")), ("status", _status)])
    sp = _load(out, "sparse_teacher")
    lines += ["", f"## Sparse teacher (top-k), fwd+bwd ({sp.get('dtype')}); copy "
              f"{_fmt(sp.get('copy_gb_s'))} GB/s, torch.mm {_fmt(sp.get('gemm_tflops'))} "
              "TFLOP/s", ""]
    lines += _table(sp.get("rows", []), [
        ("loss", "loss"), ("provider", "provider"), ("N", lambda r: str(r["n_tokens"])),
        ("V", lambda r: str(r["vocab"])), ("ms", lambda r: _fmt(r.get("time_ms"), ".2f")),
        ("GB/s (6 B/entry)", "gb_s"), ("% of copy bw", "pct_floor_6"), ("TFLOP/s", "tflops"),
        ("% of 3-GEMM floor", "pct_gemm_floor"),
        ("peak GiB", lambda r: _fmt(r["peak_bytes"] / 2**30, ".2f") if "peak_bytes" in r
         else ""), ("status", _status)])
    tr = _load(out, "train")
    last = tr.get("final") or (tr.get("steps") or [{}])[-1]
    lines += ["", "## cord train (tiny model, bf16, use_fused_linear=true)", "",
              f"exit code {tr.get('returncode')}, {_fmt(tr.get('seconds'))} s, "
              f"{len(tr.get('steps', []))} logged steps, final: "
              f"{ {k: last[k] for k in ('loss', 'grad_norm', 'step') if k in last} }", ""]
    (out / SUMMARY).write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("env", "tests", "measure", "train", "summary",
                                        "validate"))
    ap.add_argument("out", type=Path)
    ap.add_argument("rest", nargs="*")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--wheels", default="not installed")
    ap.add_argument("--budget-s", type=float, default=200.0)
    a = ap.parse_intermixed_args(argv)
    if a.command == "validate":
        problems = validate(a.out)
        for p in problems:
            print(f"gpu_check: {p}", file=sys.stderr)
        return 1 if problems else 0
    a.out.mkdir(parents=True, exist_ok=True)
    if a.command == "env":
        cmd_env(a.out, a.dry_run, a.wheels)
    elif a.command == "tests":
        cmd_tests(a.out, a.dry_run, [Path(p) for p in a.rest])
    elif a.command == "measure":
        cmd_measure(a.out, a.dry_run, a.budget_s)
    elif a.command == "train":
        log, rc, seconds = a.rest
        cmd_train(a.out, a.dry_run, Path(log), int(rc), float(seconds))
    else:
        cmd_summary(a.out, a.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
