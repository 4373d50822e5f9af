"""The markdown of a benchmark run: summary lines, one table per loss, the static GPU table."""

from __future__ import annotations

import datetime as _dt
import math
import os

from bench.measure import machine_line
from bench.recorder import Recorder, compute_ratios, fmt_bytes, fmt_ratio, fmt_time

DEFAULT_COMMAND = "pytest bench/"


def elapsed_min(rec: Recorder) -> float:
    if rec.elapsed_s is not None:
        return rec.elapsed_s / 60
    return (_dt.datetime.now(_dt.timezone.utc) - rec.started).total_seconds() / 60


def _run_note(rec: Recorder) -> str:
    minutes = elapsed_min(rec)
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


def command_line(full: bool) -> str:
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
    return (f"{fmt_bytes(mem['delta_bytes'])} ({fmt_bytes(mem['peak_bytes'])})",
            fmt_ratio(row.get("mem_vs_naive")))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def floor_cells(row: dict) -> tuple[str, str]:
    """(% of the valid-rows floor, % of the all-rows one) of a fwd+bwd row: at the rates the
    run measured (``row["floor"]``), or else, for a fused row, against the GEMMs the run timed
    on the same rows (the floor providers)."""
    f = row.get("floor") or {}
    if f:
        return _pct(f.get("pct_floor")), _pct(f.get("pct_floor_all_rows"))
    return _pct(row.get("pct_timed_floor_valid")), _pct(row.get("pct_timed_floor_all"))


def floor_note(rows: list[dict]) -> str:
    """Says what the "% of floor" columns are measured against in this run."""
    rates = next((r["rates"] for r in rows if r.get("rates")), None)
    what = ("% of floor: the work a loss must do (bench.floors: the valid rows in full, a "
            "masked row's zero gradient; the GEMMs on the rows it projects) over the time")
    if rates:
        gemm = sorted({f"{r['rates']['gemm_tflops']:.3g}" for r in rows
                       if r.get("rates", {}).get("gemm_tflops")})
        return (what + f", charged at the copy bandwidth measured in this run, "
                f"{rates['copy_gb_s']:.3g} GB/s, and torch.mm's rate at each fused shape, "
                f"{', '.join(gemm) or '-'} TFLOP/s; the all-rows figure charges every row.")
    return (what + "; this run recorded no rates (its results.json predates them): a fused "
            "table's % is against the GEMMs it timed on the valid rows (all rows beside it, "
            "where timed); the logits-in tables have none.")


def _logits_table(loss: str, rows: list[dict], on_cuda: bool) -> list[str]:
    unit = "% of floor (valid rows) | % all rows | GB/s (valid-rows bytes)"
    # A column per mode the run timed (the CPU default times fwd+bwd only).
    timed = [m for m in ("fwd", "bwd", "fwd+bwd")
             if any(r["loss"] == loss and r["mode"] == m for r in rows)] or ["fwd+bwd"]
    head = (f"| Provider | N x V | {' | '.join(timed)} | x naive | x best peer | "
            f"peak mem: over inputs (total) | mem x naive | {unit} |")
    width = 9 + len(timed)
    lines = [head, "|" + "---|" * width]
    for (lss, shape_id, prov), modes in _index(rows).items():
        if lss != loss:
            continue
        fb = modes.get("fwd+bwd") or next(iter(modes.values()))
        if fb["status"] != "ok":
            lines.append(f"| {prov} | {shape_id} | {fb['status']} (see below) |"
                         + " |" * (width - 3))
            continue
        t = {m: fmt_time(modes[m].get("time_s")) if m in modes and modes[m]["status"] == "ok"
             else "-" for m in timed}
        best = fmt_ratio(fb.get("ours_vs_best_peer_time")) if fb["role"] == "ours" else ""
        if fb["role"] == "ours" and fb.get("best_peer_time"):
            best += f" ({fb['best_peer_time']})"
        mem, mem_x = _mem_cells(fb, on_cuda)
        valid, every = floor_cells(fb)
        gb_s = (fb.get("floor") or {}).get("gb_s")
        gbps = (f"{valid} | {every} | " + (f"{gb_s:.3g}{_of_peak(fb)}" if gb_s else "-"))
        name = f"**{prov}**" if fb["role"] == "ours" else prov
        first = max((m.get("first_call_s") or 0.0 for m in modes.values()), default=0.0)
        if first:  # what a compiled provider's first call costs (the compile), untimed above
            name += f" (first call {first:.1f} s)"
        lines.append(f"| {name} | {shape_id} | {' | '.join(t.values())} | "
                     f"{fmt_ratio(fb.get('time_vs_naive'))} | {best} | {mem} | {mem_x} | {gbps} |")
    return lines


def fused_table(loss: str, rows: list[dict], on_cuda: bool) -> list[str]:
    head = ("| Provider | N, H, V | mode | time | % of floor (valid rows) | % all rows | x naive "
            "| time / ours | peak mem: over inputs (total) | mem / ours | TFLOP/s | notes |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        if r["loss"] != loss:
            continue
        name = f"**{r['provider']}**" if r["role"] == "ours" else r["provider"]
        if r["status"] != "ok":
            lines.append(f"| {name} | {r['shape_id']} | {r['mode']} | {r['status']} (see "
                         "below) | | | | | | | | |")
            continue
        mem, _ = _mem_cells(r, on_cuda)
        valid, every = floor_cells(r)
        lines.append(
            f"| {name} | {r['shape_id']} | {r['mode']} | {fmt_time(r['time_s'])} | "
            f"{valid} | {every} | {fmt_ratio(r.get('time_vs_naive'))} | "
            f"{fmt_ratio(r.get('time_vs_ours'))} | {mem} | {fmt_ratio(r.get('mem_vs_ours'))} | "
            f"{r['tflops']:.3g}{_of_peak(r)} | {r.get('note', '')} |")
    return lines


def static_table(rec: Recorder) -> list[str]:
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
        f"Reproduce: `{command_line(cfg.full)}` (results in `bench/results/`; "
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
    out += headline(rows)
    out += [floor_note(rows), ""]
    if not cfg.on_cuda:
        out += [
            "On the CPU, `cord_kernels` runs its torch path (`impl=None` picks it: the Triton "
            "kernels need CUDA), so these rows measure that path; the kernels' bandwidth "
            "is measured by the same command (or scripts/gpu_check.sh) on a CUDA machine. "
            "For the hidden-states-in losses the algorithm (chunking, GEMM "
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
                "only valid positions (as cut-cross-entropy drops ignored tokens), so its floor "
                "is the GEMMs on those rows; the all-rows figure and the peers count all N. "
                "TFLOP/s counts 2·N·H·V flops per GEMM over all N rows (4 GEMMs for the "
                "CORD loss fwd+bwd, 3 for token log-probs) divided by the time.", ""]
        for loss in dict.fromkeys(r["loss"] for r in fused_sel):
            out += [f"`{loss}`", "", *fused_table(loss, fused_sel, cfg.on_cuda), ""]
            out += fused_summary(loss, fused_sel)
    for loss in logits_losses:
        out += [f"### `{loss}` (logits in)", "",
                *_logits_table(loss, [r for r in rows if r["loss"] == loss], cfg.on_cuda), ""]
    out += ["### Static GPU build (no GPU needed)", "",
            "Every Triton kernel compiled for sm_80 and sm_90 at the block size the launcher "
            "picks for V=151936: registers per thread, spill (LOCAL) bytes, and the number of "
            "16-byte global loads in the SASS.", "", *static_table(rec), ""]
    notes = sorted({(r["provider"], r.get("reason", "")) for r in rows
                    if r["status"] in ("skipped", "error")})
    if notes:
        out += ["### Not measured", ""]
        out += [f"- {p}: {reason}" for p, reason in notes]
        out.append("")
    return "\n".join(out)


def _peer_name(provider: str) -> str:
    return "naive torch" if provider == "torch" else provider


def headline(rows: list[dict]) -> list[str]:
    """One line per loss and shape: cord_kernels' fwd+bwd time and memory against naive torch
    and the best peer (naive torch included). A ratio that was not measured is left out."""
    lines = []
    for r in rows:
        if r["role"] != "ours" or r["status"] != "ok" or r["mode"] != "fwd+bwd":
            continue
        time, mem = [], []
        if r.get("time_vs_naive") is not None:
            time.append(f"{fmt_ratio(r['time_vs_naive'])} vs naive torch")
        if r.get("best_peer_time"):
            time.append(f"{fmt_ratio(r['ours_vs_best_peer_time'])} vs the fastest peer "
                        f"({_peer_name(r['best_peer_time'])})")
        if r.get("mem_vs_naive") is not None:
            mem.append(f"{fmt_ratio(r['mem_vs_naive'])} vs naive torch")
        if r.get("best_peer_memory"):
            mem.append(f"{fmt_ratio(r['ours_vs_best_peer_mem'])} vs the leanest peer "
                       f"({_peer_name(r['best_peer_memory'])})")
        parts = ([f"time {', '.join(time)}"] if time else []) + (
            [f"memory {', '.join(mem)}"] if mem else [])
        # two "ours" rows per shape on the CPU: the eager torch path and the compiled opt-in
        who = "" if r["provider"] == "cord_kernels" else f" [{r['provider']}]"
        lines.append(f"- `{r['loss']}`{who} {r['shape_id']}: {fmt_time(r['time_s'])}; "
                     + "; ".join(parts))
    return (["Summary, fwd+bwd (x < 1: cord_kernels is faster / leaner):", "", *lines, ""]
            if lines else [])


def fused_summary(loss: str, rows: list[dict]) -> list[str]:
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
                             f"{fmt_ratio(r['time_s'] / all_n[0]['time_s'])} time.")
            if own:
                lines.append(f"- {r['shape_id']}: cord_kernels / floor GEMMs on the valid rows "
                             f"it projects = {fmt_ratio(r['time_s'] / own[0]['time_s'])} time.")
        if r["provider"].startswith("trl") and r.get("time_vs_ours"):
            mem = f", {fmt_ratio(r['mem_vs_ours'])} memory" if r.get("mem_vs_ours") else ""
            lines.append(f"- {r['shape_id']}: TRL / cord_kernels = {fmt_ratio(r['time_vs_ours'])} "
                         f"time{mem}.")
    return lines + [""] if lines else []


