"""`cord train`'s first contact (issue 37 items 4 and 6; issue 36's options in --help): every
check that needs no model or data answers before torch loads, in one line naming the argument,
with exit status 2; did-you-mean for every option with a fixed set of values; `cord --version`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cord
from cord.config import EVAL_METRICS, CordConfig, kernel_default

ROOT = Path(__file__).resolve().parents[1]
NEW_OPTIONS = ("eval_dataset", "eval_holdout", "eval_steps", "eval_max_samples",
               "per_device_eval_batch_size", "metric_for_best_model", "greater_is_better",
               "load_best_model_at_end", "collapse_guard", "collapse_text_drop")
_PROBE = ("import sys; from cord.cli import main; code = main(sys.argv[1:]); "
          "print('TORCH', 'torch' in sys.modules); sys.exit(code)")


def cord_cli(*argv, cwd=ROOT):
    """(status, stdout, stderr, seconds) of ``cord argv`` in a fresh interpreter."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - start


def test_help_lists_the_evaluation_options_with_their_help():
    done = subprocess.run([sys.executable, "-m", "cord.cli", "train", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    text = " ".join(done.stdout.split())
    for name in NEW_OPTIONS:
        assert f"--{name} " in text, name
    assert "the evaluation metric that picks the best checkpoint" in text
    assert '"warn" (one line), "stop" (checkpoint, exit 76) or "off"' in text


@pytest.fixture()
def folders(tmp_path):
    for name in ("empty_model", "empty_data", "out"):
        (tmp_path / name).mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not a dataset")
    return tmp_path


@pytest.mark.parametrize("argv, says", [
    (["model={t}/empty_model"], "model '{t}/empty_model' holds no config.json"),
    (["resume_from_checkpoint=latest", "output_dir={t}/out"],
     "resume_from_checkpoint='latest' but {t}/out holds no checkpoint"),
    (["resume_from_checkpoint={t}/out/checkpoint-3"],
     "resume_from_checkpoint: no checkpoint directory at {t}/out/checkpoint-3"),
    (["dataset={t}/empty_data"], "dataset '{t}/empty_data' is an empty folder"),
    (["dataset={t}/junk"], "dataset '{t}/junk' is not a saved dataset folder"),
    (["eval_dataset={t}/missing.jsonl", "eval_steps=2"],
     "eval_dataset '{t}/missing.jsonl' does not exist"),
    (["objective=crod"], "got 'crod' (did you mean 'cord'?)"),
    (["collapse_guard=stpo", "eval_dataset=holdout", "eval_steps=2"],
     "collapse_guard must be one of ['warn', 'stop', 'off'], got 'stpo' (did you mean 'stop'?)"),
    (["metric_for_best_model=eval_gap", "eval_dataset=holdout", "eval_steps=2"],
     "(did you mean 'eval_modality_gap'?)"),
    (["lr_scheduler_type=cosin"], "(did you mean 'cosine'?)"),
    (["report_to=[tensorbord]"], "(did you mean 'tensorboard'?)"),
    (["dataset=arithmetc"], "dataset 'arithmetc' does not exist (did you mean 'arithmetic'?)"),
    (["eval_steps=5"], 'eval_steps needs eval_dataset (a paired file or "holdout")'),
    (["cord_top_k=-1"], "cord_top_k must be >= 0, got -1"),
])
def test_each_probe_is_one_line_naming_the_argument_before_torch(folders, argv, says):
    code, out, err, seconds = cord_cli("train", *[a.format(t=folders) for a in argv])
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("cord train: error: ") and says.format(t=folders) in line
    assert "TORCH False" in out
    assert seconds < 10  # 0.45-0.62 s on a loaded 2-core machine; generous for CI


def test_a_mistyped_command_gets_a_suggestion():
    code, out, err, seconds = cord_cli("trian", "max_steps=1")
    assert code == 2 and err.strip() == ("cord: error: unknown command 'trian' (did you mean "
                                         "train?); `cord --help` lists the commands")
    code, out, err, seconds = cord_cli("train", "model=tinyy")
    assert code == 2 and "model 'tinyy' does not exist (did you mean 'tiny'?)" in err


def test_names_are_case_insensitive_where_unambiguous():
    cfg = CordConfig(objective="CORD", teacher="EMA", collapse_guard="Stop", eval_steps=1,
                     eval_dataset="holdout", report_to=["TensorBoard"])
    assert (cfg.objective, cfg.teacher, cfg.collapse_guard, cfg.report_to) == (
        "cord", "ema", "stop", ["tensorboard"])
    cfg = CordConfig(model="Tiny", dataset="Arithmetic", eval_dataset="HOLDOUT", eval_steps=1)
    assert (cfg.model, cfg.dataset, cfg.eval_dataset) == ("tiny", "arithmetic", "holdout")
    with pytest.raises(TypeError, match=r"bf16 must be true or false, got 'ture' \(did you mean "
                                        r"true\?\)"):
        CordConfig(bf16="ture")


def test_version():
    done = subprocess.run([sys.executable, "-m", "cord.cli", "--version"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == f"cord {cord.__version__}"


def test_cord_top_k_takes_the_kernels_default_and_bound():
    from cord_kernels.core.options import TOP_K, LossOptions

    assert kernel_default("TOP_K") == TOP_K == CordConfig().cord_top_k
    assert CordConfig(cord_top_k=0).cord_top_k == LossOptions.check(top_k=0).top_k == 0
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        LossOptions.check(top_k=-1)
    with pytest.raises(ValueError, match="cord_top_k must be >= 0"):
        CordConfig(cord_top_k=-1)


def test_evaluation_options_are_checked():
    assert CordConfig().guard == "off"
    assert CordConfig(eval_dataset="holdout", eval_steps=5).guard == "warn"
    assert set(EVAL_METRICS) >= {"eval_modality_gap", "eval_audio_accuracy"}
    for bad, says in [({"eval_holdout": 1.0}, "eval_holdout must be in (0, 1)"),
                      ({"eval_max_samples": 0}, "eval_max_samples must be >= 1"),
                      ({"load_best_model_at_end": True}, "load_best_model_at_end needs"),
                      ({"collapse_guard": "stop"}, "collapse_guard='stop' needs eval_steps")]:
        with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
            CordConfig(**bad)
