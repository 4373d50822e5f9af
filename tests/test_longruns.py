"""Long runs: kill-anywhere resume, SIGTERM, a full disk, bad records and judge failures.

The process-level tests run ``cord train`` (``cord.cli.main``) in child processes forked from
a ``forkserver`` that has imported torch, transformers and the trainer once, so each kill and
resume costs the tiny model's build and its steps, not seconds of imports.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from cord.cli import main as cord_main
from cord.config import CordConfig
from cord.data.synthetic import tone_audio, tone_records
from cord.data.validate import BAD_RECORDS_FILE, load_paired_checked
from cord.rewards.judge import UNJUDGED, GuardedJudge
from cord.train.checkpoint import (
    COMPLETE_MARKER,
    EXIT_CHECKPOINT_FAILED,
    EXIT_PREEMPTED,
    SLOW_SAVE_ENV,
    CheckpointSaveError,
    complete_checkpoints,
    partial_checkpoints,
    resolve_checkpoint,
    save_atomically,
    trim_metrics,
)
from cord.train.trainer import CordTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_STEPS = 6
KILLS = 10
SLOW_SAVE = 0.4  # seconds every save of a killed run spends between its state and its marker
#: The smallest run that still exercises everything: tone audio, the CORD objective with its
#: GRPO groups and the match judge, AdamW, one checkpoint per step.
ARGS = ["train", "dataset=arithmetic", "dataset_audio=tone", "dataset_size=4",
        f"max_steps={MAX_STEPS}", "max_completion_length=4", "num_generations=2",
        "logging_steps=1", "report_to=none", "disable_tqdm=true", "seed=0",
        "learning_rate=1e-3"]
TIMING = ("tokens_per_second", "step_seconds")  # wall-clock figures differ from run to run

_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(["cord.cli", "cord.train.cli", "cord.train.trainer"])


def _child(argv: list[str], env: dict[str, str], log: str) -> None:
    """Runs ``cord <argv>`` in a forked child, output line-buffered into ``log``."""
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.exit(cord_main(argv))


def launch(out: Path, *extra: str, env: dict[str, str] | None = None, log: Path | None = None):
    log = log or out.with_name(out.name + ".log")
    proc = _CTX.Process(target=_child, args=(ARGS + [f"output_dir={out}", *extra], env or {},
                                             str(log)))
    proc.start()
    return proc, log


def wait_until(condition, proc, timeout: float = 120.0, *, must: bool = True) -> bool:
    """Polls ``condition`` while ``proc`` lives; False when it exited first or, unless
    ``must``, when ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if not proc.is_alive():
            return bool(condition())
        time.sleep(0.005)
    if must:
        raise TimeoutError("the run did not reach the expected point in time")
    return False


def rows(out: Path) -> list[dict]:
    """The complete rows of metrics.jsonl, timing figures dropped."""
    path = out / "metrics.jsonl"
    found = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        found.append({k: v for k, v in row.items() if k not in TIMING})
    return found


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its metrics rows, final weights, a checkpoint per step."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc, log = launch(out, "save_steps=1")
    proc.join(300)
    assert proc.exitcode == 0, log.read_text()[-3000:]
    steps = [r["step_seconds"] for r in map(json.loads, (out / "metrics.jsonl").open())]
    return {"out": out, "rows": rows(out), "final": weights(out / "final"),
            "step_seconds": float(np.median(steps))}


# -- kill anywhere -------------------------------------------------------------------------------


def test_kill_anywhere_resume_matches_the_uninterrupted_run(reference, tmp_path):
    """SIGKILL at 10 seeded random points (during start-up, inside a save, inside a step);
    after each kill the newest complete checkpoint equals the uninterrupted run's checkpoint
    of that step, and the final weights and metrics.jsonl equal the uninterrupted run's."""
    out = tmp_path / "run"
    rng = random.Random(13)
    # Inside a step, a kill loses at most one step; these modes keep the run from finishing
    # before the last kill (at most 4 steps of progress out of MAX_STEPS).
    modes = ["startup"] * 2 + ["save"] * 4 + ["step"] * 4
    rng.shuffle(modes)
    landed: Counter[str] = Counter()
    matched = 0
    for i, mode in enumerate(modes):
        resume = ["resume_from_checkpoint=latest"] if complete_checkpoints(out) else []
        log = tmp_path / f"kill{i}.log"
        start = time.time()
        proc, _ = launch(out, "save_steps=1", *resume, env={SLOW_SAVE_ENV: str(SLOW_SAVE)},
                         log=log)

        def stepped(log=log):
            return log.is_file() and "\nloss=" in "\n" + log.read_text()

        if mode == "startup":  # a random instant before the first step is logged
            wait_until(stepped, proc, rng.uniform(0.0, 1.5), must=False)
        else:
            assert wait_until(stepped, proc), log.read_text()[-3000:]
            # A step was logged: its save starts now and lasts a bit longer than SLOW_SAVE.
            delay = (rng.uniform(0.0, SLOW_SAVE) if mode == "save" else
                     rng.uniform(SLOW_SAVE + 0.1, SLOW_SAVE + 0.1 + reference["step_seconds"]))
            time.sleep(delay)
        assert proc.is_alive(), f"kill {i} ({mode}) came after the run ended"
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert proc.exitcode == -signal.SIGKILL
        fresh_partial = [p for p in partial_checkpoints(out) if p.stat().st_mtime >= start]
        landed["inside a save" if fresh_partial else
               "inside a step" if stepped() else "before the first step"] += 1
        # What a resume would start from must be a step of the uninterrupted run, bit for bit.
        done = complete_checkpoints(out)
        ok = rows(out) == reference["rows"][: len(rows(out))]
        if done:
            step = int(done[-1].name.split("-")[1])
            ok &= same_weights(weights(done[-1]), weights(reference["out"] / f"checkpoint-{step}"))
        matched += ok
    proc, log = launch(out, "save_steps=1", "resume_from_checkpoint=latest",
                       log=tmp_path / "final.log")
    proc.join(300)
    assert proc.exitcode == 0, log.read_text()[-3000:]
    final_matches = (same_weights(weights(out / "final"), reference["final"])
                     and rows(out) == reference["rows"])
    report = {"kills": sum(landed.values()), **landed, "states_matching_after_a_kill": matched,
              "final_run_matches": final_matches}
    (tmp_path / "kill_report.json").write_text(json.dumps(report, indent=1))
    if os.environ.get("CORD_KILL_REPORT"):  # where the figures of the closing note come from
        Path(os.environ["CORD_KILL_REPORT"]).write_text(json.dumps(report, indent=1))
    print("kill-anywhere:", report)
    assert report["kills"] == KILLS and landed["inside a save"] >= 1, report
    assert matched == KILLS and final_matches, report
    assert not partial_checkpoints(out)  # the final resume removed the interrupted saves


# -- SIGTERM -------------------------------------------------------------------------------------


def test_sigterm_saves_at_the_step_boundary_and_resumes_exactly(reference, tmp_path):
    out = tmp_path / "run"
    proc, log = launch(out, "save_steps=0")  # no periodic checkpoints: the stop saves one
    assert wait_until(lambda: len(rows(out)) >= 2, proc)
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(120)
    text = log.read_text()
    assert proc.exitcode == EXIT_PREEMPTED, text[-3000:]
    assert "received SIGTERM" in text and "stopped by SIGTERM" in text
    (ckpt,) = complete_checkpoints(out)
    last = rows(out)[-1]["step"]
    assert ckpt.name == f"checkpoint-{last}" and 2 <= last < MAX_STEPS
    assert not (out / "final").exists() and not partial_checkpoints(out)
    proc, log = launch(out, "save_steps=0", "resume_from_checkpoint=latest")
    proc.join(300)
    assert proc.exitcode == 0, log.read_text()[-3000:]
    assert same_weights(weights(out / "final"), reference["final"])
    assert rows(out) == reference["rows"]


def test_a_second_signal_exits_at_once(tmp_path):
    out = tmp_path / "run"
    proc, log = launch(out, "save_steps=1", env={SLOW_SAVE_ENV: "30"})
    assert wait_until(lambda: bool(partial_checkpoints(out)), proc)  # inside the first save
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(20)  # long before the 30 s save would end
    assert proc.exitcode == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert "second signal" in log.read_text() and not complete_checkpoints(out)


# -- the disk fills up ---------------------------------------------------------------------------


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    real = Accelerator.save_state
    calls = []

    def save_state(self, output_dir=None, **kw):
        calls.append(output_dir)
        if len(calls) < 2:
            return real(self, output_dir, **kw)
        (Path(output_dir) / "model.safetensors").parent.mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device", str(output_dir))

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    out = tmp_path / "run"
    argv = ARGS + [f"output_dir={out}", "max_steps=3", "save_steps=1"]
    assert cord_main(argv) == EXIT_CHECKPOINT_FAILED
    err = capsys.readouterr().err
    assert "could not save checkpoint-2" in err and "the disk is full" in err
    assert "previous checkpoint (checkpoint-1) is intact" in err
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-1"]
    assert not partial_checkpoints(out)
    monkeypatch.setattr(Accelerator, "save_state", real)
    assert cord_main(argv + ["resume_from_checkpoint=latest"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [r["step"] for r in rows(out)] == [1, 2, 3]


class _OneProcess:
    """What ``save_atomically`` uses of an Accelerator, for the file-level rules."""

    is_main_process, num_processes = True, 1

    def wait_for_everyone(self):
        pass


def _save(out, step, fail=None, limit=None):
    def write_state(path):
        path.mkdir(parents=True, exist_ok=True)
        (path / "model.safetensors").write_text("weights")
        if fail is not None:
            raise fail

    return save_atomically(_OneProcess(), out, step, write_state, lambda p: None,
                           save_total_limit=limit)


@pytest.mark.parametrize("err, says", [
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
])
def test_a_failed_save_raises_clearly_and_leaves_the_previous_one(tmp_path, err, says):
    _save(tmp_path, 1)
    with pytest.raises(CheckpointSaveError, match=f"could not save checkpoint-2: .*{says}.*"
                       r"previous checkpoint \(checkpoint-1\) is intact") as info:
        _save(tmp_path, 2, fail=err)
    assert info.value.errno == err.errno
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-1"]
    assert not partial_checkpoints(tmp_path)


def test_rotation_never_deletes_the_last_complete_checkpoint(tmp_path):
    for step in (1, 2):
        _save(tmp_path, step, limit=1)
        assert [p.name for p in complete_checkpoints(tmp_path)] == [f"checkpoint-{step}"]
    with pytest.raises(CheckpointSaveError):
        _save(tmp_path, 3, fail=OSError(errno.ENOSPC, "No space left on device"), limit=1)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-2"]


def test_latest_is_the_newest_complete_checkpoint(tmp_path):
    _save(tmp_path, 1)
    (tmp_path / "checkpoint-3.partial").mkdir()  # killed mid-save
    (tmp_path / "checkpoint-2").mkdir()  # no marker: from a killed writer of another kind
    said = []
    assert resolve_checkpoint(tmp_path, "latest", report=said.append).name == "checkpoint-1"
    assert "checkpoint-2" in said[0] and "checkpoint-3.partial" in said[0]
    assert not (tmp_path / "checkpoint-3.partial").exists()  # our own temporary: removed
    assert (tmp_path / "checkpoint-2").is_dir()  # not ours: only reported
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_checkpoint(tmp_path, tmp_path / "checkpoint-2")
    assert (tmp_path / "checkpoint-1" / COMPLETE_MARKER).is_file()


def test_trim_metrics_drops_later_rows_and_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"st')
    trim_metrics(path, 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    trim_metrics(path, 0)
    assert path.read_text() == ""


# -- bad records ---------------------------------------------------------------------------------


def _wav(path: Path, audio: np.ndarray, subtype: str | None = None) -> str:
    sf.write(path, audio, 16000, subtype=subtype)
    return path.name


@pytest.fixture
def bad_corpus(tmp_path):
    """Four good records and one of each bad kind, as a JSONL file with wav files."""
    good = [{"id": f"ok{i}", "text": f"What is {i} + 1?", "answer": str(i + 1),
             "audio": _wav(tmp_path / f"ok{i}.wav", tone_audio(f"{i} + 1", 16000))}
            for i in range(4)]
    full = tmp_path / "ok0.wav"
    (tmp_path / "truncated.wav").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    (tmp_path / "garbage.wav").write_bytes(b"this is not audio at all" * 10)
    tone = tone_audio("x", 16000)
    bad = [
        {"id": "missing", "text": "What is 1?", "answer": "1", "audio": "nope.wav"},
        {"id": "unreadable", "text": "What is 2?", "answer": "2", "audio": "garbage.wav"},
        {"id": "truncated", "text": "What is 3?", "answer": "3", "audio": "truncated.wav"},
        {"id": "nan", "text": "What is 4?", "answer": "4",
         "audio": _wav(tmp_path / "nan.wav", np.r_[tone[:100], np.nan].astype(np.float32),
                       "FLOAT")},
        {"id": "empty_audio", "text": "What is 5?", "answer": "5",
         "audio": _wav(tmp_path / "empty.wav", np.zeros(0, np.float32))},
        {"id": "empty_text", "text": "  ", "answer": "6", "audio": "ok1.wav"},
    ]
    duplicate = {"id": "ok2", "text": "What is 7?", "answer": "7", "audio": "ok3.wav"}
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good[:2] + bad + good[2:] + [duplicate]))
    return path


KINDS = {"missing": "missing audio file", "unreadable": "unreadable audio",
         "truncated": "truncated audio", "nan": "NaN/Inf audio",
         "empty_audio": "empty audio", "empty_text": "empty text", "ok2": "duplicate id"}


def _trainer_config(corpus, out, **kw):
    return CordConfig(dataset=str(corpus), output_dir=str(out), max_steps=1,
                      max_completion_length=4, num_generations=2, report_to=["none"],
                      disable_tqdm=True, seed=0, logging_steps=1, **kw)


def test_bad_records_error_fails_before_step_one(bad_corpus, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"7 of 11 records are bad .* the first is record "
                       r"'missing' \(row 2\): audio file .*nope.wav' does not exist"):
        CordTrainer(_trainer_config(bad_corpus, out))
    assert not (out / "metrics.jsonl").exists()
    listed = [json.loads(x) for x in (out / BAD_RECORDS_FILE).read_text().splitlines()]
    assert {r["id"]: r["kind"] for r in listed} == KINDS


def test_bad_records_skip_trains_on_the_rest(bad_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    t = CordTrainer(_trainer_config(bad_corpus, out, on_bad_record="skip"))
    assert sorted(t.train_dataset["id"]) == ["ok0", "ok1", "ok2", "ok3"]
    assert "skipped 7 bad record(s) of 11" in capsys.readouterr().out
    t.train()
    assert [r["step"] for r in rows(out)] == [1]
    listed = [json.loads(x) for x in (out / BAD_RECORDS_FILE).read_text().splitlines()]
    assert {r["id"]: r["kind"] for r in listed} == KINDS
    by_id = {r["id"]: r["reason"] for r in listed}
    assert "truncated" in by_id["truncated"] and "NaN" in by_id["nan"]
    assert "row 8 has the same id" in by_id["ok2"]


@pytest.mark.parametrize("limit", [1, 0.5])
def test_bad_records_beyond_the_limit_stop_the_run(bad_corpus, tmp_path, limit):
    with pytest.raises(ValueError, match=f"7 of 11 records are bad .* more than "
                       f"max_bad_records={limit} allows"):
        load_paired_checked(bad_corpus, on_bad_record="skip", max_bad_records=limit)
    assert len(load_paired_checked(bad_corpus, on_bad_record="skip", max_bad_records=7)) == 4


def test_bad_records_limit_through_cord_train(bad_corpus, tmp_path, capsys):
    code = cord_main(["train", f"dataset={bad_corpus}", f"output_dir={tmp_path / 'o'}",
                      "on_bad_record=skip", "max_bad_records=1", "report_to=none"])
    err = capsys.readouterr().err
    assert code == 2 and "more than max_bad_records=1 allows" in err, err[-500:]


def test_missing_answer_and_list_sources(tmp_path):
    records = tone_records(["What is 1 + 1?", "What is 2 + 2?", "What is 3 + 3?"])
    for r, answer in zip(records, ["2", None, ""], strict=True):
        r["answer"] = answer
    records.append({**records[0]})  # a duplicate id
    with pytest.raises(ValueError, match="record '1' .*answer is empty"):
        load_paired_checked(records, require_answer=True, output_dir=tmp_path)
    listed = [json.loads(x) for x in (tmp_path / BAD_RECORDS_FILE).read_text().splitlines()]
    assert [(r["id"], r["kind"]) for r in listed] == [
        ("1", "missing answer"), ("2", "missing answer"), ("0", "duplicate id")]
    kept = load_paired_checked(records, on_bad_record="skip", report=lambda s: None)
    assert kept["id"] == ["0", "1", "2"]  # answers are optional without require_answer


def test_bad_record_options_are_checked():
    with pytest.raises(ValueError, match="on_bad_record must be one of"):
        CordConfig(on_bad_record="ignore")
    with pytest.raises(ValueError, match="max_bad_records must be"):
        CordConfig(max_bad_records=2.5)
    with pytest.raises(ValueError, match="max_bad_records must be"):
        CordConfig(max_bad_records=-1)
    assert CordConfig(max_bad_records=0.01).max_bad_records == 0.01


# -- judge failures ------------------------------------------------------------------------------


def test_guarded_judge_turns_failures_into_unjudged():
    def broken(q, c, r):
        raise RuntimeError("CUDA out of memory")

    g = GuardedJudge(broken)
    assert g(["q"] * 2, ["a", "b"], ["a", "c"]) == [UNJUDGED, UNJUDGED]
    assert g.last_error == "RuntimeError: CUDA out of memory"
    assert GuardedJudge(lambda q, c, r: [1])(["q"] * 2, ["a", "b"], ["a", "b"]) == [-1, -1]
    assert GuardedJudge(lambda q, c, r: [1, 7])(["q"] * 2, ["a", "b"], ["a", "b"]) == [-1, -1]

    class WithMethod:
        def judge(self, q, c, r):
            return [1, -1]

    ok = GuardedJudge(WithMethod())
    assert ok(["q"] * 2, ["a", "b"], ["a", "b"]) == [1, -1]
    assert ok.pop_counts() == {"judge_errors": 0, "unjudged": 1}
    assert g.pop_counts() == {"judge_errors": 1, "unjudged": 2} and g.errors == 0
    with pytest.raises(TypeError, match="judge must be callable"):
        GuardedJudge(42)


def test_a_judge_that_raises_never_kills_a_step(tmp_path, capsys):
    def broken(q, c, r):
        raise RuntimeError("the judge model ran out of memory")

    cfg = CordConfig(objective="grpo", max_steps=2, max_completion_length=4, num_generations=2,
                     output_dir=str(tmp_path), report_to=["none"], disable_tqdm=True,
                     logging_steps=1, save_steps=0, seed=0)
    t = CordTrainer(cfg, train_dataset=tone_records(["What is 1 + 2?", "What is 2 + 2?"]),
                    judge=broken)
    t.train()
    assert [r["judge_errors"] for r in rows(tmp_path)] == [1, 1]  # one judge call per step
    assert all(r["judged_fraction"] == 0 for r in rows(tmp_path))
    assert "the judge failed 1 time(s)" in capsys.readouterr().out
