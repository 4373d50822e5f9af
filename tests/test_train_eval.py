"""Evaluation during training (issue 36): eval_* rows at the asked steps, the holdout, the best
checkpoint, the collapse guard's rule and a resumed run's evaluation history."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cord.config import CordConfig
from cord.data.synthetic import tone_records
from cord.train.checkpoint import complete_checkpoints
from cord.train.evaluation import Evaluator, agrees, split_eval
from cord.train.trainer import CordTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
EVAL_KEYS = {"eval_audio_accuracy", "eval_text_accuracy", "eval_modality_gap",
             "eval_agreement", "eval_kl_mean", "eval_seconds", "eval_samples"}
QUESTIONS = [(1, 2), (3, 4), (5, 1), (2, 2), (6, 3), (8, 1), (4, 4), (7, 2)]


def records():
    out = tone_records([f"What is {a} + {b}?" for a, b in QUESTIONS])
    return [{**r, "answer": str(a + b)} for r, (a, b) in zip(out, QUESTIONS)]


def config(tmp_path, **kw):
    base = dict(model="tiny", objective="cord", max_steps=5, per_device_train_batch_size=1,
                max_completion_length=4, num_generations=2, learning_rate=1e-3,
                output_dir=str(tmp_path), report_to=["none"], save_steps=0, disable_tqdm=True,
                seed=0, logging_steps=1, eval_dataset="holdout", eval_holdout=0.25,
                eval_steps=2)
    base.update(kw)
    return CordConfig(**base)


def eval_rows(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval_text_accuracy" in r]


def test_eval_steps_write_the_eval_keys_at_the_asked_steps(tmp_path):
    # Every 2 steps, plus step 0 and the last step (5). The best step by the KL taken as
    # "greater is better" is step 0 (the KL falls): its checkpoint survives
    # save_total_limit=1 and output_dir/final holds its weights and names its step.
    cfg = config(tmp_path, save_steps=1, save_total_limit=1, load_best_model_at_end=True,
                 metric_for_best_model="eval_kl_mean", greater_is_better=True,
                 report_to=["tensorboard"])
    trainer = CordTrainer(cfg, train_dataset=records())
    trainer.train()
    rows = eval_rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 2, 4, 5]
    for r in rows:
        assert EVAL_KEYS <= set(r)
        assert r["eval_samples"] == 2 and 0 <= r["eval_audio_accuracy"] <= 1
        assert math.isclose(r["eval_modality_gap"],
                            rows[0]["eval_text_accuracy"] - r["eval_audio_accuracy"])
    kl = [r["eval_kl_mean"] for r in rows]
    assert kl.index(max(kl)) == 0
    info = json.loads((tmp_path / "final" / "training_info.json").read_text())
    assert info["best_model"]["step"] == 0 and info["loaded_best_model"]
    assert info["steps"] == 5
    assert {p.name for p in complete_checkpoints(tmp_path)} == {"checkpoint-0", "checkpoint-5"}
    saved = trainer.model.state_dict()  # what output_dir/final was saved from
    best, last = (load_file(tmp_path / f"checkpoint-{s}" / "model.safetensors") for s in (0, 5))
    assert len(best) > 10 and all(torch.equal(saved[k], v) for k, v in best.items())
    assert not all(torch.equal(saved[k], v) for k, v in last.items())
    assert (tmp_path / "eval_curve.png").stat().st_size > 1000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = set()
    for events in (tmp_path / "runs").rglob("events.out.tfevents.*"):
        logged |= set(EventAccumulator(str(events)).Reload().Tags()["scalars"])
    assert EVAL_KEYS - {"eval_samples"} <= logged


def test_the_holdout_is_never_trained_on_and_the_subset_is_fixed(tmp_path):
    cfg = config(tmp_path, eval_holdout=0.5, eval_max_samples=3)
    train, held = split_eval(cfg, records(), sampling_rate=16_000)
    again = split_eval(cfg, records(), sampling_rate=16_000)[1]
    assert len(train) == 4 and len(held) == 3
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    assert [r["id"] for r in held] == [r["id"] for r in again]
    plain = records()
    off = config(tmp_path, eval_steps=0, eval_dataset=None)
    assert split_eval(off, plain, sampling_rate=16_000) == (plain, None)
    unanswered = tone_records([f"say {i}" for i in range(8)])
    with pytest.raises(ValueError, match="eval_dataset=holdout: record 0 needs a non-empty "
                                         "'answer'"):
        split_eval(cfg, unanswered, sampling_rate=16_000)


class _Stop(Exception):
    pass


def test_a_resumed_run_continues_the_evaluation_history(tmp_path):
    # Killed at step 3 (between the evaluations of steps 2 and 4), resumed from
    # checkpoint-3 with "latest": the same eval_* lines as the uninterrupted run (bar wall time).
    def kill_at_3(step, trainer):
        if step == 3:
            raise _Stop

    full = config(tmp_path / "full", save_steps=1)
    CordTrainer(full, train_dataset=records()).train()
    cut = config(tmp_path / "cut", save_steps=1)
    with pytest.raises(_Stop):
        CordTrainer(cut, train_dataset=records(), on_step_end=kill_at_3).train()
    assert [r["step"] for r in eval_rows(tmp_path / "cut")] == [0, 2]
    resumed = CordTrainer(cut.replace(resume_from_checkpoint="latest"), train_dataset=records())
    resumed.train()

    def lines(out):
        return [{k: v for k, v in r.items() if k != "eval_seconds"} for r in eval_rows(out)]

    assert lines(tmp_path / "cut") == lines(tmp_path / "full")
    assert [r["step"] for r in resumed.evaluator.history] == [0, 2, 4, 5]


def _evaluator(**kw):
    cfg = CordConfig(eval_dataset="holdout", eval_steps=1, **kw)
    return Evaluator(cfg, [], accelerator=None)


def _row(step, text, audio, gap=0.0):
    return {"step": step, "eval_text_accuracy": text, "eval_audio_accuracy": audio,
            "eval_modality_gap": gap, "eval_agreement": 0.0, "eval_kl_mean": 0.0}


def test_the_guard_flags_a_drop_of_more_than_the_margin_once_per_metric():
    ev = _evaluator(collapse_text_drop=10)
    ev.history = [_row(0, 0.70, 0.30)]
    assert ev.collapsed(_row(2, 0.61, 0.25)) == []  # 9 and 5 points: within the margin
    (line,) = ev.collapsed(_row(4, 0.55, 0.25))
    assert "eval_text_accuracy is 55.0%" in line and "step 0's 70.0%" in line
    assert "step 4" in line and "learning_rate" in line and "teacher=ema" in line
    (line,) = ev.collapsed(_row(6, 0.10, 0.10))  # text already flagged: audio only
    assert "eval_audio_accuracy" in line


@pytest.mark.parametrize("metric, greater, values, best", [
    ("eval_modality_gap", None, [0.4, 0.3, 0.35], 1),   # inferred: smaller is better
    ("eval_text_accuracy", None, [0.4, 0.6, 0.6], 1),   # inferred: larger; a tie keeps the first
    ("eval_text_accuracy", False, [0.4, 0.6, 0.3], 2),  # greater_is_better given
])
def test_the_best_step_follows_the_metric_and_its_sense(metric, greater, values, best):
    ev = _evaluator(metric_for_best_model=metric, greater_is_better=greater)
    key = metric
    for step, v in enumerate(values):
        ev.is_best({**_row(step, 0.5, 0.5), key: v})
    assert ev.best["step"] == best


def test_agreement_compares_the_audio_answer_with_the_text_answer():
    item = {"kind": "math", "text_response": "the answer is 12", "audio_response": "12"}
    assert agrees(item)
    assert not agrees({**item, "audio_response": "13"})
    assert not agrees({**item, "text_response": "no idea"})


@pytest.mark.parametrize("distributed", ["accelerate", "fsdp2"])
def test_two_processes_evaluate_like_one(tmp_path, distributed):
    # Sharded evaluation (3 items over 2 processes: one padded) gives the rows of one process
    # with the same global batch, under DDP and under FSDP2 (whose forwards are collective).
    import soundfile as sf
    from helpers import launch_cpu_train

    from cord.data.synthetic import tone_audio

    for name, items in (("train", QUESTIONS[:4]), ("eval", QUESTIONS[4:7])):
        lines = []
        for a, b in items:
            text = f"What is {a} + {b}?"
            sf.write(tmp_path / f"{name}{a}{b}.wav", tone_audio(text, 16000), 16000,
                     subtype="FLOAT")
            lines.append(json.dumps({"id": f"{name}{a}{b}", "text": text,
                                     "audio": f"{name}{a}{b}.wav", "answer": str(a + b)}))
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    options = [f"dataset={tmp_path / 'train.jsonl'}", f"eval_dataset={tmp_path / 'eval.jsonl'}",
               "eval_steps=1", "max_steps=1", "objective=cord", "cord_seq_weight=0",
               "judge=none", "temperature=0", "max_completion_length=4", "learning_rate=1e-3",
               "report_to=none", "save_steps=0", "disable_tqdm=true", "seed=0",
               "per_device_eval_batch_size=1", f"distributed={distributed}"]
    proc = launch_cpu_train(ROOT, tmp_path, [f"output_dir={tmp_path / 'two'}",
                                             "per_device_train_batch_size=1", *options])
    assert proc.returncode == 0, proc.output
    one = CordConfig.from_yaml(None, [f"output_dir={tmp_path / 'one'}",
                                      "per_device_train_batch_size=2", *options])
    CordTrainer(one).train()
    two, one = eval_rows(tmp_path / "two"), eval_rows(tmp_path / "one")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [0, 1]
    for a, b in zip(one, two):
        assert a["eval_samples"] == b["eval_samples"] == 3
        for key in ("eval_audio_accuracy", "eval_text_accuracy", "eval_agreement"):
            assert a[key] == b[key], key
        assert a["eval_kl_mean"] == pytest.approx(b["eval_kl_mean"], rel=1e-3)
