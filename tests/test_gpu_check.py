"""scripts/gpu_check.sh on the CPU: argument parsing, and a --dry-run that runs every step on
tiny shapes and writes the same files, with the same schema, as the run on a GPU.

The dry run is one ~1-minute subprocess (several fresh interpreters, a 1-step tiny training
run); its folder is shared by the tests of this module.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bench import gpu_check

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _run(*args, timeout=60):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    ((), "missing OUT_DIR"),
    (("--fast", "out"), "unknown option --fast"),
    (("a", "b"), "one output folder expected"),
])
def test_bad_arguments_exit_2_and_say_why(args, message):
    proc = _run(*args)
    assert proc.returncode == 2 and message in proc.stderr


def test_help():
    proc = _run("--help")
    assert proc.returncode == 0 and "--dry-run" in proc.stdout


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = _run("--dry-run", str(out), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def _doc(out: Path, kind: str) -> dict:
    return json.loads((out / gpu_check.FILES[kind]).read_text())


def test_dry_run_writes_the_files_and_they_validate(dry_run):
    out, stdout = dry_run
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*gpu_check.FILES.values(), gpu_check.SUMMARY])
    assert len(names) <= gpu_check.MAX_FILES
    assert gpu_check.validate(out) == []
    for kind in gpu_check.FILES:
        doc = _doc(out, kind)
        assert doc["schema"] == gpu_check.SCHEMA and doc["kind"] == kind and doc["dry_run"]
    assert "done in" in stdout


def test_dry_run_rows_have_the_measured_columns(dry_run):
    out, _ = dry_run
    sweep = _doc(out, "logits_sweep")
    assert sweep["copy_gb_s"] > 0
    ok = [r for r in sweep["rows"] if r["status"] == "ok"]
    assert {r["provider"] for r in ok} >= {"cord_kernels", "torch"}
    for r in ok:
        assert r["time_ms"] > 0 and r["gb_s"] > 0
        assert r["pct_floor_6"] < r["pct_floor_10"]  # fewer bytes: a lower floor
    assert all(r["reason"] for r in sweep["rows"] if r["status"] != "ok")
    fused = _doc(out, "fused_linear")
    assert any(r["provider"] == "cord_kernels" and r["status"] == "ok" for r in fused["rows"])
    assert all(r["tflops"] > 0 for r in fused["rows"] if r["status"] == "ok")
    sparse = _doc(out, "sparse_teacher")
    ours = [r for r in sparse["rows"] if r["provider"] == "cord_kernels" and r["status"] == "ok"]
    assert {(r["loss"].split("[")[0], r["k"]) for r in ours} == {
        (loss, k) for loss in ("sparse_teacher_loss", "fused_linear_sparse_teacher_loss")
        for k in (1, 8, 64)}
    assert all(r["gb_s"] > 0 if "gb_s" in r else r["tflops"] > 0 for r in ours)
    variants = _doc(out, "launch_variants")
    assert {(r["block_v"], r["num_warps"]) for r in variants["rows"]} >= {(8192, 16), (4096, 8)}
    assert any(r["vocab"] == gpu_check.UNALIGNED_VOCAB for r in variants["rows"])


def test_dry_run_ran_the_test_suites_and_a_training_step(dry_run):
    out, _ = dry_run
    suites = _doc(out, "tests")["suites"]
    assert set(suites) == {"gpu_tests", "cuda_suite"}
    for s in suites.values():
        assert "error" not in s and s["failures"] == 0 and s["errors"] == 0
        assert s["skipped"] > 0  # no CUDA here: every case skips, with its reason
        assert any("CUDA" in reason for reason in s["skip_reasons"])
    train = _doc(out, "train")
    assert train["returncode"] == 0 and train["steps"] and "loss" in train["final"]
    summary = (out / gpu_check.SUMMARY).read_text()
    assert "dry run" in summary and "| cord_kernels |" in summary


def test_validate_reports_what_is_wrong(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "env.json").write_text(json.dumps({"schema": "other", "kind": "env"}))
    problems = "\n".join(gpu_check.validate(tmp_path))
    assert "notes.txt: only json and markdown" in problems
    assert "summary.md is missing" in problems and "tests.json is missing" in problems
    assert "env.json: missing keys" in problems and "env.json: schema/kind" in problems
