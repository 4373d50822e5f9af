"""The rehearsal of the GPU check on the CPU: ``scripts/gpu_check.sh --dry-run`` runs every step
on tiny shapes and writes the files the device call brings back, under the device tool's
limits (at most 8 files, at most 2 folders down, the names it accepts), with the training step
killed on purpose at a 2 s limit; a measuring step stopped by SIGINT mid-way still leaves valid
files; what travels (tracked files, untracked files git does not ignore, the carried .whl/) is
counted as the tool counts it and stays under the budget of scripts/gpu_wheels.sh.

The dry run is one subprocess of about 40 s of CPU (several fresh interpreters, a killed
training run); its folder is shared by the tests of this module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import gpu_files

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
WHEEL_BUDGET_MIB = 60  # scripts/gpu_wheels.sh's BUDGET_MIB


def _env(tmp: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "CORD_TEST_COMPILED")}
    if tmp is not None:
        env["TMPDIR"] = str(tmp)  # the check's logs and fresh Triton caches stay in tmp_path
    return env


def _run(*args, timeout=60, tmp=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=REPO, env=_env(tmp), timeout=timeout)


@pytest.mark.parametrize("args, message", [
    ((), "missing OUT_DIR"),
    (("--fast", "out"), "unknown option --fast"),
    (("a", "b"), "one output folder expected"),
    (("--only", "bench", "out"), "--only takes one of env tests realistic rest train"),
    (("--limit", "train", "out"), "--limit takes STEP=SECONDS"),
])
def test_bad_arguments_exit_2_and_say_why(args, message):
    proc = _run(*args)
    assert proc.returncode == 2 and message in proc.stderr


def test_help():
    proc = _run("--help")
    assert proc.returncode == 0 and "--dry-run" in proc.stdout and "--only STEP" in proc.stdout


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    t0 = time.monotonic()
    proc = _run("--dry-run", "--limit", "train=2", str(out), timeout=600,
                tmp=tmp_path_factory.mktemp("work"))
    # 3: a step did not finish (the training step, killed on purpose); 1 would be bad files.
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout, time.monotonic() - t0


def _doc(out: Path, kind: str) -> dict:
    return json.loads((out / gpu_files.FILES[kind]).read_text())


def test_dry_run_stays_inside_the_device_limits(dry_run):
    out, stdout, _ = dry_run
    assert gpu_files.out_problems(out) == []
    assert gpu_files.validate(out) == []
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= gpu_files.MAX_FILES and all(p.parent == out for p in files)
    assert sorted(p.name for p in files) == sorted([*gpu_files.FILES.values(),
                                                    gpu_files.SUMMARY])
    for kind in gpu_files.STEPS:
        doc = _doc(out, kind)
        assert doc["schema"] == gpu_files.SCHEMA and doc["kind"] == kind and doc["dry_run"]
    assert "done in" in stdout
    assert re.search(r"steps that did not finish: train \(exit 1(24|37)\)", stdout)


def test_what_travels_fits(dry_run):
    """Counted as the device tool counts it, .whl/ carried (where gpu_wheels.sh made one)."""
    sizes = gpu_files.travelling_bytes(REPO, (".whl",))
    assert sizes["total"] < WHEEL_BUDGET_MIB * 2**20, sizes
    assert sizes["tree"] > 0 and sizes["total"] == sum(v for k, v in sizes.items()
                                                       if k != "total")


def test_the_step_killed_on_purpose_left_valid_files_and_its_log_tail(dry_run):
    out, stdout, _ = dry_run
    train = _doc(out, "train")
    assert train["step"]["status"].startswith("killed at its 2 s limit")
    assert isinstance(train["step"]["log_tail"], str) and train["step"]["returncode"] in (124,
                                                                                         137)
    assert train["runs"]["cord_train"]["status"].startswith("killed")
    assert train["runs"]["trl_gkd"]["status"] == gpu_files.NOT_RUN  # the dry run skips it
    assert re.search(r"train exited 1(24|37) after", stdout)
    assert "last 30 lines of its log" in stdout


def test_dry_run_ran_the_cuda_suite_in_parallel(dry_run):
    out, _, _ = dry_run
    tests = _doc(out, "tests")
    suite = tests["suite"]
    assert tests["step"]["status"] == "done" and "error" not in suite
    assert suite["failures"] == 0 and suite["errors"] == 0 and suite["skipped"] > 0
    # A compiled session (CORD_TEST_COMPILED=1) without CUDA: every case skips for that reason.
    assert all("CUDA is not available" in reason for reason in suite["skip_reasons"])
    assert "tests/test_jsd.py" in tests["files"]


def test_dry_run_rows_have_the_measured_columns(dry_run):
    out, _, _ = dry_run
    for step in ("realistic", "rest"):
        doc = _doc(out, step)
        assert doc["step"]["status"] == "done" and doc["copy_gb_s"] > 0
        assert doc["triton_cache"].startswith("fresh")
        rows = doc["rows"]
        ours = [r for r in rows if r["role"] == "ours" and r["table"] != "variants"]
        assert ours and all(r["status"] == "ok" for r in ours), ours
        for r in ours:
            assert r["time_ms"] > 0 and r["first_call_s"] > 0
            assert r["tflops"] > 0 if r["table"] == "fused" else (
                r["pct_one_pass_floor"] < r["pct_two_pass_floor"])
        peers = [r for r in rows if r["role"] == "peer"]
        assert peers and all(r["status"] == "skipped" and r["reason"] for r in peers)
    real = _doc(out, "realistic")["rows"]
    assert {r["provider"] for r in real} >= {"cord_kernels", "torch.compile",
                                             "trl generalized_jsd_loss(beta=1)",
                                             "liger LigerJSD(beta=1)"}
    assert real[-1]["provider"] == "torch.compile"  # the slowest compile comes last
    rest = _doc(out, "rest")["rows"]
    assert {r["loss"] for r in rest if r["status"] == "ok"} >= {
        "jsd", "fused_linear_distill_loss[jsd]", "sparse_teacher_loss[k8]",
        "fused_linear_sparse_teacher_loss[k8]", "token_logprobs"}
    summary = (out / gpu_files.SUMMARY).read_text()
    assert "dry run" in summary and "| cord_kernels |" in summary


def test_the_realistic_sizes_and_every_kernel_are_planned():
    from bench import gpu_check

    real = gpu_check.plan("realistic", dry_run=False)
    assert {(r["n_tokens"], r["vocab"], r.get("hidden")) for r in real} == {
        (16384, 152064, None), (16384, 152064, 3584)}
    assert {r["provider"].split()[0] for r in real} >= {"cord_kernels", "liger", "trl",
                                                         "torch.compile", "4"}
    rest = gpu_check.plan("rest", dry_run=False)
    assert len({r["id"] for r in real + rest}) == len(real + rest)
    # The cuda cases of the kernels: the three distillation files among the CUDA test files.
    files = gpu_files.cuda_test_files(REPO)
    assert {"tests/gpu", "tests/test_jsd.py", "tests/test_fused_distill.py",
            "tests/test_fused_sparse_teacher.py", "tests/test_kl.py"} <= set(files)


def _background() -> None:
    os.nice(10)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _interrupt_mid_step(out: Path, tmp_path: Path) -> subprocess.Popen | None:
    """Starts the dry run's "rest" step and sends SIGINT once its file says it is running; None
    when the step finished first (its running window is under a second on a quiet CPU, and a
    busy machine can starve the poll). The child runs niced so the poll tends to win, and starts
    with SIGINT ignored, as a shell in the background (nohup, CI) starts it."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.gpu_check", "measure", str(out),
                             "rest", "--dry-run"], cwd=REPO, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=_background)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if json.loads((out / "rest.json").read_text())["step"]["status"] == gpu_files.RUNNING:
            proc.send_signal(signal.SIGINT)
            return proc
        time.sleep(0.005)
    proc.wait(timeout=60)
    return None


def test_sigint_in_a_measuring_step_leaves_valid_files(dry_run, tmp_path):
    """What timeout(1) does at a step's limit: SIGINT mid-step. The file stays valid, the step
    and the row it was in say so, and the process exits 130."""
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        shutil.copytree(dry_run[0], out)
        proc = _interrupt_mid_step(out, tmp_path)
        if proc is not None:
            break
    else:
        pytest.fail("the step finished three times before its file said it was running")
    assert proc.wait(timeout=60) == 130, proc.stdout.read().decode()[-2000:]
    doc = _doc(out, "rest")
    assert doc["step"]["status"] == "interrupted"
    assert gpu_files.validate(out) == []
    assert not any(r["status"] == gpu_files.RUNNING for r in doc["rows"])
    assert any(r["reason"].endswith("stopped at its time limit") for r in doc["rows"]
               if r["status"] == gpu_files.NOT_REACHED)


def test_gpu_wheels_fetches_only_what_the_image_lacks():
    """The H200 image has torch, triton, transformers, accelerate, pytest(-xdist), pyarrow,
    pandas, xxhash, requests, httpx, ... (the device tool's KINDS.md); of what the check needs
    it lacks these eight, each pinned, fetched as CPython 3.12 manylinux x86_64 binaries."""
    text = (REPO / "scripts" / "gpu_wheels.sh").read_text()
    listed = re.search(r"\nWHEELS=\((.*?)\n\)", text, re.S).group(1)
    pins = re.findall(r"^\s+([\w-]+)==[\w.]+", listed, re.M)
    assert sorted(pins) == sorted(["liger-kernel", "trl", "datasets", "dill", "multiprocess",
                                   "soundfile", "cffi", "pycparser"])
    for flag in ("--only-binary=:all:", "--python-version 3.12", "--no-deps",
                 "--platform manylinux2014_x86_64", f"BUDGET_MIB={WHEEL_BUDGET_MIB}"):
        assert flag in text


def test_only_one_step_leaves_the_others_not_run(tmp_path):
    out = tmp_path / "out"
    proc = _run("--dry-run", "--only", "env", str(out), tmp=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert gpu_files.validate(out) == []
    assert _doc(out, "env")["step"]["status"] == "done"
    for kind in ("tests", "realistic", "rest", "train"):
        doc = _doc(out, kind)
        assert doc["step"] == {"status": gpu_files.NOT_RUN, "limit_s": doc["step"]["limit_s"],
                               "reason": "this call ran only env"}
        assert all(r["status"] == gpu_files.NOT_RUN for r in doc.get("rows", []))


def test_validate_reports_what_is_wrong(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "deep" / "er" / "still").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "still" / "x.json").write_text("{}")
    (tmp_path / "env.json").write_text(json.dumps({"schema": "other", "kind": "env"}))
    problems = "\n".join(gpu_files.validate(tmp_path))
    assert "notes.txt: not a file of the check" in problems
    assert "3 folders down, at most 2" in problems
    assert "summary.md is missing" in problems and "tests.json is missing" in problems
    assert "env.json: missing keys" in problems and "env.json: schema/kind" in problems
