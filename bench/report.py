"""Recording benchmark rows, computing ratios, and rendering JSON, markdown and plots.

A row is one (loss, provider, shape, mode) with its status ("ok", "skipped", "error"), the
median time, memory (fwd+bwd only) and the counted bytes / flops. Ratios are computed here,
over rows of the same run: each provider against naive torch, and cord_kernels against the
best peer (the fastest, resp. leanest, of naive torch, torch.compile, Liger and TRL).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import subprocess
from collections import defaultdict
from dataclasses import asdict, is_dataclass
from pathlib import Path

from bench import floors
from bench.measure import device_peaks, floor_bytes, gemm_flops, machine_line

PEER_ROLES = ("naive", "peer")
DEFAULT_COMMAND = "pytest bench/"


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
        self.commit = _git_commit()  # the code the run started from
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
           valid_fraction: float | None = None, first_call_s: float | None = None) -> dict:
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
                    f"  {r['loss']:<30} {r['shape_id']:<22} cord_kernels {_ms(r['time_s'])} "
                    f"= x{r['ours_vs_best_peer_time']:.2f} time vs best peer "
                    f"({r['best_peer_time']})")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------- ratios


def _mem(row) -> float | None:
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
        # The first floor provider is the plain GEMMs over all N rows.
        floor = by_role["floor"][0] if by_role["floor"] else None
        peers = [r for r in group if r["role"] in PEER_ROLES]
        best_t = min(peers, key=lambda r: r["time_s"]) if peers else None
        mem_peers = [r for r in peers if _mem(r) is not None]
        best_m = min(mem_peers, key=_mem) if mem_peers else None
        ours = by_role["ours"][0] if by_role["ours"] else None
        for r in group:
            if naive:
                r["time_vs_naive"] = r["time_s"] / naive["time_s"]
                if _mem(r) is not None and _mem(naive):
                    r["mem_vs_naive"] = _mem(r) / _mem(naive)
            if floor:
                r["time_vs_floor"] = r["time_s"] / floor["time_s"]
            if ours and r is not ours:
                r["time_vs_ours"] = r["time_s"] / ours["time_s"]
                if _mem(r) is not None and _mem(ours):
                    r["mem_vs_ours"] = _mem(r) / _mem(ours)
            if r["role"] == "ours":
                if best_t:
                    r["best_peer_time"] = best_t["provider"]
                    r["ours_vs_best_peer_time"] = r["time_s"] / best_t["time_s"]
                if best_m and _mem(r) is not None and _mem(best_m):
                    r["best_peer_memory"] = best_m["provider"]
                    r["ours_vs_best_peer_mem"] = _mem(r) / _mem(best_m)
            out.append(r)
    return out


# ------------------------------------------------------------------------------- formatting


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def _mb(nbytes: float | None) -> str:
    if nbytes is None:
        return "-"
    if abs(nbytes) >= 2**30:
        return f"{nbytes / 2**30:.2f} GiB"
    return f"{nbytes / 2**20:.0f} MiB"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None or not math.isfinite(ratio) else f"x{ratio:.2f}"


def _elapsed_min(rec: Recorder) -> float:
    if rec.elapsed_s is not None:
        return rec.elapsed_s / 60
    return (_dt.datetime.now(_dt.timezone.utc) - rec.started).total_seconds() / 60


def _run_note(rec: Recorder) -> str:
    minutes = _elapsed_min(rec)
    if not math.isfinite(minutes):  # re-rendered from an older results.json
        return ""
    slow = rec.slowest(3)
    where = ("; the three providers it spent most time on: " + ", ".join(
        f"{prov} ({loss}) {sec:.0f} s" for loss, prov, sec in slow)) if slow else ""
    return f" This run took {minutes:.1f} min{_load_note(rec)}{where}."


def _load_note(rec: Recorder) -> str:
    """The mean 1-minute load average over the run when the machine was busy: other work
    slows every provider alike, so ratios hold better than absolute times."""
    if not rec.load_samples:
        return ""
    load = sum(rec.load_samples) / len(rec.load_samples)
    cores = os.cpu_count() or 1
    if load <= 1.25 * cores:
        return ""
    return (f"; the machine was shared: mean load average {load:.1f} on {cores} cores, so "
            "absolute times are inflated, compare ratios")


def _git_commit() -> str:
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


def _command(full: bool) -> str:
    return ("CORD_BENCH_FULL=1 " if full else "") + DEFAULT_COMMAND


def _of_peak(row: dict) -> str:
    """" (62% of peak)": the physical floor time (SPEC section 3 bytes or GEMM flops at the
    GPU's datasheet rate) over the measured time; empty where the device is not known."""
    floor_s = row.get("physical_floor_s")
    return f" ({100 * floor_s / row['time_s']:.0f}% of peak)" if floor_s else ""


def _index(rows):
    """{(loss, shape_id, provider): {mode: row}} for ok and skipped rows, in first-seen order."""
    idx: dict = {}
    for r in rows:
        idx.setdefault((r["loss"], r["shape_id"], r["provider"]), {})[r["mode"]] = r
    return idx


def _mem_cells(row: dict | None, on_cuda: bool) -> tuple[str, str]:
    mem = (row or {}).get("memory") or {}
    if "error" in mem:
        return "not measured", "-"
    if not mem:
        return "-", "-"
    return f"{_mb(mem['delta_bytes'])} ({_mb(mem['peak_bytes'])})", _x(row.get("mem_vs_naive"))


def _logits_table(loss: str, rows: list[dict], on_cuda: bool) -> list[str]:
    unit = "GB/s (floor bytes)" if on_cuda else "GB/s"
    # A column per mode the run timed (the CPU default times fwd+bwd only).
    timed = [m for m in ("fwd", "bwd", "fwd+bwd")
             if any(r["loss"] == loss and r["mode"] == m for r in rows)] or ["fwd+bwd"]
    head = (f"| Provider | N x V | {' | '.join(timed)} | x naive | x best peer | "
            f"peak mem: over inputs (total) | mem x naive | {unit} |")
    width = 7 + len(timed)
    lines = [head, "|" + "---|" * width]
    for (lss, shape_id, prov), modes in _index(rows).items():
        if lss != loss:
            continue
        fb = modes.get("fwd+bwd") or next(iter(modes.values()))
        if fb["status"] != "ok":
            lines.append(f"| {prov} | {shape_id} | {fb['status']} (see below) |"
                         + " |" * (width - 3))
            continue
        t = {m: _ms(modes[m].get("time_s")) if m in modes and modes[m]["status"] == "ok"
             else "-" for m in timed}
        best = _x(fb.get("ours_vs_best_peer_time")) if fb["role"] == "ours" else ""
        if fb["role"] == "ours" and fb.get("best_peer_time"):
            best += f" ({fb['best_peer_time']})"
        mem, mem_x = _mem_cells(fb, on_cuda)
        gbps = f"{fb['gbps']:.3g}{_of_peak(fb)}" if fb.get("gbps") else "-"
        name = f"**{prov}**" if fb["role"] == "ours" else prov
        first = max((m.get("first_call_s") or 0.0 for m in modes.values()), default=0.0)
        if first:  # what a compiled provider's first call costs (the compile), untimed above
            name += f" (first call {first:.1f} s)"
        lines.append(f"| {name} | {shape_id} | {' | '.join(t.values())} | "
                     f"{_x(fb.get('time_vs_naive'))} | {best} | {mem} | {mem_x} | {gbps} |")
    return lines


def _fused_table(loss: str, rows: list[dict], on_cuda: bool) -> list[str]:
    head = ("| Provider | N, H, V | mode | time | x floor | x naive | time / ours | "
            "peak mem: over inputs (total) | mem / ours | TFLOP/s | notes |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        if r["loss"] != loss:
            continue
        name = f"**{r['provider']}**" if r["role"] == "ours" else r["provider"]
        if r["status"] != "ok":
            lines.append(f"| {name} | {r['shape_id']} | {r['mode']} | {r['status']} (see "
                         "below) | | | | | | | |")
            continue
        mem, _ = _mem_cells(r, on_cuda)
        lines.append(
            f"| {name} | {r['shape_id']} | {r['mode']} | {_ms(r['time_s'])} | "
            f"{_x(r.get('time_vs_floor'))} | {_x(r.get('time_vs_naive'))} | "
            f"{_x(r.get('time_vs_ours'))} | {mem} | {_x(r.get('mem_vs_ours'))} | "
            f"{r['tflops']:.3g}{_of_peak(r)} | {r.get('note', '')} |")
    return lines


def _static_table(rec: Recorder) -> list[str]:
    if not rec.static_gpu:
        return [f"_Not built: {rec.static_gpu_note or 'not run'}._"]
    archs = sorted({r["arch"] for r in rec.static_gpu})
    head = "| Kernel | dtype | " + " | ".join(
        f"sm_{a} regs | sm_{a} spill B | sm_{a} LDG.E.128" for a in archs) + " |"
    lines = [head, "|" + "---|" * (2 + 3 * len(archs))]
    by_kernel: dict = {}
    for r in rec.static_gpu:
        by_kernel.setdefault((r["name"], r["dtype"]), {})[r["arch"]] = r
    for (name, dtype), per_arch in by_kernel.items():
        cells = []
        for a in archs:
            r = per_arch.get(a)
            cells += ([str(r["registers"]), str(r["spill_bytes"]), str(r["ldg128"])]
                      if r else ["-", "-", "-"])
        lines.append(f"| {name} | {dtype} | " + " | ".join(cells) + " |")
    if rec.static_gpu_note:
        lines += ["", rec.static_gpu_note]
    return lines


def render_markdown(rec: Recorder, *, machine: str | None = None,
                    created: str | None = None) -> str:
    cfg = rec.config
    rows = rec.rows
    compute_ratios(rows)
    fused_sel = [r for r in rows if r["loss"].startswith("fused_linear")]
    logits_losses = list(dict.fromkeys(r["loss"] for r in rows
                                       if not r["loss"].startswith("fused_linear")))
    when = (created.replace("T", " ")[:16] + " UTC" if created else
            _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    dtype = str(cfg.dtype).removeprefix("torch.")
    out = [
        "## Performance",
        "",
        f"Measured on: {machine or machine_line(cfg.device)}; {dtype} inputs; "
        f"commit {rec.commit}, "
        f"{when}.",
        "",
        f"Reproduce: `{_command(cfg.full)}` (results in `bench/results/`; "
        "`CORD_BENCH_FULL=1` for the full sweep)." + _run_note(rec),
        "",
        "Times are pytest-benchmark medians; ratios are against providers measured in the same "
        "run (x < 1 is better). Memory is the peak over one fwd+bwd "
        + ("(`torch.cuda.max_memory_allocated`) above what was allocated before it."
           if cfg.on_cuda else
           "(the last timed round): peak RSS above the RSS just before it, with freed memory "
           "handed back and the kernel's high-water mark reset first; the absolute peak RSS "
           "in parentheses."),
        "",
    ]
    out += _headline(rows)
    if not cfg.on_cuda:
        out += [
            "On the CPU, `cord_kernels` runs its torch path (`impl=None` picks it: the Triton "
            "kernels need CUDA), so these rows measure that path; the kernels' bandwidth "
            "(GB/s against the 6 B/entry floor of docs/performance.md) is measured by the same "
            "command "
            "on a CUDA machine. For the hidden-states-in losses the algorithm (chunking, GEMM "
            "count, skipped masked rows) is the same on every device. Liger's logits-in "
            "kernels are Triton-only and are skipped here; its chunked fused-linear JSD loss "
            "is pure torch and runs.",
            "",
        ]
    if fused_sel:
        valid = {r["shape_id"]: r["valid_fraction"] for r in fused_sel
                 if r.get("valid_fraction")}
        out += ["### Hidden states in (fused linear + loss)", ""]
        if valid:
            shares = ", ".join(f"{100 * v:.0f}% at {k}" for k, v in valid.items())
            out += [
                "Sequences of up to 256 tokens with ragged lengths and a random per-token mask; "
                f"valid positions: {shares}. cord_kernels projects "
                "only valid positions (as cut-cross-entropy drops ignored tokens); the floor "
                "GEMMs and the peers project all N, so cord_kernels can come in under the "
                "floor. TFLOP/s counts 2·N·H·V flops per GEMM over all N rows (4 GEMMs for the "
                "CORD loss fwd+bwd, 3 for token log-probs) divided by the time.", ""]
        for loss in dict.fromkeys(r["loss"] for r in fused_sel):
            out += [f"`{loss}`", "", *_fused_table(loss, fused_sel, cfg.on_cuda), ""]
            out += _fused_summary(loss, fused_sel)
    for loss in logits_losses:
        out += [f"### `{loss}` (logits in)", "",
                *_logits_table(loss, [r for r in rows if r["loss"] == loss], cfg.on_cuda), ""]
    out += ["### Static GPU build (no GPU needed)", "",
            "Every Triton kernel compiled for sm_80 and sm_90 at the block size the launcher "
            "picks for V=151936: registers per thread, spill (LOCAL) bytes, and the number of "
            "16-byte global loads in the SASS.", "", *_static_table(rec), ""]
    notes = sorted({(r["provider"], r.get("reason", "")) for r in rows
                    if r["status"] in ("skipped", "error")})
    if notes:
        out += ["### Not measured", ""]
        out += [f"- {p}: {reason}" for p, reason in notes]
        out.append("")
    return "\n".join(out)


def _peer_name(provider: str) -> str:
    return "naive torch" if provider == "torch" else provider


def _headline(rows: list[dict]) -> list[str]:
    """One line per loss and shape: cord_kernels' fwd+bwd time and memory against naive torch
    and the best peer (naive torch included). A ratio that was not measured is left out."""
    lines = []
    for r in rows:
        if r["role"] != "ours" or r["status"] != "ok" or r["mode"] != "fwd+bwd":
            continue
        time, mem = [], []
        if r.get("time_vs_naive") is not None:
            time.append(f"{_x(r['time_vs_naive'])} vs naive torch")
        if r.get("best_peer_time"):
            time.append(f"{_x(r['ours_vs_best_peer_time'])} vs the fastest peer "
                        f"({_peer_name(r['best_peer_time'])})")
        if r.get("mem_vs_naive") is not None:
            mem.append(f"{_x(r['mem_vs_naive'])} vs naive torch")
        if r.get("best_peer_memory"):
            mem.append(f"{_x(r['ours_vs_best_peer_mem'])} vs the leanest peer "
                       f"({_peer_name(r['best_peer_memory'])})")
        parts = ([f"time {', '.join(time)}"] if time else []) + (
            [f"memory {', '.join(mem)}"] if mem else [])
        # two "ours" rows per shape on the CPU: the eager torch path and the compiled opt-in
        who = "" if r["provider"] == "cord_kernels" else f" [{r['provider']}]"
        lines.append(f"- `{r['loss']}`{who} {r['shape_id']}: {_ms(r['time_s'])}; "
                     + "; ".join(parts))
    return (["Summary, fwd+bwd (x < 1: cord_kernels is faster / leaner):", "", *lines, ""]
            if lines else [])


def _fused_summary(loss: str, rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        if r["loss"] != loss or r["status"] != "ok" or r["mode"] != "fwd+bwd":
            continue
        own = [f for f in rows if f["role"] == "floor" and "valid" in f["provider"]
               and f["status"] == "ok" and f["mode"] == r["mode"]
               and f["shape_id"] == r["shape_id"] and f["loss"] == loss]
        all_n = [f for f in rows if f["role"] == "floor" and "valid" not in f["provider"]
                 and f["status"] == "ok" and f["mode"] == r["mode"]
                 and f["shape_id"] == r["shape_id"] and f["loss"] == loss]
        if r["role"] == "ours":
            if all_n:
                lines.append(f"- {r['shape_id']}: cord_kernels / floor GEMMs (all N rows) = "
                             f"{_x(r['time_s'] / all_n[0]['time_s'])} time.")
            if own:
                lines.append(f"- {r['shape_id']}: cord_kernels / floor GEMMs on the valid rows "
                             f"it projects = {_x(r['time_s'] / own[0]['time_s'])} time.")
        if r["provider"].startswith("trl") and r.get("time_vs_ours"):
            mem = f", {_x(r['mem_vs_ours'])} memory" if r.get("mem_vs_ours") else ""
            lines.append(f"- {r['shape_id']}: TRL / cord_kernels = {_x(r['time_vs_ours'])} "
                         f"time{mem}.")
    return lines + [""] if lines else []


# ------------------------------------------------------------------------------------ plots


def render_plot(rec: Recorder, path: Path, *, machine: str | None = None) -> Path | None:
    """Time and memory (fwd+bwd) against tokens, one line per provider, one row per loss."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in rec.rows if r["status"] == "ok" and r["mode"] == "fwd+bwd"]
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    if not losses:
        return None
    fig, axes = plt.subplots(len(losses), 2, figsize=(12, 3.4 * len(losses)), squeeze=False)
    for ax_t, ax_m, loss in zip(axes[:, 0], axes[:, 1], losses, strict=True):
        mine = [r for r in rows if r["loss"] == loss]
        if len({r["shape"]["n_tokens"] for r in mine}) == 1:
            _bars(ax_t, ax_m, loss, mine)
        else:
            _lines(ax_t, ax_m, loss, mine)
    fig.suptitle(machine or machine_line(rec.config.device), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _lines(ax_t, ax_m, loss: str, rows: list[dict]) -> None:
    """Several token counts: time and memory against N, one line per provider (and V)."""
    series = defaultdict(list)
    for r in rows:
        series[(r["provider"], r["shape"]["vocab"])].append(r)
    for (prov, vocab), rs in series.items():
        rs.sort(key=lambda r: r["shape"]["n_tokens"])
        n = [r["shape"]["n_tokens"] for r in rs]
        style = dict(marker="o", linewidth=2.5 if rs[0]["role"] == "ours" else 1.2,
                     label=f"{prov} (V={vocab})")
        ax_t.plot(n, [r["time_s"] * 1e3 for r in rs], **style)
        ax_m.plot(n, [(_mem(r) or float("nan")) / 2**20 for r in rs], **style)
    ax_t.set(title=f"{loss}: fwd+bwd time", xlabel="tokens N", ylabel="ms", xscale="log",
             yscale="log")
    ax_m.set(title=f"{loss}: peak memory over inputs", xlabel="tokens N", ylabel="MiB",
             xscale="log", yscale="log")
    ax_t.legend(fontsize=7)


def _bars(ax_t, ax_m, loss: str, rows: list[dict]) -> None:
    """One token count: horizontal bars per provider, cord_kernels highlighted."""
    names = [r["provider"] for r in rows]
    colors = ["tab:blue" if r["role"] == "ours" else "tab:gray" if r["role"] == "floor"
              else "tab:orange" for r in rows]
    y = range(len(rows))
    ax_t.barh(y, [r["time_s"] for r in rows], color=colors)
    ax_m.barh(y, [(_mem(r) or 0) / 2**30 for r in rows], color=colors)
    shape = rows[0]["shape_id"]
    ax_t.set_title(f"{loss} {shape}\nfwd+bwd time", fontsize=9)
    ax_m.set_title(f"{loss} {shape}\npeak memory over inputs", fontsize=9)
    ax_t.set_xlabel("s")
    ax_m.set_xlabel("GiB")
    for ax in (ax_t, ax_m):
        ax.set_yticks(list(y), names, fontsize=7)
        ax.invert_yaxis()


def _load(results_json: Path):
    """A Recorder holding a saved results.json's rows, and the json itself."""
    from types import SimpleNamespace

    import torch

    data = json.loads(Path(results_json).read_text())
    cfg = SimpleNamespace(device=torch.device(data["device"]), full=data["full"],
                          dtype=getattr(torch, data["dtype"].removeprefix("torch.")),
                          on_cuda=data["device"].startswith("cuda"))
    rec = Recorder(cfg)
    rec.rows, rec.static_gpu = data["rows"], data["static_gpu"]
    rec.static_gpu_note, rec.commit = data["static_gpu_note"], data["commit"]
    rec.load_samples = data.get("load_samples", [])
    rec.elapsed_s = data.get("elapsed_s", float("nan"))
    rec.provider_seconds = {(r["loss"], r["provider"]): r["seconds"]
                            for r in data.get("provider_seconds", [])}
    return rec, data


def rerender(results_json: Path, *, plot: bool = True) -> list[Path]:
    """Rewrites README_PERF.md (and the plot) next to a saved results.json (no re-run)."""
    rec, data = _load(results_json)
    out_dir = Path(results_json).parent
    md = out_dir / "README_PERF.md"
    md.write_text(render_markdown(rec, machine=data["machine"],
                                  created=data["created_utc"]) + "\n")
    drawn = render_plot(rec, out_dir / "perf_vs_tokens.png", machine=data["machine"]) if plot \
        else None
    return [md] + ([drawn] if drawn else [])


# The generated blocks of docs/: (page, marker) -> its text from the committed results.json.
DOCS_RESULTS = Path(__file__).resolve().parent / "results" / "results.json"
DOCS_SPARSE_RESULTS = DOCS_RESULTS.parent / "sparse_teacher" / "results.json"


def _measured_on(data: dict) -> str:
    dtype = data["dtype"].removeprefix("torch.")
    when = data["created_utc"].replace("T", " ")[:16] + " UTC"
    return f"Measured on: {data['machine']}; {dtype} inputs; commit {data['commit']}, {when}."


def docs_blocks(results_json: Path = DOCS_RESULTS,
                sparse_json: Path = DOCS_SPARSE_RESULTS) -> dict[tuple[str, str], str]:
    """The blocks of docs/performance.md and docs/verification.md written from the committed
    results.json files, each the text between ``<!-- marker:start -->`` and
    ``<!-- marker:end -->``."""
    sparse, sparse_data = _load(sparse_json)
    compute_ratios(sparse.rows)
    rec, data = _load(results_json)
    compute_ratios(rec.rows)
    fused = [r for r in rec.rows if r["loss"].startswith("fused_linear")]
    perf = [_measured_on(data), "", *_headline(rec.rows)]
    for loss in dict.fromkeys(r["loss"] for r in fused):
        perf += [f"`{loss}`", "", *_fused_table(loss, fused, rec.config.on_cuda), ""]
        perf += _fused_summary(loss, fused)
    h200 = floors.recompute()
    return {("performance.md", "perf-tables"): "\n".join(perf).rstrip("\n") + "\n",
            ("performance.md", "perf-gpu-h200"): floors.headline_text(h200) + "\n"
            + floors.markdown(h200),
            ("performance.md", "perf-sparse"):
                "\n".join([_measured_on(sparse_data), "", *_headline(sparse.rows)]),
            ("verification.md", "gpu-build"): "\n".join(_static_table(rec)) + "\n"}


def write_docs(docs_dir: Path, results_json: Path = DOCS_RESULTS) -> list[Path]:
    """Replaces every generated block of the docs pages with :func:`docs_blocks`' text."""
    written = []
    for (page, marker), text in docs_blocks(results_json).items():
        path = Path(docs_dir) / page
        old = path.read_text()
        start, end = f"<!-- {marker}:start -->\n", f"<!-- {marker}:end -->"
        head, rest = old.split(start, 1)
        path.write_text(head + start + text + end + rest.split(end, 1)[1])
        written.append(path)
    return written


def write_outputs(rec: Recorder, out_dir: Path) -> list[Path]:
    """results.json, README_PERF.md and perf_vs_tokens.png under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    compute_ratios(rec.rows)
    cfg = rec.config
    payload = {
        "machine": machine_line(cfg.device),
        "device": str(cfg.device),
        "dtype": str(cfg.dtype),
        "full": cfg.full,
        "command": _command(cfg.full),
        "commit": rec.commit,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": os.cpu_count(),
        "rows": rec.rows,
        "static_gpu": rec.static_gpu,
        "static_gpu_note": rec.static_gpu_note,
        "elapsed_s": _elapsed_min(rec) * 60,
        "load_samples": rec.load_samples,
        "provider_seconds": [{"loss": loss, "provider": prov, "seconds": sec}
                             for (loss, prov), sec in sorted(rec.provider_seconds.items(),
                                                             key=lambda kv: -kv[1])],
    }
    paths = [out_dir / "results.json", out_dir / "README_PERF.md"]
    paths[0].write_text(json.dumps(payload, indent=1, default=str) + "\n")
    paths[1].write_text(render_markdown(rec) + "\n")
    plot = render_plot(rec, out_dir / "perf_vs_tokens.png")
    return paths + ([plot] if plot else [])


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 2 and sys.argv[1] == "--docs":
        written = write_docs(Path(__file__).resolve().parents[1] / "docs")
    elif len(sys.argv) == 2:
        written = rerender(Path(sys.argv[1]))
    else:
        sys.exit("usage: python -m bench.report bench/results/results.json | --docs")
    for path in written:
        print(f"wrote {path}")
