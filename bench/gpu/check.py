"""The steps of ``scripts/gpu_check.sh`` (the file plumbing is ``bench.gpu.files``).

    python -m bench.gpu.check env      OUT [--dry-run] [--wheels STATUS] [--steps STEP,...]
                                           [--limit STEP=SECONDS ...]
    python -m bench.gpu.check measure  OUT STEP [--dry-run] [--budget-s S]

``env`` first writes every file of the check (``cmd_init``), before any other step runs, with
every row it plans "not reached" (a step left out by ``--only`` is "not run"); each step then
rewrites its own file as its rows finish. ``measure`` runs one of the measuring steps, its
rows in their planned order (``bench.gpu.timing.cmd_measure``), and stops starting rows when
its soft budget is spent (the row says so); SIGINT, which timeout(1) sends at the step's hard
limit, marks the row in progress "interrupted" and leaves the rest "not reached". The Triton
(and inductor) cache is a fresh folder for each measuring step (gpu_check.sh sets
TRITON_CACHE_DIR), so ``first_call_s`` of the first row of each kernel is a cold compile.
The measuring steps, in the order the check runs them (the most wanted first):

    trl         the TRL drop-in against TRL 1.16's own Triton kernel, H in {896, 2048, 3584}
                x N in {1024, 4096, 16384}, V = 151,936, beta 1 and 0.5, H = 896, N = 4096
                first, then a torch.profiler trace of one drop-in call (``bench.gpu.trl``).
    realistic   bf16, N = 16,384 tokens. Logits in at V = 152,064 (Qwen2-Audio's head):
                reverse KL (ours, Liger, TRL, naive, torch.compile) and the CORD loss
                (ours), % of the valid-rows floor (``bench.floors``; the all-rows and
                one-pass figures beside it) at the copy bandwidth measured in the same step.
                Fused linear at H = 3584: the CORD loss (ours, the 4-GEMM floors, TRL, Liger,
                naive), % of the GEMMs on the valid rows at torch.mm's rate measured in the
                same step.
    rest        the JSD, the sparse-teacher loss (k = 8) and token log-probs on logits in with
                their peers; reverse KL and the CORD loss at N = 1024, 4096, 16384 (V =
                151,936; the fixed cost per call); the sparse teacher at k = 1 and 64; the fused
                JSD distillation and sparse-teacher losses; BLOCK_V x warps of the streaming
                kernels and V = 151,643 (rows not 16-byte aligned); then the torch.compile
                rows, whose cold compile is the slowest.
    vparallel   the vocabulary-parallel losses through a 1-rank NCCL group against
                ``process_group=None`` (``bench.gpu.vocab_parallel``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from bench.gpu import trl as trl_step
from bench.gpu import vocab_parallel
from bench.gpu.files import NOT_REACHED, NOT_RUN, STEPS, load, now, save
from bench.gpu.summary import cmd_summary
from bench.gpu.timing import (
    QWEN2_7B_HIDDEN,
    QWEN2_AUDIO_VOCAB,
    QWEN2_VOCAB,
    TableRunner,
    cmd_measure,
    header,
    providers,
)

UNALIGNED_VOCAB = 151_643  # Qwen2's tokenizer size before padding: V % 8 != 0
REAL_N = 16_384
SWEEP_NS = (1024, 4096, 16_384)  # the fixed cost per call shows at the small N
MEASURE_STEPS = ("trl", "realistic", "rest", "vparallel")


# ------------------------------------------------------------------------------------- plan


def _shapes(dry_run: bool) -> dict:
    if dry_run:  # the same code on shapes a CPU runs in a blink
        return {"real": (32, 1000), "fused": (64, 1000, 32), "sweep": ((16, 32), 1024),
                "variant_vocabs": (1024, 1021), "reps": 1}
    return {"real": (REAL_N, QWEN2_AUDIO_VOCAB), "fused": (REAL_N, QWEN2_AUDIO_VOCAB,
                                                           QWEN2_7B_HIDDEN),
            "sweep": (SWEEP_NS, QWEN2_VOCAB), "variant_vocabs": (QWEN2_VOCAB, UNALIGNED_VOCAB),
            "reps": 5}


def _rows(table: str, loss: str, n: int, v: int, h: int | None = None, *, roles=None,
          **extra) -> list[dict]:
    rows = []
    for p in providers(table, loss):
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

    if step == "trl":
        return trl_step.plan(dry_run)
    if step == "vparallel":
        return vocab_parallel.plan(dry_run)
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
    sweep_ns, sv = s["sweep"]
    for sn in sweep_ns:
        for loss in ("reverse_kl", "cord_token_loss"):
            rows += _rows("logits", loss, sn, sv, roles={"ours"})
    for k in ks[1:]:
        rows += _rows("logits", f"sparse_teacher_loss[k{k}]", n, v, k=k)
    rows += _rows("fused", "fused_linear_distill_loss[jsd]", fn, fv, fh)
    for k in ks:
        rows += _rows("fused", f"fused_linear_sparse_teacher_loss[k{k}]", fn, fv, fh, k=k,
                      roles=None if k == ks[0] else {"ours", "floor", "naive", "peer"})
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
        doc = header(kind, dry_run, status, reason)
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


# ------------------------------------------------------------------------------------- main


def _limits(pairs: list[str]) -> dict[str, float]:
    found = {}
    for pair in pairs:
        name, _, seconds = pair.partition("=")
        found[name] = float(seconds)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu.check", description=__doc__,
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
        return measure(a.out, a.step, a.dry_run, a.budget_s)
    return 0


def measure(out: Path, step: str, dry_run: bool, budget_s: float) -> int:
    """Runs the measuring step ``step`` with its runner, on CUDA unless ``dry_run``."""
    on_cuda = torch.cuda.is_available() and not dry_run
    device = torch.device("cuda" if on_cuda else "cpu")
    reps = _shapes(dry_run)["reps"]
    runner = {"trl": trl_step.TrlRunner, "vparallel": vocab_parallel.VocabParallelRunner}.get(
        step, TableRunner)(device, dry_run, reps)
    return cmd_measure(out, step, plan(step, dry_run), runner, dry_run, budget_s)


if __name__ == "__main__":
    sys.exit(main())
