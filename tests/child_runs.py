"""``cord train`` in child processes, for the tests that kill, signal and resume runs
(``test_checkpoint.py``, ``test_preempt.py``).

The children are forked from a ``forkserver`` that has imported torch, transformers and the
trainer once, so each kill and resume costs the tiny model's build and its steps, not seconds
of imports. Faults are injected by patching functions in the child (:func:`slow_saves`); the
library carries no test hooks.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from cord.cli import main as cord_main

MAX_STEPS = 6
#: The smallest run that still exercises everything: tone audio, the CORD objective with its
#: GRPO groups and the match judge, AdamW, one checkpoint per step.
ARGS = ["train", "dataset=arithmetic", "dataset_audio=tone", "dataset_size=4",
        f"max_steps={MAX_STEPS}", "max_completion_length=4", "num_generations=2",
        "logging_steps=1", "report_to=none", "disable_tqdm=true", "seed=0",
        "learning_rate=1e-3"]
TIMING = ("tokens_per_second", "step_seconds")  # wall-clock figures differ from run to run

_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(["cord.cli", "cord.train.cli", "cord.train.trainer"])


def slow_saves(seconds: float) -> None:
    """Fault injection for this process: every checkpoint save sleeps ``seconds`` after its
    state and extras are written and before its completion marker, so that a kill can land
    inside a save. Patches the trainer's ``save_atomically`` (for a child that then exits)."""
    import cord.train.trainer as trainer

    real = trainer.save_atomically

    def save_atomically(accelerator, output_dir, step, write_state, write_extra, **kwargs):
        def write_extra_slowly(path):
            write_extra(path)
            time.sleep(seconds)

        return real(accelerator, output_dir, step, write_state, write_extra_slowly, **kwargs)

    trainer.save_atomically = save_atomically


def _child(argv: list[str], slow_save: float, log: str) -> None:
    """Runs ``cord <argv>`` in a forked child, output line-buffered into ``log``."""
    if slow_save:
        slow_saves(slow_save)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.exit(cord_main(argv))


def launch(out: Path, *extra: str, slow_save: float = 0.0, log: Path | None = None):
    """Starts ``cord train`` (:data:`ARGS` and ``extra``) writing to ``out``; ``slow_save``:
    seconds each save spends between its state and its marker (:func:`slow_saves`)."""
    log = log or out.with_name(out.name + ".log")
    proc = _CTX.Process(target=_child, args=(ARGS + [f"output_dir={out}", *extra], slow_save,
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


def reference_run(out: Path) -> dict:
    """The uninterrupted run: its metrics rows, final weights, a checkpoint per step."""
    proc, log = launch(out, "save_steps=1")
    proc.join(300)
    assert proc.exitcode == 0, log.read_text()[-3000:]
    steps = [r["step_seconds"] for r in map(json.loads, (out / "metrics.jsonl").open())]
    return {"out": out, "rows": rows(out), "final": weights(out / "final"),
            "step_seconds": statistics.median(steps)}
