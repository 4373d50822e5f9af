"""examples/configs/collapse_guard.yaml (issue 36 D): CORD from the claim demo's shipped base at
a rate too high for it trips the collapse guard (exit 76, a line naming the metric); the same
config at 1e-5 runs to the end. Shorter than the example: fewer eval items, steps and clips."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cord.train.evaluation import EXIT_COLLAPSED

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "configs" / "collapse_guard.yaml"
SHORT = ["eval_max_samples=32", "per_device_eval_batch_size=32", "eval_steps=2",
         "max_steps=4", "report_to=[none]", "disable_tqdm=true"]


@pytest.fixture(scope="module")
def claim_data(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("claim_data", ROOT / "examples" /
                                                  "claim_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_claim_data(tmp_path_factory.mktemp("claim"), train=16, eval=32)


def train(data, out, *overrides):
    argv = ["--config", str(CONFIG), f"dataset={data['train']}",
            f"eval_dataset={data['eval']}", f"output_dir={out}", *SHORT, *overrides]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "cord.cli", "train", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return done, [r for r in rows if "eval_text_accuracy" in r]


def test_a_collapsing_run_stops_with_its_own_status(claim_data, tmp_path):
    done, rows = train(claim_data, tmp_path, "learning_rate=1e-3")
    assert done.returncode == EXIT_COLLAPSED, done.stderr[-2000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("cord: collapse at step")]
    step = rows[-1]["step"]
    metric = next(m for m in ("eval_text_accuracy", "eval_audio_accuracy") if m in line)
    assert f"step {step}:" in line and rows[0][metric] - rows[-1][metric] > 0.20
    assert "learning_rate" in line and "teacher=ema" in line
    assert f"stopped by collapse_guard=stop after step {step}" in done.stdout
    assert (tmp_path / f"checkpoint-{step}" / "checkpoint_complete.json").is_file()
    assert (tmp_path / "eval_curve.png").is_file() and not (tmp_path / "final").exists()


def test_the_same_config_at_1e_5_runs_to_the_end(claim_data, tmp_path):
    done, rows = train(claim_data, tmp_path, "learning_rate=1e-5", "eval_steps=4")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "collapse" not in done.stdout
    assert [r["step"] for r in rows] == [0, 4]
    assert done.stdout.splitlines()[-1] == f"cord train: the final model is in {tmp_path / 'final'}"
