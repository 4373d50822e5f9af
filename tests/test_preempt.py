"""Stopping on a signal (``cord.train.preempt``): SIGTERM saves at the step boundary and the
run resumes exactly; a second signal exits at once. Runs ``cord train`` in child processes
(``child_runs.py``).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from child_runs import MAX_STEPS, launch, rows, same_weights, wait_until, weights

from cord.train.checkpoint import EXIT_PREEMPTED, complete_checkpoints, partial_checkpoints

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    proc, log = launch(out, "save_steps=1", slow_save=30)
    assert wait_until(lambda: bool(partial_checkpoints(out)), proc)  # inside the first save
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(20)  # long before the 30 s save would end
    assert proc.exitcode == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert "second signal" in log.read_text() and not complete_checkpoints(out)
