"""The measuring loop of the GPU check's steps, and the runner of its logits-in and fused rows.

``cmd_measure`` runs a step's planned rows in order, rewriting the step's file after every
change, and stops starting rows when the soft budget is spent (the row says so); SIGINT, which
timeout(1) sends at the step's hard limit, marks the row in progress "interrupted" and leaves
the rest "not reached". What a row does is its step's runner's business (``Runner``): this
module's ``TableRunner`` times the providers of ``bench.providers`` (fwd+bwd, median of a few
calls after one warm-up call) and adds the floor columns of ``bench.floors`` at the copy
bandwidth and GEMM rate it measured in the same step; ``bench.gpu.trl`` and
``bench.gpu.vocab_parallel`` bring their own.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Protocol

import torch

from bench.floors import floor_columns
from bench.gpu.files import NOT_REACHED, RUNNING, load, now, save
from bench.measure import copy_gb_s, gemm_tflops, median_seconds

QWEN2_VOCAB, QWEN2_AUDIO_VOCAB, QWEN2_7B_HIDDEN = 151_936, 152_064, 3584


def device_name(dry_run: bool) -> str:
    if torch.cuda.is_available() and not dry_run:
        return torch.cuda.get_device_name()
    return "cpu (dry run)" if dry_run else "cpu"


def header(kind: str, dry_run: bool, status: str, reason: str) -> dict:
    from bench.gpu.files import SCHEMA

    return {"schema": SCHEMA, "kind": kind, "dry_run": dry_run, "device": device_name(dry_run),
            "created": now(), "step": {"status": status, "reason": reason}}


class Budget:
    """A soft deadline: a step stops starting new rows once it is spent."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class Runner(Protocol):
    def prepare(self, doc: dict) -> None:
        """Measures what the rows are compared with (rates) into the step's ``doc``."""

    def run(self, row: dict) -> dict:
        """One row's outcome: {"status": "ok", "time_ms": ..., ...} or a status and reason."""

    def close(self) -> None:
        """Releases what the rows shared (process groups, cached inputs)."""


# ------------------------------------------------------------------- logits-in and fused rows


def providers(table: str, loss: str):
    from bench.providers import FUSED_PROVIDERS, LOGITS_PROVIDERS, TRL_REVERSE_KL

    if table == "fused":
        return FUSED_PROVIDERS[loss]
    found = [p for p in LOGITS_PROVIDERS[loss] if p.role != "ours" or p.name == "cord_kernels"]
    if loss == "reverse_kl":  # TRL's reverse KL beside Liger's (before the compiled row)
        found.insert(-1 if found[-1].needs_warmup else len(found), TRL_REVERSE_KL)
    return found


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

        row = {"status": "ok", "time_ms": 1e3 * median_seconds(step, device, reps),
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


class TableRunner:
    """The rows of the realistic and rest steps: a provider of a loss at one shape. Inputs
    are drawn once per shape and kept while consecutive rows share it."""

    def __init__(self, device: torch.device, dry_run: bool, reps: int):
        self.device, self.dry_run, self.reps = device, dry_run, reps
        self.dtype = torch.bfloat16
        self.elt = torch.empty((), dtype=self.dtype).element_size()
        self.key, self.case, self.doc = None, None, {}

    def prepare(self, doc: dict) -> None:
        self.doc = doc
        on_cuda = self.device.type == "cuda"
        doc["copy_gb_s"] = copy_gb_s(self.device, 2**31 if on_cuda else 2**24)
        fused = [r for r in doc["rows"] if r["table"] == "fused"]
        if fused:
            r = fused[0]
            doc["gemm_tflops"] = gemm_tflops(self.device, r["n_tokens"], r["hidden"],
                                             r["vocab"], self.dtype)

    def _case(self, row: dict):
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

    def run(self, row: dict) -> dict:
        from cord_kernels import settings

        table = "fused" if row["table"] == "fused" else "logits"
        p = next((p for p in providers(table, row["loss"]) if p.name == row["provider"]), None)
        if p is None:
            raise ValueError(f"no provider {row['provider']!r} for {row['loss']!r}")
        if self.dry_run and (p.role == "peer" or p.needs_warmup):
            return {"status": "skipped", "reason": "dry run: peers and torch.compile are "
                    "imported and timed on the GPU only"}
        if row["table"] == "variants" and self.device.type != "cuda":
            return {"status": "skipped",
                    "reason": "launch configs apply to the compiled kernels (CUDA only)"}
        case = self._case(row)
        found = {"n_valid": int(case.mask.sum())}
        if row["table"] == "variants":
            with settings.override(block_v=row["block_v"], num_warps=row["num_warps"]):
                found.update(_time_provider(p, case, self.device, self.reps))
        else:
            found.update(_time_provider(p, case, self.device, self.reps))
        if found["status"] == "ok":
            found.update(floor_columns({**row, **found}, copy_gb_s=self.doc.get("copy_gb_s"),
                                       gemm_tflops=self.doc.get("gemm_tflops"), elt=self.elt))
        return found

    def close(self) -> None:
        self.key = self.case = None


# -------------------------------------------------------------------------------- the loop


def cmd_measure(out: Path, step: str, rows: list[dict], runner: Runner, dry_run: bool,
                budget_s: float) -> int:
    """Runs ``rows`` (the plan of ``step``) with ``runner``, rewriting the step's file after
    every change. Returns 0, or 130 after timeout(1)'s SIGINT."""
    # A shell started in the background (nohup, `cmd &`, CI runners) starts its children with
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler: timeout(1)'s SIGINT
    # would be lost and its later SIGKILL would leave the file saying "running".
    signal.signal(signal.SIGINT, signal.default_int_handler)
    doc = load(out, step) or header(step, dry_run, RUNNING, "")
    doc["rows"] = [dict(r, status=NOT_REACHED, reason=f"{NOT_REACHED}: the step has not got "
                        "to this row yet") for r in rows]
    cache = os.environ.get("TRITON_CACHE_DIR")
    fresh = cache is not None and not (Path(cache).is_dir() and any(Path(cache).iterdir()))
    budget = Budget(budget_s)
    doc.update(created=now(), dtype=str(torch.bfloat16), device=device_name(dry_run),
               triton_cache=f"fresh at the step's start ({cache})" if fresh else
               f"warm or default ({cache or '~/.triton/cache'})")
    doc["step"].update(status=RUNNING, reason="the step is running (or was killed)")
    rows = doc["rows"]
    current = None
    try:
        save(out, step, doc)
        try:
            runner.prepare(doc)
        except Exception as err:  # a rate, an import, a process group: no row can run
            reason = f"the step's setup failed: {type(err).__name__}: {str(err)[:300]}"
            for r in rows:
                r.update(status="error", reason=reason)
            doc["step"].update(status="failed", reason=reason)
            save(out, step, doc)
            return 1
        save(out, step, doc)
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
                row.update(runner.run(row))
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
    finally:
        runner.close()
    doc["step"].update(status="done", reason="")
    save(out, step, doc)
    return 0
