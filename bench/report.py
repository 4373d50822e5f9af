"""Writing a benchmark run: results.json, README_PERF.md (``bench.tables``), the plot, and the
generated blocks of docs/ (``python -m bench.report --docs``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections import defaultdict
from pathlib import Path

from bench import floors
from bench.measure import machine_line
from bench.recorder import Recorder, compute_ratios, mem_bytes
from bench.tables import (
    command_line,
    elapsed_min,
    floor_note,
    fused_summary,
    fused_table,
    headline,
    render_markdown,
    static_table,
)

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
        ax_m.plot(n, [(mem_bytes(r) or float("nan")) / 2**20 for r in rs], **style)
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
    ax_m.barh(y, [(mem_bytes(r) or 0) / 2**30 for r in rows], color=colors)
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
    perf = [_measured_on(data), "", *headline(rec.rows), floor_note(rec.rows), ""]
    for loss in dict.fromkeys(r["loss"] for r in fused):
        perf += [f"`{loss}`", "", *fused_table(loss, fused, rec.config.on_cuda), ""]
        perf += fused_summary(loss, fused)
    h200 = floors.recompute()
    return {("performance.md", "perf-tables"): "\n".join(perf).rstrip("\n") + "\n",
            ("performance.md", "perf-gpu-h200"): floors.headline_text(h200) + "\n"
            + floors.markdown(h200),
            ("performance.md", "perf-sparse"):
                "\n".join([_measured_on(sparse_data), "", *headline(sparse.rows)]),
            ("verification.md", "gpu-build"): "\n".join(static_table(rec)) + "\n"}


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
        "command": command_line(cfg.full),
        "commit": rec.commit,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": os.cpu_count(),
        "rows": rec.rows,
        "static_gpu": rec.static_gpu,
        "static_gpu_note": rec.static_gpu_note,
        "elapsed_s": elapsed_min(rec) * 60,
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
