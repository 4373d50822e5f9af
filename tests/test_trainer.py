"""The training loop: exact resume, the NaN/Inf guard, accumulation, metrics and their logs."""

from __future__ import annotations

import json
import math

import pytest
import torch

import cord.train.trainer as trainer_mod
from cord.config import CordConfig
from cord.data.synthetic import tone_records
from cord.train.metrics import is_finite, kl_stats, mean_metrics, reward_stats, tokens_per_second
from cord.train.trainer import CordTrainer, TrainerState, train

TEXTS = [f"What is {a} + {b}?" for a, b in [(1, 2), (3, 4), (5, 1), (2, 2), (6, 3), (8, 1)]]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def records(texts=TEXTS):
    return tone_records(texts)


def alternating_judge(questions, candidates, references):
    return [1 - i % 2 for i in range(len(candidates))]


def config(tmp_path, **kw):
    base = dict(model="tiny", objective="cord", max_steps=3, per_device_train_batch_size=1,
                gradient_accumulation_steps=2, max_completion_length=5, num_generations=2,
                learning_rate=1e-3, output_dir=str(tmp_path), report_to=["none"],
                save_steps=0, disable_tqdm=True, seed=0, logging_steps=1)
    base.update(kw)
    return CordConfig(**base)


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def run(cfg, **kw):
    t = CordTrainer(cfg, train_dataset=records(), judge=alternating_judge, **kw)
    t.train()
    return t


@pytest.mark.parametrize("teacher", ["live", "ema"])
def test_resume_gives_the_same_next_step(tmp_path, teacher):
    # Sampled rollouts (temperature 1 and 1.5), AdamW state, accumulation over 2 micro-batches
    # (and the EMA teacher's weights): step 3 after a resume from step 2 must be the step 3 of
    # the uninterrupted run.
    full = run(config(tmp_path / "full", save_steps=2, teacher=teacher, teacher_ema_decay=0.5))
    assert (tmp_path / "full" / "checkpoint-2").is_dir()
    resumed = run(config(tmp_path / "resumed", teacher=teacher, teacher_ema_decay=0.5,
                         resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2")))
    a, b = full.log_history[-1], resumed.log_history[-1]
    assert a["step"] == b["step"] == 3 and len(resumed.log_history) == 1
    for key in ("loss", "l_tok", "l_seq", "kl_mean", "grad_norm"):
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    pa, pb = params(full.model), params(resumed.model)
    for n in pa:
        torch.testing.assert_close(pa[n], pb[n], rtol=0, atol=1e-7)
    if teacher == "ema":
        ea = dict(full.teacher.frozen.named_parameters())
        for n, p in resumed.teacher.frozen.named_parameters():
            torch.testing.assert_close(p, ea[n], rtol=0, atol=1e-7)
    state = json.loads((tmp_path / "full" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["batches_in_epoch"] == 4


def test_resume_latest_and_missing_checkpoint(tmp_path):
    run(config(tmp_path, max_steps=1))
    t = CordTrainer(config(tmp_path, max_steps=2, resume_from_checkpoint="latest"),
                    train_dataset=records(), judge=alternating_judge)
    m = t.train()
    assert m["step"] == 2 and len(t.log_history) == 1
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        CordTrainer(config(tmp_path / "empty", resume_from_checkpoint="latest"),
                    train_dataset=records(), judge=alternating_judge).train()


def test_nan_guard_skips_and_reports_the_step(tmp_path, monkeypatch):
    real = trainer_mod.compute_loss
    calls = {"n": 0}

    def poisoned(ctx, batch):
        calls["n"] += 1
        out = real(ctx, batch)
        if calls["n"] == 3:  # first micro-batch of step 2
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer_mod, "compute_loss", poisoned)
    t = CordTrainer(config(tmp_path, objective="opd"), train_dataset=records(), judge=None)
    snaps = []
    t.teacher.update = lambda: snaps.append(params(t.model))  # after each applied step
    t.train()
    assert t.state.skipped_steps == 1 and len(snaps) == 2  # steps 1 and 3 applied
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in log] == [False, True, False]
    assert log[1]["loss"] is None or not math.isfinite(log[1]["loss"])
    assert all(math.isfinite(p.abs().sum()) for p in params(t.model).values())


def test_accumulation_equals_a_bigger_batch(tmp_path):
    # Greedy rollouts and same-length prompts: 2 micro-batches of 1 == 1 batch of 2.
    texts = ["What is 1 + 2?", "What is 3 + 4?"]
    out = []
    for bs, ga in ((1, 2), (2, 1)):
        cfg = config(tmp_path / f"{bs}x{ga}", objective="fkl", temperature=0.0, max_steps=1,
                     per_device_train_batch_size=bs, gradient_accumulation_steps=ga)
        t = CordTrainer(cfg, train_dataset=records(texts), judge=None)
        m = t.train()
        out.append((m, params(t.model)))
    (m1, p1), (m2, p2) = out
    # Small KLs of close distributions: batched matmuls differ in the last bits.
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-3)
    assert m1["grad_norm"] == pytest.approx(m2["grad_norm"], rel=1e-4)
    # Adam's first step is ~lr * sign(g): a tenth of lr bounds last-bit gradient differences.
    for n in p1:
        torch.testing.assert_close(p1[n], p2[n], rtol=0, atol=1e-4)


def test_train_function_logs_everywhere(tmp_path):
    cfg = config(tmp_path, max_steps=2, gradient_accumulation_steps=1,
                 report_to=["tensorboard"], logging_steps=1, save_total_limit=1, save_steps=1)
    m = train(cfg, train_dataset=records(), judge=alternating_judge)
    for key in ("loss", "l_tok", "l_seq", "kl_mean", "kl_p80", "reward", "agreement",
                "tokens_per_second", "grad_norm", "learning_rate", "step"):
        assert key in m, key
    assert m["tokens_per_second"] > 0 and m["learning_rate"] == pytest.approx(1e-3)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert list((tmp_path / "runs").rglob("events.out.tfevents*"))
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-2"]  # limit 1
    assert (tmp_path / "final" / "config.json").is_file()
    assert (tmp_path / "cord_config.yaml").is_file()


def test_logging_window_averages_its_steps(tmp_path, monkeypatch, capsys):
    cfg = config(tmp_path, objective="opd", max_steps=4, gradient_accumulation_steps=1,
                 logging_steps=2)
    t = CordTrainer(cfg, train_dataset=records(), judge=None)
    seen = []
    real = trainer_mod.compute_loss

    def spy(ctx, batch):
        out = real(ctx, batch)
        seen.append(float(out.loss.detach()))
        return out

    monkeypatch.setattr(trainer_mod, "compute_loss", spy)
    t.train()
    assert [m["step"] for m in t.log_history] == [2, 4]
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("loss=")]
    assert len(printed) == 2 and "step=2 " in printed[0]  # one line per window, not per step
    assert t.log_history[0]["loss"] == pytest.approx((seen[0] + seen[1]) / 2, rel=1e-6)
    assert t.log_history[1]["loss"] == pytest.approx((seen[2] + seen[3]) / 2, rel=1e-6)


def test_trainer_rejects_bad_setups(tmp_path):
    with pytest.raises(TypeError, match="CordConfig"):
        CordTrainer({"objective": "cord"})
    with pytest.raises(ValueError, match="judge"):
        CordTrainer(config(tmp_path, objective="grpo", judge="none"), train_dataset=records())
    with pytest.raises(ValueError, match="empty"):
        CordTrainer(config(tmp_path, objective="sft"), train_dataset=[], judge=None)
    with pytest.raises(ValueError, match="model .* is not a directory"):
        CordTrainer(config(tmp_path, model=str(tmp_path / "nope")), train_dataset=records())
    with pytest.raises(ValueError, match="dataset .* does not exist"):  # before the model
        CordTrainer(config(tmp_path, dataset=str(tmp_path / "nope.jsonl")))


def test_trainer_state_round_trip():
    s = TrainerState(global_step=5, epoch=1, batches_in_epoch=3)
    t = TrainerState()
    t.load_state_dict(s.state_dict())
    assert t == s


# -- metrics (pure functions) ------------------------------------------------------------------


def test_kl_stats_mean_and_p80_over_valid_tokens():
    kl = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.4, 0.5, 7.0, 8.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    out = kl_stats(kl, mask)
    valid = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    assert out["kl_mean"] == pytest.approx(0.3)
    assert out["kl_p80"] == pytest.approx(float(torch.quantile(valid, 0.8)))
    empty = kl_stats(kl, torch.zeros_like(mask))
    assert math.isnan(empty["kl_mean"]) and math.isnan(empty["kl_p80"])
    with pytest.raises(ValueError, match="shape"):
        kl_stats(kl, mask[:, :2])


def test_reward_stats_count_unjudged_as_zero_or_skip_them():
    r = torch.tensor([1.0, 0.0, float("nan"), 1.0])
    skip = reward_stats(r, unjudged="skip")
    assert skip["reward"] == pytest.approx(2 / 3) and skip["judged_fraction"] == 0.75
    assert reward_stats(r) == {"reward": 0.5, "judged_fraction": 0.75}  # "zero", the default
    assert math.isnan(reward_stats([float("nan")], unjudged="skip")["reward"])
    assert reward_stats([float("nan")])["reward"] == 0.0
    with pytest.raises(ValueError, match="unjudged"):
        reward_stats(r, unjudged="nan")


def test_mean_metrics_tokens_per_second_and_finiteness():
    out = mean_metrics([{"a": 1.0, "b": float("nan")}, {"a": 3.0, "b": 2.0}, {"c": 5.0}])
    assert out == {"a": 2.0, "b": 2.0, "c": 5.0}
    assert tokens_per_second(100, 4.0) == 25.0 and math.isnan(tokens_per_second(1, 0.0))
    with pytest.raises(ValueError, match="num_tokens"):
        tokens_per_second(-1, 1.0)
    assert is_finite(1.0) and not is_finite(float("inf"))
    assert not is_finite(torch.tensor([1.0, float("nan")]))


def test_cli_trains_the_tiny_model_on_a_synthesized_dataset(tmp_path, capsys):
    # No --config: model=tiny, dataset=arithmetic with eSpeak NG audio, the match judge.
    from cord.cli import main

    code = main(["train", "--max_steps", "2", "dataset_size=2", "--max_completion_length=4",
                 "num_generations=2", f"output_dir={tmp_path}", "report_to=none",
                 "disable_tqdm=true"])
    assert code == 0
    out = capsys.readouterr().out
    assert "cord: cord for 2 steps on 1 process, CPU" in out and "final: loss=" in out
    assert out.splitlines()[-1] == f"cord train: the final model is in {tmp_path / 'final'}"
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # logging_steps defaults to 10: a 2-step run logs its last step only
    assert [r["step"] for r in rows] == [2] and rows[-1]["completion_length"] > 0


def test_a_judge_that_raises_never_kills_a_step(tmp_path, capsys):
    def broken(q, c, r):
        raise RuntimeError("the judge model ran out of memory")

    cfg = CordConfig(objective="grpo", max_steps=2, max_completion_length=4, num_generations=2,
                     output_dir=str(tmp_path), report_to=["none"], disable_tqdm=True,
                     logging_steps=1, save_steps=0, seed=0)
    t = CordTrainer(cfg, train_dataset=tone_records(["What is 1 + 2?", "What is 2 + 2?"]),
                    judge=broken)
    t.train()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["judge_errors"] for r in rows] == [1, 1]  # one judge call per step
    assert all(r["judged_fraction"] == 0 for r in rows)
    assert "the judge failed 1 time(s)" in capsys.readouterr().out
