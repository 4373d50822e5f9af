"""Checkpoints (``cord.train.checkpoint``): kill-anywhere resume, a full disk, atomic saves,
rotation, ``latest`` and the metrics trim on resume.

The process-level tests run ``cord train`` in child processes (``child_runs.py``).
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from accelerate import Accelerator
from child_runs import ARGS, launch, rows, same_weights, wait_until, weights

from cord.cli import main as cord_main
from cord.train.checkpoint import (
    COMPLETE_MARKER,
    EXIT_CHECKPOINT_FAILED,
    CheckpointSaveError,
    complete_checkpoints,
    partial_checkpoints,
    resolve_checkpoint,
    save_atomically,
    trim_metrics,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KILLS = 10
SLOW_SAVE = 0.4  # seconds every save of a killed run spends between its state and its marker


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
        proc, _ = launch(out, "save_steps=1", *resume, slow_save=SLOW_SAVE, log=log)

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
