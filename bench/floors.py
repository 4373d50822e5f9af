"""Floors that count what a loss must do, and the committed H200 numbers recomputed on them.

    python -m bench.floors [bench/results/gpu_h200]     # the tables, from the raw timings
    python -m bench.report --docs                       # writes them into docs/performance.md

A floor is the work a loss cannot avoid, over the rate the same step measured (the copy
bandwidth for bytes, ``torch.mm``'s rate for GEMMs), so "% of floor" = floor time / time.

The rows a loss must touch: ``bench.inputs`` draws ragged masks (about 29% of the rows
masked). A loss that is given the mask (``cord_token_loss``, ``sparse_teacher_loss``; the
ignored labels of ``token_logprobs``; every fused-linear loss) skips the masked rows, so its
floor counts the valid rows in full and, on a masked row, only the write of its gradient
(zeros: the gradient is a dense (N, V) tensor). ``reverse_kl`` and ``jsd`` take no mask and
return every row: every row is theirs to compute. Logits in, per vocabulary entry of a valid
row, fwd+bwd: the two-pass floor reads each input twice and writes the gradient once (10 B in
bf16 with two inputs), the one-pass floor reads each once (6 B). Fused linear: the GEMMs
(2*N*H*V flops each) on the rows it projects, the valid ones. The all-rows figure, which
charges every row in full (what ``bench/gpu/check.py`` reported before), goes beside it.

No torch at import: the arithmetic is plain integers (``valid_rows`` alone draws the mask).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The losses whose call computes every row (no mask argument): their floor is all rows.
EVERY_ROW_LOSSES = ("reverse_kl", "jsd")
TWO_INPUT_LOSSES = ("reverse_kl", "cord_token_loss", "jsd")
H200_RESULTS = Path(__file__).resolve().parent / "results" / "gpu_h200"


def _base(loss: str) -> str:
    return loss.split("[", 1)[0]


def skips_masked_rows(loss: str) -> bool:
    """Whether the loss's call is given the mask (or ignored labels) and skips those rows."""
    return _base(loss) not in EVERY_ROW_LOSSES


def entry_elements(loss: str, passes: int = 2) -> int:
    """(N, V) elements a valid row moves per vocabulary entry, fwd+bwd: each input read
    ``passes`` times (2: a statistics pass then a gradient pass; 1: one fused pass), plus
    the gradient's write. Reverse KL: 5 and 3 (10 and 6 B in bf16, SPEC section 3)."""
    if passes not in (1, 2):
        raise ValueError(f"passes must be 1 or 2, got {passes!r}")
    reads = 2 if _base(loss) in TWO_INPUT_LOSSES else 1
    return passes * reads + 1


def logits_floor_bytes(loss: str, n_rows: int, n_valid: int, vocab: int, elt: int,
                       passes: int = 2) -> dict[str, int]:
    """{"valid": bytes the loss must move, "all": every row charged in full}."""
    if not 0 <= n_valid <= n_rows:
        raise ValueError(f"n_valid must be in [0, {n_rows}], got {n_valid}")
    per = entry_elements(loss, passes) * vocab * elt
    every = per * n_rows
    if not skips_masked_rows(loss):
        return {"valid": every, "all": every}
    # a masked row: only its gradient, zeros, is written
    return {"valid": per * n_valid + vocab * elt * (n_rows - n_valid), "all": every}


def gemm_count(loss: str, mode: str = "fwd+bwd") -> int:
    """GEMMs of shape 2*N*H*V the fused-linear losses cannot avoid: the distillation losses
    project both sides, the log-prob and sparse-teacher losses the student only; backward
    is the gradients with respect to the hidden states and the weight."""
    fwd = 1 if loss == "fused_linear_token_logprobs" or "sparse" in loss else 2
    return {"fwd": fwd, "bwd": 2, "fwd+bwd": fwd + 2}[mode]


def gemm_floor_flops(loss: str, n_rows: int, n_valid: int, hidden: int, vocab: int,
                     mode: str = "fwd+bwd") -> dict[str, int]:
    """{"valid": the GEMMs on the rows the loss projects, "all": on every row}."""
    if not 0 <= n_valid <= n_rows:
        raise ValueError(f"n_valid must be in [0, {n_rows}], got {n_valid}")
    per_row = gemm_count(loss, mode) * 2 * hidden * vocab
    return {"valid": per_row * n_valid, "all": per_row * n_rows}


def pct(floor_s: float, time_s: float) -> float:
    return 100.0 * floor_s / time_s


def floor_columns(row: dict, *, copy_gb_s: float | None, gemm_tflops: float | None,
                  elt: int) -> dict:
    """The floor columns of one timed row of the GPU check (``time_ms``, ``n_tokens``,
    ``n_valid``, ``vocab``, ``hidden`` for a fused row): % of the valid-rows floor, the
    all-rows figure, and the floor in ms, at the rates measured in the same step."""
    t = row["time_ms"] / 1e3
    n, nv, v = row["n_tokens"], row["n_valid"], row["vocab"]
    if row.get("hidden"):
        if not gemm_tflops:
            return {}
        flops = gemm_floor_flops(row["loss"], n, nv, row["hidden"], v)
        rate = gemm_tflops * 1e12
        return {"tflops": flops["valid"] / t / 1e12, "floor_ms": 1e3 * flops["valid"] / rate,
                "pct_floor": pct(flops["valid"] / rate, t),
                "pct_floor_all_rows": pct(flops["all"] / rate, t)}
    if not copy_gb_s:
        return {}
    bw = copy_gb_s * 1e9
    two = logits_floor_bytes(row["loss"], n, nv, v, elt, passes=2)
    one = logits_floor_bytes(row["loss"], n, nv, v, elt, passes=1)
    return {"gb_s": two["valid"] / t / 1e9, "floor_ms": 1e3 * two["valid"] / bw,
            "pct_floor": pct(two["valid"] / bw, t),
            "pct_floor_all_rows": pct(two["all"] / bw, t),
            "pct_one_pass_floor": pct(one["valid"] / bw, t)}


def valid_rows(n_tokens: int, seed: int = 0) -> int:
    """The valid rows of ``bench.inputs``' case of ``n_tokens`` (its seeded CPU draw)."""
    from bench.inputs import case_mask

    return int(case_mask(n_tokens, seed).sum())


# ------------------------------------------------------------- the committed H200 numbers


def _rows_of(results: Path) -> list[tuple[dict, dict]]:
    """(step doc, row) of every ok logits-in or fused row of realistic.json and rest.json."""
    found = []
    for name in ("realistic.json", "rest.json"):
        path = results / name
        if not path.is_file():
            continue
        doc = json.loads(path.read_text())
        found += [(doc, r) for r in doc.get("rows", [])
                  if r.get("status") == "ok" and r.get("table") in ("logits", "fused")]
    return found


def recompute(results: Path = H200_RESULTS) -> list[dict]:
    """The committed raw timings with the floor columns recomputed on the valid rows (the
    valid-row count from the run's row, or else from ``bench.inputs``' seeded draw)."""
    counts: dict[int, int] = {}
    out = []
    for doc, r in _rows_of(results):
        n = r["n_tokens"]
        if "n_valid" not in r and n not in counts:
            counts[n] = valid_rows(n)
        row = {k: r[k] for k in ("table", "loss", "provider", "role", "n_tokens", "vocab",
                                 "time_ms") if k in r}
        row.update(hidden=r.get("hidden"), n_valid=r.get("n_valid", counts.get(n)),
                   copy_gb_s=doc.get("copy_gb_s"), gemm_tflops=doc.get("gemm_tflops"))
        row.update(floor_columns(row, copy_gb_s=row["copy_gb_s"],
                                 gemm_tflops=row["gemm_tflops"], elt=2))
        out.append(row)
    # the fused rows against the GEMMs timed on the same valid rows (the floor provider)
    timed = {(r["loss"], r["n_tokens"], r["hidden"]): r["time_ms"] for r in out
             if r["role"] == "floor" and "valid" in r["provider"]}
    for r in out:
        key = (r["loss"], r["n_tokens"], r["hidden"])
        if r["table"] == "fused" and key in timed:
            r["pct_timed_valid_gemms"] = pct(timed[key], r["time_ms"])
    return out


def find(rows: list[dict], loss: str, provider: str = "cord_kernels", n: int | None = None):
    """The row of ``loss`` by ``provider`` (at ``n`` tokens, else the largest N)."""
    hits = [r for r in rows if r["loss"] == loss and r["provider"] == provider
            and (n is None or r["n_tokens"] == n)]
    if not hits:
        raise KeyError(f"no row {loss!r} / {provider!r} / N={n}")
    return max(hits, key=lambda r: r["n_tokens"])


def _f(x, spec=".1f") -> str:
    return "" if x is None else format(x, spec)


_TABLES = {  # table -> (title, the size column, the last % column)
    "logits": ("loss (logits in, bf16, fwd+bwd)", "V", "% of one-pass floor (valid rows)"),
    "fused": ("loss (hidden in, bf16, fwd+bwd)", "H", "% of the GEMMs timed on the valid rows"),
}
_PCT = {"logits": ("% of valid-rows floor", "% of all-rows floor"),
        "fused": ("% of valid-rows GEMM floor", "% of all-rows GEMM floor")}
_LAST_KEY = {"logits": "pct_one_pass_floor", "fused": "pct_timed_valid_gemms"}


def markdown(rows: list[dict], results: Path = H200_RESULTS) -> str:
    """The tables of docs/performance.md's H200 section."""
    rates = {}
    for doc, _ in _rows_of(results):
        rates[doc["kind"]] = (doc.get("copy_gb_s"), doc.get("gemm_tflops"))
    valid = {r["n_tokens"]: r["n_valid"] for r in rows}
    lines = ["Rates measured in each step: " + "; ".join(
        f"{k}: copy {_f(bw)} GB/s (read + write), torch.mm {_f(fl)} TFLOP/s"
        for k, (bw, fl) in rates.items()) + ". Valid rows of the ragged masks: " + ", ".join(
        f"{nv} of {n} ({100 * nv / n:.1f}%)" for n, nv in sorted(valid.items())) + ".", "",
    ]
    for table, (title, size, last) in _TABLES.items():
        cols = [title, "provider", "N", size, "ms", *_PCT[table], last, "floor ms"]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            if r["table"] == table:
                cells = [r["loss"], r["provider"], str(r["n_tokens"]),
                         str(r["hidden"] if table == "fused" else r["vocab"]),
                         f"{r['time_ms']:.2f}", _f(r.get("pct_floor")),
                         _f(r.get("pct_floor_all_rows")), _f(r.get(_LAST_KEY[table])),
                         _f(r.get("floor_ms"), ".2f")]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines + _drop_in_lines(results, rates.get("realistic", (None, None))[1]))


# bench/gpu/trl_agreement.py's bf16 timing shape: B x T tokens, all valid
DROP_IN_SHAPE = {"n_tokens": 4 * 1024, "hidden": 896, "vocab": 151_936}


def drop_in_rows(results: Path = H200_RESULTS, gemm_tflops: float | None = None) -> list[dict]:
    """trl_gpu.json's timings (the drop-in and TRL's kernel) against the 4-GEMM floor at
    ``gemm_tflops`` (that run measured no rate of its own: the realistic step's is used)."""
    path = results / "trl_gpu.json"
    if not path.is_file():
        return []
    timing = json.loads(path.read_text())["timing"]
    s = DROP_IN_SHAPE
    flops = gemm_floor_flops("fused_linear_distill_loss", s["n_tokens"], s["n_tokens"],
                             s["hidden"], s["vocab"])["valid"]
    out = []
    for t in timing:
        trl = next(x for x in timing if x["beta"] == t["beta"] and x["backend"] == "trl")
        row = {"beta": t["beta"], "backend": t["backend"], "time_ms": 1e3 * t["fwd_bwd_s"],
               "x_trl": t["fwd_bwd_s"] / trl["fwd_bwd_s"], **s}
        if gemm_tflops:
            row["floor_ms"] = 1e3 * flops / (gemm_tflops * 1e12)
            row["pct_floor"] = pct(row["floor_ms"], row["time_ms"])
        out.append(row)
    return out


def _drop_in_lines(results: Path, gemm_tflops: float | None) -> list[str]:
    rows = drop_in_rows(results, gemm_tflops)
    if not rows:
        return []
    s = DROP_IN_SHAPE
    lines = [f"The TRL drop-in against TRL's own Triton kernel (trl_gpu.json: N = {s['n_tokens']}"
             f", all valid, H = {s['hidden']}, V = {s['vocab']}, bf16, fwd+bwd; the 4-GEMM "
             f"floor at the realistic step's torch.mm rate, {_f(gemm_tflops)} TFLOP/s):", "",
             "| beta | backend | ms | x TRL | % of 4-GEMM floor | floor ms |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['beta']} | {r['backend']} | {r['time_ms']:.2f} | "
                     f"{r['x_trl']:.2f} | {_f(r.get('pct_floor'))} | "
                     f"{_f(r.get('floor_ms'), '.2f')} |")
    return lines + [""]


# The rows the README and docs/performance.md quote, in this order.
HEADLINE = ("cord_token_loss", "reverse_kl", "token_logprobs", "jsd", "sparse_teacher_loss[k8]",
            "fused_linear_cord_token_loss", "fused_linear_distill_loss[jsd]",
            "fused_linear_sparse_teacher_loss[k8]")


def headline(rows: list[dict]) -> dict[str, tuple[str, str]]:
    """{loss: (% of its valid-rows floor, % all rows)} of cord_kernels at the largest N, as
    the docs write them ("76.7")."""
    out = {}
    for loss in HEADLINE:
        r = find(rows, loss)
        out[loss] = (f"{r['pct_floor']:.1f}", f"{r['pct_floor_all_rows']:.1f}")
    return out


def headline_text(rows: list[dict]) -> str:
    """One sentence per loss, cord_kernels at N = 16,384: the valid-rows figure first."""
    h = headline(rows)
    timed = find(rows, "fused_linear_cord_token_loss").get("pct_timed_valid_gemms")
    parts = []
    for loss, (valid, every) in h.items():
        what = (f"its valid-rows {gemm_count(loss)}-GEMM floor" if loss.startswith("fused")
                else "its valid-rows floor")
        same = ("; it takes no mask, so every row is its work" if not skips_masked_rows(loss)
                else f"; {every}% if every row were charged in full")
        extra = (f", {timed:.1f}% of the four GEMMs timed on the same rows"
                 if loss == "fused_linear_cord_token_loss" and timed else "")
        parts.append(f"- `{loss}`: {valid}% of {what}{extra}{same}")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    results = Path(argv[0]) if argv else H200_RESULTS
    rows = recompute(results)
    print(headline_text(rows) + "\n" + markdown(rows, results), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
