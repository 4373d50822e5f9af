"""Recording benchmark rows and computing ratios over the rows of one run.

A row is one (loss, provider, shape, mode) with its status ("ok", "skipped", "error"), the
median time, memory (fwd+bwd only), the counted bytes / flops, and on fwd+bwd rows the floor
columns of ``bench.floors`` (the valid-rows floor, the all-rows figure beside it) at the copy
bandwidth and GEMM rate the run measured (``bench.harness``). Ratios are computed here, over
rows of the same run: each provider against naive torch, and cord_kernels against the best
peer (the fastest, resp. leanest, of naive torch, torch.compile, Liger and TRL).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import subprocess
from collections import defaultdict
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch

from bench import floors
from bench.measure import device_peaks, floor_bytes, gemm_flops

PEER_ROLES = ("naive", "peer")


def _shape_dict(shape) -> dict:
    return asdict(shape) if is_dataclass(shape) else dict(shape)


class Recorder:
    """Collects rows during the session (one instance per run)."""

    def __init__(self, config):
        self.config = config
        self.rows: list[dict] = []
        self.static_gpu: list[dict] = []
        self.static_gpu_note: str | None = None
        self.started = _dt.datetime.now(_dt.timezone.utc)
        self.commit = git_commit()  # the code the run started from
        self.load_samples: list[float] = []  # 1-min load average at each row
        self.elapsed_s: float | None = None  # set when re-rendering a saved run
        # (loss, provider) -> seconds the run spent on it: timing, warm-up, skips.
        self.provider_seconds: dict[tuple[str, str], float] = {}

    def add_time(self, loss: str, provider: str, seconds: float) -> None:
        key = (loss, provider)
        self.provider_seconds[key] = self.provider_seconds.get(key, 0.0) + seconds

    def slowest(self, k: int = 3) -> list[tuple[str, str, float]]:
        """The ``k`` providers the run spent most time on: (loss, provider, seconds)."""
        ranked = sorted(self.provider_seconds.items(), key=lambda kv: -kv[1])[:k]
        return [(loss, prov, sec) for (loss, prov), sec in ranked]

    def _row(self, loss, provider, shape, mode, status, **extra) -> dict:
        """Appends a row and returns it (the caller may fill ``memory`` in later)."""
        if hasattr(os, "getloadavg"):
            self.load_samples.append(os.getloadavg()[0])
        row = {"loss": loss, "provider": provider.name, "role": provider.role, "mode": mode,
               "shape_id": shape.id, "shape": _shape_dict(shape), "status": status,
               "note": provider.note, **extra}
        self.rows.append(row)
        return row

    def skip(self, *, loss, provider, shape, mode, reason: str) -> None:
        self._row(loss, provider, shape, mode, "skipped", reason=reason)

    def error(self, *, loss, provider, shape, mode, reason: str) -> None:
        self._row(loss, provider, shape, mode, "error", reason=reason)

    def ok(self, *, loss, provider, shape, mode, stats, calibration_s: float | None, memory,
           valid_fraction: float | None = None, first_call_s: float | None = None,
           rates: dict | None = None) -> dict:
        cfg = self.config
        extra = {"calibration_s": calibration_s, "memory": memory,
                 "valid_fraction": valid_fraction, "first_call_s": first_call_s}
        if stats is not None:
            extra.update(time_s=stats.median, time_min_s=stats.min, time_max_s=stats.max,
                         rounds=stats.rounds)
        else:  # --benchmark-disable: the one warm-up call is all we have
            extra.update(time_s=calibration_s or float("nan"), rounds=0)
        s = _shape_dict(shape)
        if "hidden" in s:
            flops = gemm_flops(loss, mode, s["n_tokens"], s["vocab"], s["hidden"])
            extra.update(gemm_flops=flops, tflops=flops / extra["time_s"] / 1e12)
        else:
            nbytes = floor_bytes(loss, mode, s["n_tokens"], s["vocab"], cfg.dtype)
            extra.update(floor_bytes=nbytes, gbps=nbytes / extra["time_s"] / 1e9)
        peaks = device_peaks(cfg.device, cfg.dtype)
        if peaks:  # the physical floor of SPEC section 3 on this GPU
            extra["physical_floor_s"] = (extra["gemm_flops"] / peaks["flops_per_s"]
                                         if "hidden" in s else
                                         extra["floor_bytes"] / peaks["bytes_per_s"])
        if rates is not None and valid_fraction is not None and mode == "fwd+bwd":
            # the floors of bench.floors at the rates measured in this run (bench.harness)
            n_valid = round(valid_fraction * s["n_tokens"])
            elt = torch.empty((), dtype=cfg.dtype).element_size()
            extra.update(rates=rates, n_valid=n_valid, floor=floors.floor_columns(
                {"loss": loss, "n_tokens": s["n_tokens"], "n_valid": n_valid,
                 "vocab": s["vocab"], "hidden": s.get("hidden"),
                 "time_ms": 1e3 * extra["time_s"]},
                copy_gb_s=rates.get("copy_gb_s"), gemm_tflops=rates.get("gemm_tflops"),
                elt=elt))
        return self._row(loss, provider, shape, mode, "ok", **extra)

    def summary_text(self) -> str:
        ok = sum(r["status"] == "ok" for r in self.rows)
        skipped = sum(r["status"] == "skipped" for r in self.rows)
        lines = [f"cord bench: {ok} measured, {skipped} skipped"]
        for loss, prov, sec in self.slowest(3):
            lines.append(f"  slowest: {prov} ({loss}) {sec:.1f} s")
        for r in compute_ratios(self.rows):
            if r.get("ours_vs_best_peer_time") and r["mode"] == "fwd+bwd":
                lines.append(
                    f"  {r['loss']:<30} {r['shape_id']:<22} cord_kernels {fmt_time(r['time_s'])} "
                    f"= x{r['ours_vs_best_peer_time']:.2f} time vs best peer "
                    f"({r['best_peer_time']})")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------- ratios


def mem_bytes(row) -> float | None:
    m = row.get("memory") or {}
    return m.get("delta_bytes")


def compute_ratios(rows: list[dict]) -> list[dict]:
    """Adds to every ok row: time/memory ratio vs naive torch, vs the floor provider (if any),
    and for cord_kernels rows the ratio vs the best peer. Returns the annotated ok rows."""
    groups = defaultdict(list)
    for r in rows:
        if r["status"] == "ok":
            groups[(r["loss"], r["shape_id"], r["mode"])].append(r)
    out = []
    for group in groups.values():
        by_role = defaultdict(list)
        for r in group:
            by_role[r["role"]].append(r)
        naive = by_role["naive"][0] if by_role["naive"] else None
        # The first floor provider is the plain GEMMs over all N rows, where there is one; the
        # GEMMs on the valid rows are the loss's own floor (bench.floors).
        floor = by_role["floor"][0] if by_role["floor"] else None
        timed_valid = next((r for r in by_role["floor"] if "valid" in r["provider"]), None)
        timed_all = next((r for r in by_role["floor"] if "valid" not in r["provider"]), None)
        peers = [r for r in group if r["role"] in PEER_ROLES]
        best_t = min(peers, key=lambda r: r["time_s"]) if peers else None
        mem_peers = [r for r in peers if mem_bytes(r) is not None]
        best_m = min(mem_peers, key=mem_bytes) if mem_peers else None
        ours = by_role["ours"][0] if by_role["ours"] else None
        for r in group:
            if naive:
                r["time_vs_naive"] = r["time_s"] / naive["time_s"]
                if mem_bytes(r) is not None and mem_bytes(naive):
                    r["mem_vs_naive"] = mem_bytes(r) / mem_bytes(naive)
            if floor:
                r["time_vs_floor"] = r["time_s"] / floor["time_s"]
            for key, timed in (("pct_timed_floor_valid", timed_valid),
                               ("pct_timed_floor_all", timed_all)):
                if timed:
                    r[key] = 100 * timed["time_s"] / r["time_s"]
            if ours and r is not ours:
                r["time_vs_ours"] = r["time_s"] / ours["time_s"]
                if mem_bytes(r) is not None and mem_bytes(ours):
                    r["mem_vs_ours"] = mem_bytes(r) / mem_bytes(ours)
            if r["role"] == "ours":
                if best_t:
                    r["best_peer_time"] = best_t["provider"]
                    r["ours_vs_best_peer_time"] = r["time_s"] / best_t["time_s"]
                if best_m and mem_bytes(r) is not None and mem_bytes(best_m):
                    r["best_peer_memory"] = best_m["provider"]
                    r["ours_vs_best_peer_mem"] = mem_bytes(r) / mem_bytes(best_m)
            out.append(r)
    return out



# ------------------------------------------------------------------------------- formatting


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def fmt_bytes(nbytes: float | None) -> str:
    if nbytes is None:
        return "-"
    if abs(nbytes) >= 2**30:
        return f"{nbytes / 2**30:.2f} GiB"
    return f"{nbytes / 2**20:.0f} MiB"


def fmt_ratio(ratio: float | None) -> str:
    return "-" if ratio is None or not math.isfinite(ratio) else f"x{ratio:.2f}"



def git_commit() -> str:
    """HEAD's short hash, with "-dirty" when tracked code differs from it (the committed
    results files themselves do not count): the numbers then come from uncommitted code."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=here, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                  ".", ":(exclude)bench/results", ":(exclude)docs"],
                                 capture_output=True, text=True, cwd=here.parent,
                                 check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if changed else "")


