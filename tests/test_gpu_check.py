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

from bench.gpu import files as gpu_files

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
    (("--only", "bench", "out"), "--only takes one of env trl realistic rest tests vparallel "
                                 "train"),
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
            assert 0 < r["n_valid"] <= r["n_tokens"]
            # the valid-rows floor is the main column; the all-rows figure charges more
            assert 0 < r["pct_floor"] <= r["pct_floor_all_rows"] * (1 + 1e-9)
            if r["table"] == "fused":
                assert r["tflops"] > 0
            else:
                assert r["pct_one_pass_floor"] < r["pct_floor"]
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
    # the N sweep of reverse KL and the CORD loss: the CORD loss skips the masked rows
    sweep = {(r["loss"], r["n_tokens"]): r for r in rest if r["status"] == "ok"
             and r["loss"] in ("reverse_kl", "cord_token_loss") and r["vocab"] == 1024}
    assert {n for _, n in sweep} == {16, 32}
    for (loss, _), r in sweep.items():
        equal = r["pct_floor"] == r["pct_floor_all_rows"]
        assert equal == (loss == "reverse_kl" or r["n_valid"] == r["n_tokens"])
    summary = (out / gpu_files.SUMMARY).read_text()
    assert "dry run" in summary and "| cord_kernels |" in summary
    assert "% of valid-rows floor" in summary and "% of all-rows floor" in summary


def test_dry_run_timed_the_drop_in_against_trl_and_traced_one_call(dry_run):
    out, stdout, _ = dry_run
    doc = _doc(out, "trl")
    assert doc["step"]["status"] == "done"
    rows = [r for r in doc["rows"] if r["table"] == "trl"]
    assert rows and all(r["status"] == "ok" for r in rows), rows
    # the goal shape first, both betas, both backends, then the profile
    first = {(r["n_tokens"], r["hidden"]) for r in rows[:4]}
    assert len(first) == 1 and doc["rows"][4]["table"] == "profile"
    assert {(r["beta"], r["provider"]) for r in rows[:4]} == {
        (b, p) for b in (1.0, 0.5) for p in ("cord_kernels", "trl")}
    for r in rows:
        assert r["time_ms"] > 0 and 0 < r["pct_floor"] and r["gemm_tflops"] > 0
        if r["provider"] == "cord_kernels":
            assert r["x_trl"] > 0
    # the same loss from both (every row valid, fp32 sums of bf16 logits)
    for ours in (r for r in rows if r["provider"] == "cord_kernels"):
        theirs = next(r for r in rows if r["provider"] == "trl" and all(
            r[k] == ours[k] for k in ("n_tokens", "hidden", "beta")))
        assert abs(ours["loss"] - theirs["loss"]) <= 2e-2 * abs(theirs["loss"]) + 1e-3
    prof = next(r for r in doc["rows"] if r["table"] == "profile")
    assert prof["status"] == "ok" and prof["aten_op_calls"] > 0 and prof["aten_ops"]
    assert doc["trace_of"] == prof["id"] and 0 < len(doc["traceEvents"]) == prof["trace_events"]
    assert "Profile of one drop-in call" in (out / gpu_files.SUMMARY).read_text()


def test_dry_run_ran_the_vocabulary_parallel_cases(dry_run):
    doc = _doc(dry_run[0], "vparallel")
    assert doc["step"]["status"] == "done" and doc["process_group"] == "gloo, 1 rank"
    assert len(doc["rows"]) == 5 and all(r["status"] == "ok" and r["agrees"]
                                         for r in doc["rows"]), doc["rows"]


def test_the_realistic_sizes_and_every_kernel_are_planned():
    from bench.gpu import check as gpu_check

    real = gpu_check.plan("realistic", dry_run=False)
    assert {(r["n_tokens"], r["vocab"], r.get("hidden")) for r in real} == {
        (16384, 152064, None), (16384, 152064, 3584)}
    assert {r["provider"].split()[0] for r in real} >= {"cord_kernels", "liger", "trl",
                                                         "torch.compile", "4"}
    rest = gpu_check.plan("rest", dry_run=False)
    assert {(r["loss"], r["n_tokens"]) for r in rest if r["table"] == "logits"
            and r["vocab"] == 151936} == {(loss, n) for loss in ("reverse_kl", "cord_token_loss")
                                          for n in (1024, 4096, 16384)}
    trl = gpu_check.plan("trl", dry_run=False)
    timed = [r for r in trl if r["table"] == "trl"]
    assert {(r["n_tokens"], r["hidden"], r["beta"], r["provider"]) for r in timed} == {
        (n, h, b, p) for n in (1024, 4096, 16384) for h in (896, 2048, 3584)
        for b in (1.0, 0.5) for p in ("cord_kernels", "trl")}
    assert len(timed) == 36 and all(r["vocab"] == 151936 for r in timed)
    assert (trl[0]["n_tokens"], trl[0]["hidden"]) == (4096, 896)  # issue 34's goal shape first
    assert [r["table"] for r in trl].index("profile") == 4
    vp = gpu_check.plan("vparallel", dry_run=False)
    every = real + rest + trl + vp
    assert len({r["id"] for r in every}) == len(every)
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
    proc = subprocess.Popen([sys.executable, "-m", "bench.gpu.check", "measure", str(out),
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


def _gpu_limits(text: str) -> dict[str, int]:
    """The second LIMIT table of gpu_check.sh (the first is the dry run's)."""
    body = re.findall(r"declare -A LIMIT=\((.*?)\)\n", text, re.S)[1]
    return {k: int(v) for k, v in re.findall(r"\[(\w+)\]=(\d+)", body)}


def test_the_lease_plan_fits_with_room_for_one_rerun():
    """Every step has a hard limit; on the GPU they fit the device call (timeout_s 550, as
    docs/verification.md writes it) with every grace spent, and a 900 s lease with a 120 s start
    keeps 200 s for one --only rerun of any single step (env runs again with it) on the warm
    machine."""
    text = SCRIPT.read_text()
    gpu = _gpu_limits(text)
    assert list(gpu) == list(gpu_files.STEPS)
    grace = int(re.search(r"\nGRACE=(\d+)\n", text).group(1))
    worst = sum(gpu.values()) + grace * len(gpu)
    assert worst <= 550 - 10
    left = 900 - 120 - 550
    assert left >= 200 and all(gpu["env"] + limit + 2 * grace <= left
                               for step, limit in gpu.items() if step != "env")
    verification = " ".join((REPO / "docs" / "verification.md").read_text().split())
    assert "timeout_s=550" in verification and f"add up to {sum(gpu.values())} s" in verification


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
    for kind in gpu_files.STEPS[1:]:
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


def test_a_step_whose_setup_fails_says_so_on_every_row(tmp_path):
    """A runner whose prepare raises (a peer that does not import, a process group that does
    not form) leaves a valid file: the step failed, every row an error with the reason."""
    from bench.gpu import check as gpu_check
    from bench.gpu.timing import cmd_measure

    class Broken:
        def prepare(self, doc):
            raise RuntimeError("no NCCL here")

        def run(self, row):
            raise AssertionError("never reached")

        def close(self):
            pass

    gpu_check.cmd_init(tmp_path, True, ["env", "vparallel"], {})
    rows = gpu_check.plan("vparallel", dry_run=True)
    assert cmd_measure(tmp_path, "vparallel", rows, Broken(), True, 10.0) == 1
    doc = _doc(tmp_path, "vparallel")
    assert doc["step"]["status"] == "failed" and "no NCCL here" in doc["step"]["reason"]
    assert all(r["status"] == "error" and "no NCCL here" in r["reason"] for r in doc["rows"])
    assert not [p for p in gpu_files.validate(tmp_path) if p.startswith("vparallel")]
