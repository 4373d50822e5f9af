"""The measuring half of ``scripts/gpu_check.sh`` (the file plumbing is ``bench.gpu_files``).

    python -m bench.gpu_check env      OUT [--dry-run] [--wheels STATUS] [--steps STEP,...]
                                           [--limit STEP=SECONDS ...]
    python -m bench.gpu_check measure  OUT STEP [--dry-run] [--budget-s S]

``env`` first writes every file of the check (``cmd_init``), before any other step runs, with
every row it plans "not reached" (a step left out by ``--only`` is "not run"); each step then
rewrites its own file as its rows finish. ``measure`` runs one of the two measuring steps, its
rows in their planned order, each fwd+bwd (median of a few calls after one warm-up call), and
stops starting rows when its soft budget is spent (the row says so); SIGINT, which timeout(1)
sends at the step's hard limit, marks the row in progress "interrupted" and leaves the rest "not
reached". The Triton (and inductor) cache is a fresh folder for each measuring step
(gpu_check.sh sets TRITON_CACHE_DIR), so ``first_call_s`` of the first row of each kernel is
a cold compile.

    realistic   bf16, N = 16,384 tokens. Logits in at V = 152,064 (Qwen2-Audio's head):
                reverse KL (ours, Liger, TRL, naive, torch.compile) and the CORD loss
                (ours), GB/s and % of the two-pass (10 B/entry) and one-pass (6 B/entry)
                floors at the copy bandwidth measured in the same step. Fused linear at
                H = 3584: the CORD loss (ours, the 4-GEMM floors, TRL, Liger, naive),
                TFLOP/s and % of the floor at torch.mm's rate measured in the same step.
    rest        the JSD and token log-probs on logits in and the fused JSD distillation at
                the same sizes with their peers; the sparse-teacher losses (k = 8, then
                1 and 64); reverse KL at N = 4096, V = 151,936; BLOCK_V x warps of the
                streaming kernels and V = 151,643 (rows not 16-byte aligned); then the
                torch.compile rows, whose cold compile is the slowest.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from bench.gpu_files import (
    NOT_REACHED,
    NOT_RUN,
    RUNNING,
    SCHEMA,
    STEPS,
    cmd_summary,
    load,
    now,
    save,
)

QWEN2_VOCAB, QWEN2_AUDIO_VOCAB, QWEN2_7B_HIDDEN = 151_936, 152_064, 3584
UNALIGNED_VOCAB = 151_643  # Qwen2's tokenizer size before padding: V % 8 != 0
REAL_N, SWEEP_N = 16_384, 4096
MEASURE_STEPS = ("realistic", "rest")


def _device_name(dry_run: bool) -> str:
    if torch.cuda.is_available() and not dry_run:
        return torch.cuda.get_device_name()
    return "cpu (dry run)" if dry_run else "cpu"


def _header(kind: str, dry_run: bool, status: str, reason: str) -> dict:
    return {"schema": SCHEMA, "kind": kind, "dry_run": dry_run, "device": _device_name(dry_run),
            "created": now(), "step": {"status": status, "reason": reason}}


# ------------------------------------------------------------------------------------- plan


def _shapes(dry_run: bool) -> dict:
    if dry_run:  # the same code on shapes a CPU runs in a blink
        return {"real": (32, 1000), "fused": (64, 1000, 32), "sweep": (16, 1024),
                "variant_vocabs": (1024, 1021), "reps": 1}
    return {"real": (REAL_N, QWEN2_AUDIO_VOCAB), "fused": (REAL_N, QWEN2_AUDIO_VOCAB,
                                                           QWEN2_7B_HIDDEN),
            "sweep": (SWEEP_N, QWEN2_VOCAB), "variant_vocabs": (QWEN2_VOCAB, UNALIGNED_VOCAB),
            "reps": 5}


def _providers(table: str, loss: str):
    from bench.providers import FUSED_PROVIDERS, LOGITS_PROVIDERS, TRL_REVERSE_KL

    if table == "fused":
        return FUSED_PROVIDERS[loss]
    found = [p for p in LOGITS_PROVIDERS[loss] if p.role != "ours" or p.name == "cord_kernels"]
    if loss == "reverse_kl":  # TRL's reverse KL beside Liger's (before the compiled row)
        found.insert(-1 if found[-1].needs_warmup else len(found), TRL_REVERSE_KL)
    return found


def _rows(table: str, loss: str, n: int, v: int, h: int | None = None, *, roles=None,
          **extra) -> list[dict]:
    rows = []
    for p in _providers(table, loss):
        if roles is not None and p.role not in roles:
            continue
        row = {"table": table, "loss": loss, "provider": p.name, "role": p.role,
               "n_tokens": n, "vocab": v, **({"hidden": h} if h else {}), **extra}
        row["id"] = "|".join(str(x) for x in (loss, p.name, f"N{n}", f"V{v}", h and f"H{h}")
                             if x)
        rows.append(row)
    return rows


def _compiled_last(rows: list[dict]) -> list[dict]:
    """torch.compile rows at the end of the step: a cold inductor compile takes tens of
    seconds, and no other row should wait behind it."""
    late = [r for r in rows if r["provider"] == "torch.compile"]
    return [r for r in rows if r not in late] + late


def plan(step: str, dry_run: bool) -> list[dict]:
    """The rows of a measuring step, in the order they run."""
    from bench.providers import SPARSE_KS

    s = _shapes(dry_run)
    n, v = s["real"]
    fn, fv, fh = s["fused"]
    if step == "realistic":
        rows = _rows("logits", "reverse_kl", n, v) + _rows("logits", "cord_token_loss", n, v,
                                                           roles={"ours"})
        rows += _rows("fused", "fused_linear_cord_token_loss", fn, fv, fh)
        return _compiled_last(rows)
    # Grouped by input shape (a fused case is drawn on the host: seconds), the sparse teacher's
    # k = 8, the common top-k, first; the dense-teacher baseline once.
    ks = sorted(SPARSE_KS, key=lambda k: k != 8)
    rows = _rows("logits", "jsd", n, v) + _rows("logits", f"sparse_teacher_loss[k{ks[0]}]", n,
                                                 v, k=ks[0])
    rows += _rows("logits", "token_logprobs", n, v)
    for k in ks[1:]:
        rows += _rows("logits", f"sparse_teacher_loss[k{k}]", n, v, k=k)
    rows += _rows("fused", "fused_linear_distill_loss[jsd]", fn, fv, fh)
    for k in ks:
        rows += _rows("fused", f"fused_linear_sparse_teacher_loss[k{k}]", fn, fv, fh, k=k,
                      roles=None if k == ks[0] else {"ours", "floor", "naive", "peer"})
    sn, sv = s["sweep"]
    rows += _rows("logits", "reverse_kl", sn, sv)
    for vocab in s["variant_vocabs"]:
        for bv, w in ((4096, 8), (4096, 16), (8192, 8), (8192, 16)):
            if vocab != s["variant_vocabs"][0] and (bv, w) != (4096, 8):
                continue  # the unaligned vocabulary at the default config only
            for r in _rows("logits", "reverse_kl", n, vocab, roles={"ours"}):
                r.update(table="variants", block_v=bv, num_warps=w,
                         id=f"{r['id']}|BV{bv}|W{w}")
                rows.append(r)
    return _compiled_last(rows)


def cmd_init(out: Path, dry_run: bool, steps: list[str], limits: dict[str, float]) -> None:
    """Every file of the check, its rows "not reached" (or "not run" for a step left out)."""
    out.mkdir(parents=True, exist_ok=True)
    for kind in STEPS:
        status, reason = NOT_REACHED, "the check has not reached this step yet"
        if kind not in steps:
            status, reason = NOT_RUN, f"this call ran only {', '.join(steps)}"
        doc = _header(kind, dry_run, status, reason)
        doc["step"]["limit_s"] = limits.get(kind)
        if kind in MEASURE_STEPS:
            rows = plan(kind, dry_run)
            for r in rows:
                r.update(status=status, reason=f"{status}: {reason}")
            doc["rows"] = rows
        elif kind == "tests":
            doc["suite"], doc["files"] = {}, []
        elif kind == "train":
            doc["runs"] = {name: {"status": status, "reason": reason}
                           for name in ("cord_train", "trl_gkd")}
            if dry_run:
                doc["runs"]["trl_gkd"] = {"status": NOT_RUN, "reason": "dry run: "
                                          "tests/test_examples.py runs the drop-in on the CPU"}
        save(out, kind, doc)
    cmd_summary(out)


# -------------------------------------------------------------------------------------- env


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _driver() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,"
                               "noheader"], capture_output=True, text=True,
                              timeout=20).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "no nvidia-smi"


def cmd_env(out: Path, dry_run: bool, wheels: str) -> None:
    """Versions, the GPU, and whether the peers the wheels brought import (on the GPU: an
    image's pyarrow or fsspec that datasets does not accept shows up here, not later)."""
    try:
        import triton

        triton_v = triton.__version__
    except Exception as err:  # a broken Triton is a finding, not a crash of the check
        triton_v = f"unavailable: {err}"
    dists = ("liger-kernel", "trl", "datasets", "transformers", "accelerate", "pyarrow",
             "pandas", "fsspec", "huggingface-hub", "soundfile", "pytest", "pytest-xdist")
    imports = {}
    for mod in ("liger_kernel.transformers", "trl.experimental.gkd", "soundfile"):
        if dry_run:
            imports[mod] = "dry run: not tried"
            continue
        try:
            __import__(mod)
            imports[mod] = "ok"
        except Exception as err:
            imports[mod] = f"{type(err).__name__}: {str(err)[:200]}"
    doc = load(out, "env")
    doc.update(created=now(), torch=torch.__version__, triton=triton_v, cuda=torch.version.cuda,
               driver="dry run" if dry_run else _driver(), python=platform.python_version(),
               gpus=torch.cuda.device_count(), wheels=wheels,
               packages={d: _version(d) for d in dists}, imports=imports,
               env={k: v for k, v in os.environ.items() if k.startswith(("CORD_", "TRITON_"))})
    save(out, "env", doc)


# ---------------------------------------------------------------------------------- measure


class Budget:
    """A soft deadline: a step stops starting new rows once it is spent."""

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
    """fwd+bwd median time, first-call time and peak memory of one provider; OOM and peer
    failures become rows with a reason."""
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


def entry_bytes(loss: str, elt: int) -> tuple[int, int]:
    """(two-pass, one-pass) bytes per (N, V) entry of fwd+bwd on logits in: each input read
    in forward and again in backward plus the gradient write, or everything once. bf16
    reverse KL: 10 and 6 (SPEC section 3); one input (log-probs, sparse teacher): 6 and 4."""
    reads = 2 if loss in ("reverse_kl", "cord_token_loss", "jsd") else 1
    return (2 * reads + 1) * elt, (reads + 1) * elt


class _Cases:
    """The inputs of the latest shape, kept while consecutive rows share it."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype, self.key, self.case = device, dtype, None, None

    def get(self, row: dict):
        from bench.inputs import make_hidden_case, make_logits_case

        fused = row["table"] == "fused"
        key = (fused, row["n_tokens"], row["vocab"], row.get("hidden"))
        if key != self.key:
            self.key = self.case = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            to = dict(dtype=self.dtype, device=self.device)
            self.case = (make_hidden_case(row["n_tokens"], row["vocab"], row["hidden"], **to)
                         if fused else make_logits_case(row["n_tokens"], row["vocab"], **to))
            self.key = key
        return self.case


def _provider_of(row: dict):
    for p in _providers("fused" if row["table"] == "fused" else "logits", row["loss"]):
        if p.name == row["provider"]:
            return p
    raise ValueError(f"no provider {row['provider']!r} for {row['loss']!r}")


def _run_row(row: dict, cases: _Cases, device, dry_run: bool, reps: int) -> dict:
    from cord_kernels import settings

    p = _provider_of(row)
    if dry_run and (p.role == "peer" or p.needs_warmup):
        return {"status": "skipped", "reason": "dry run: peers and torch.compile are imported "
                "and timed on the GPU only"}
    if row["table"] == "variants" and device.type != "cuda":
        return {"status": "skipped",
                "reason": "launch configs apply to the compiled kernels (CUDA only)"}
    case = cases.get(row)
    if row["table"] == "variants":
        with settings.override(block_v=row["block_v"], num_warps=row["num_warps"]):
            return _time_provider(p, case, device, reps)
    return _time_provider(p, case, device, reps)


def _rates(row: dict, doc: dict, elt: int) -> dict:
    from bench.measure import gemm_flops

    t = row["time_ms"] / 1e3
    n, v = row["n_tokens"], row["vocab"]
    if row["table"] == "fused":
        flops = gemm_flops(row["loss"], "fwd+bwd", n, v, row["hidden"])
        return {"tflops": flops / t / 1e12,
                "pct_gemm_floor": 100 * flops / (doc["gemm_tflops"] * 1e12) / t}
    two, one = entry_bytes(row["loss"], elt)
    bw = doc["copy_gb_s"] * 1e9
    return {"gb_s": two * n * v / t / 1e9, "bytes_per_entry": [two, one],
            "pct_two_pass_floor": 100 * (two * n * v / bw) / t,
            "pct_one_pass_floor": 100 * (one * n * v / bw) / t}


def cmd_measure(out: Path, step: str, dry_run: bool, budget_s: float) -> int:
    """Runs the rows ``cmd_init`` planned for ``step``, rewriting its file after every change."""
    # A shell started in the background (nohup, `cmd &`, CI runners) starts its children with
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler: timeout(1)'s SIGINT
    # would be lost and its later SIGKILL would leave the file saying "running".
    signal.signal(signal.SIGINT, signal.default_int_handler)
    doc = load(out, step) or _header(step, dry_run, RUNNING, "")
    doc["rows"] = [dict(r, status=NOT_REACHED, reason=f"{NOT_REACHED}: the step has not got "
                        "to this row yet") for r in plan(step, dry_run)]
    on_cuda = torch.cuda.is_available() and not dry_run
    device = torch.device("cuda" if on_cuda else "cpu")
    dtype = torch.bfloat16
    elt = torch.empty((), dtype=dtype).element_size()
    cache = os.environ.get("TRITON_CACHE_DIR")
    fresh = cache is not None and not (Path(cache).is_dir() and any(Path(cache).iterdir()))
    budget = Budget(budget_s)
    doc.update(created=now(), dtype=str(dtype), device=_device_name(dry_run),
               triton_cache=f"fresh at the step's start ({cache})" if fresh else
               f"warm or default ({cache or '~/.triton/cache'})")
    doc["step"].update(status=RUNNING, reason="the step is running (or was killed)")
    rows = doc["rows"]
    current = None
    try:
        save(out, step, doc)
        fused = [r for r in rows if r["table"] == "fused"]
        doc["copy_gb_s"] = copy_gb_s(device, 2**31 if on_cuda else 2**24)
        if fused:
            r = fused[0]
            doc["gemm_tflops"] = gemm_tflops(device, r["n_tokens"], r["hidden"], r["vocab"],
                                             dtype)
        save(out, step, doc)
        cases = _Cases(device, dtype)
        reps = _shapes(dry_run)["reps"]
        for row in rows:
            current = row
            if budget.left() <= 0:
                row.update(status="skipped", reason="the step's time budget was spent")
            else:
                row.update(status=RUNNING, reason="started; the step ended before it finished",
                           started=now())
                save(out, step, doc)
                for k in ("reason", "started"):
                    row.pop(k)
                row.update(_run_row(row, cases, device, dry_run, reps))
                if row["status"] == "ok":
                    row.update(_rates(row, doc, elt))
            save(out, step, doc)
        current = None
    except KeyboardInterrupt:  # timeout(1)'s SIGINT at the step's limit
        if current is not None:
            current.update(status="interrupted",
                                 reason="stopped at the step's time limit while running")
        for r in rows:
            if r["status"] == NOT_REACHED:
                r["reason"] = f"{NOT_REACHED}: the step was stopped at its time limit"
        doc["step"].update(status="interrupted", reason="SIGINT at the step's time limit")
        save(out, step, doc)
        return 130
    doc["step"].update(status="done", reason="")
    save(out, step, doc)
    return 0


# ------------------------------------------------------------------------------------- main


def _limits(pairs: list[str]) -> dict[str, float]:
    found = {}
    for pair in pairs:
        name, _, seconds = pair.partition("=")
        found[name] = float(seconds)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("env", "measure"))
    ap.add_argument("out", type=Path)
    ap.add_argument("step", nargs="?", choices=MEASURE_STEPS)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--limit", action="append", default=[], metavar="STEP=SECONDS")
    ap.add_argument("--wheels", default="not installed")
    ap.add_argument("--budget-s", type=float, default=100.0)
    a = ap.parse_args(argv)
    if a.command == "env":
        cmd_init(a.out, a.dry_run, [s for s in a.steps.split(",") if s], _limits(a.limit))
        cmd_env(a.out, a.dry_run, a.wheels)
    else:
        if a.step is None:
            ap.error(f"measure needs a step: one of {MEASURE_STEPS}")
        return cmd_measure(a.out, a.step, a.dry_run, a.budget_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
