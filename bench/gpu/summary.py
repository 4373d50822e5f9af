"""``summary.md`` of the GPU check: every step's file as tables (no torch, fast).

    python -m bench.gpu.summary OUT

The headline comes first (``scripts/gpu_check.sh`` prints it from "## Steps" to "## The rest",
since the device returns the end of stdout): the steps, the TRL drop-in against TRL's kernel,
the realistic sizes against their floors, the CUDA tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.gpu.files import STEPS, SUMMARY, load


def _fmt(x, spec=".1f") -> str:
    if x is None or x == "":
        return ""
    return x if isinstance(x, str) else format(x, spec)


def _table(rows: list[dict], cols: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(key(r) if callable(key) else r.get(key))
                                       for _, key in cols) + " |")
    return lines


def _status(r: dict) -> str:
    return "ok" if r.get("status") == "ok" else f"{r.get('status')}: {r.get('reason', '')}"


def _gib(key: str = "peak_bytes"):
    return lambda r: _fmt(r[key] / 2**30, ".2f") if key in r else ""


_SHAPE = [("loss", "loss"), ("provider", "provider"), ("N", lambda r: str(r["n_tokens"])),
          ("valid rows", lambda r: str(r.get("n_valid", ""))), ("V", lambda r: str(r["vocab"]))]
_TIMES = [("ms", lambda r: _fmt(r.get("time_ms"), ".2f")),
          ("first call s", lambda r: _fmt(r.get("first_call_s"), ".1f"))]
COLUMNS = {
    "logits": _SHAPE + _TIMES + [
        ("% of valid-rows floor", "pct_floor"), ("% of all-rows floor", "pct_floor_all_rows"),
        ("% of one-pass floor", "pct_one_pass_floor"), ("GB/s (valid-rows bytes)", "gb_s"),
        ("peak GiB", _gib()), ("status", _status)],
    "fused": _SHAPE + [("H", lambda r: str(r.get("hidden")))] + _TIMES + [
        ("% of valid-rows GEMM floor", "pct_floor"),
        ("% of all-rows GEMM floor", "pct_floor_all_rows"),
        ("TFLOP/s (valid rows)", "tflops"), ("peak GiB", _gib()), ("status", _status)],
    "variants": _SHAPE + [("BLOCK_V", lambda r: str(r.get("block_v"))),
                          ("warps", lambda r: str(r.get("num_warps")))] + _TIMES + [
        ("% of valid-rows floor", "pct_floor"), ("status", _status)],
    "trl": [("beta", lambda r: _fmt(r.get("beta"), ".1f")), ("provider", "provider"),
            ("N", lambda r: str(r["n_tokens"])), ("H", lambda r: str(r["hidden"])),
            ("V", lambda r: str(r["vocab"]))] + _TIMES + [
        ("x TRL", lambda r: _fmt(r.get("x_trl"), ".2f")),
        ("% of 4-GEMM floor", "pct_floor"), ("torch.mm TFLOP/s", "gemm_tflops"),
        ("GiB above inputs", _gib("peak_above_inputs_bytes")), ("status", _status)],
    "vparallel": [("case", "loss"), ("N", lambda r: str(r["n_tokens"])),
                  ("V", lambda r: str(r["vocab"])),
                  ("single ms", lambda r: _fmt(r.get("single_ms"), ".2f")),
                  ("process_group ms", lambda r: _fmt(r.get("parallel_ms"), ".2f")),
                  ("value rel err", lambda r: _fmt(r.get("value_rel_err"), ".1e")),
                  ("grad rel err", lambda r: _fmt(r.get("grad_rel_err"), ".1e")),
                  ("status", _status)],
}


def _rates(doc: dict) -> str:
    return (f"copy {_fmt(doc.get('copy_gb_s'))} GB/s (read + write), torch.mm "
            f"{_fmt(doc.get('gemm_tflops'))} TFLOP/s")


def _measure_section(doc: dict, title: str, rates: bool = True) -> list[str]:
    lines = ["", f"## {title}", "",
             f"Step: {doc.get('step', {}).get('status')}; {doc.get('dtype')}"
             + (f"; {_rates(doc)}" if rates else "")
             + f"; Triton cache: {doc.get('triton_cache')}."]
    rows = doc.get("rows", [])
    for table, cols in COLUMNS.items():
        chosen = [r for r in rows if r.get("table") == table]
        if chosen:
            lines += ["", *_table(chosen, cols)]
    return lines


def _profile_lines(doc: dict) -> list[str]:
    prof = next((r for r in doc.get("rows", []) if r.get("table") == "profile"), None)
    if prof is None or prof.get("status") != "ok":
        return ["", "Profile of one drop-in call: " + (_status(prof) if prof else "not planned")]
    ops = prof.get("aten_ops", {})
    gemm = sum(c for k, c in ops.items() if k in ("aten::mm", "aten::addmm", "aten::bmm",
                                                   "aten::matmul", "aten::linear"))
    lines = ["", f"Profile of one drop-in call ({prof['id']}; the trace is trl.json's "
             f"traceEvents, {prof.get('trace_events')} events): {prof.get('aten_op_calls')} "
             f"aten op calls, {gemm} of them GEMM-class; "
             + ", ".join(f"{k} {v}" for k, v in list(ops.items())[:12]) + ".", ""]
    lines += _table(prof.get("top", [])[:10], [
        ("op or kernel", "name"), ("calls", lambda r: str(r["count"])),
        ("device us", lambda r: _fmt(r["device_us"], ".0f")),
        ("self CPU us", lambda r: _fmt(r["self_cpu_us"], ".0f"))])
    return lines


def cmd_summary(out: Path) -> None:
    docs = {kind: load(out, kind) for kind in STEPS}
    env, tests, train = docs["env"], docs["tests"], docs["train"]
    dry = any(d.get("dry_run") for d in docs.values())
    lines = ["# GPU check" + (" (dry run on the CPU: plumbing only)" if dry else ""), "",
             f"Device: {env.get('device')}; driver {env.get('driver')}; torch "
             f"{env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, Python "
             f"{env.get('python')}; wheels: {env.get('wheels')}.", "", "## Steps", ""]
    lines += _table([{"name": k, **d.get("step", {})} for k, d in docs.items()], [
        ("step", "name"), ("status", "status"), ("seconds", "seconds"), ("limit s", "limit_s"),
        ("reason", lambda r: r.get("reason", ""))])
    lines += _measure_section(docs["trl"], "The TRL drop-in against TRL's own Triton kernel",
                              rates=False)
    lines += _profile_lines(docs["trl"])
    lines += _measure_section(docs["realistic"], "Realistic sizes against the floors and peers")
    suite = tests.get("suite", {})
    lines += ["", f"## CUDA tests ({len(tests.get('files', []))} files, compiled kernels)", "",
              f"passed {suite.get('passed', '-')}, failed "
              f"{suite.get('failures', 0) + suite.get('errors', 0)}, skipped "
              f"{suite.get('skipped', '-')}" + (f"; {suite['error']}" if "error" in suite
                                                 else "")]
    lines += [f"- FAILED `{f['test']}`: {f['message'][:200]}" for f in suite.get("failed", [])]
    lines += _measure_section(docs["rest"], "The rest: JSD, log-probs, sparse teacher, the N "
                                            "sweep, launch configs")
    lines += _measure_section(docs["vparallel"], "Vocabulary-parallel losses (1 rank)",
                              rates=False)
    lines += ["", "## Training steps", ""]
    lines += _table([{"name": k, **v} for k, v in train.get("runs", {}).items()], [
        ("run", "name"), ("status", "status"), ("seconds", "seconds"),
        ("logged steps", lambda r: str(len(r.get("steps", [])))),
        ("final loss", lambda r: _fmt((r.get("final") or {}).get("loss"), ".4g")),
        ("reason", lambda r: r.get("reason", ""))])
    (out / SUMMARY).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.gpu.summary OUT")
    cmd_summary(Path(sys.argv[1]))
