"""Every objective end to end on the tiny model: it trains (parameters move), losses are the
ones the paper defines, the teacher gets no gradient."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import cord_kernels
from cord.config import CordConfig
from cord.data.paired import PairedBatch, collate_paired
from cord.data.synthetic import tone_audio, tone_records
from cord.models import rollout
from cord.models.adapter import Qwen2AudioAdapter
from cord.models.rollout import sample
from cord.models.tiny import build_tiny_qwen2_audio
from cord.train import objectives
from cord.train.metrics import agreement_stats
from cord.train.objectives import OBJECTIVES, StepContext, compute_loss, judge_rewards
from cord.train.teacher import Teacher
from cord.train.trainer import CordTrainer

TEXTS = ["What is 1 + 2?", "What is 3 * 4?", "What is 9 - 5?", "What is 7 + 7?"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def records(texts=TEXTS):
    return tone_records(texts)


class AlternatingJudge:
    """Hand-made verdicts 1, 0, 1, 0, ...: every GRPO group of 2 gets advantages +-0.5."""

    def __init__(self):
        self.calls = []

    def __call__(self, questions, candidates, references):
        self.calls.append((list(questions), list(candidates), list(references)))
        return [1 - i % 2 for i in range(len(candidates))]


def tiny_config(tmp_path, **kw):
    base = dict(model="tiny", max_steps=2, per_device_train_batch_size=2,
                max_completion_length=6, num_generations=2, learning_rate=1e-3,
                output_dir=str(tmp_path), report_to=["none"], save_steps=0,
                disable_tqdm=True, seed=0, logging_steps=1)
    base.update(kw)
    return CordConfig(**base)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_each_objective_trains_two_steps(tmp_path, objective):
    judge = AlternatingJudge()
    config = tiny_config(tmp_path, objective=objective)
    data = records()
    if objective == "sft_gold":  # imitates the dataset's reference answers
        data = [{**r, "answer": f"the answer is {i}"} for i, r in enumerate(data)]
    trainer = CordTrainer(config, train_dataset=data, judge=judge)
    before = snapshot(trainer.model)
    metrics = trainer.train()
    after = snapshot(trainer.model)
    assert metrics["step"] == 2 and not metrics["skipped"]
    assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed, "no parameter moved"
    # The language model and the audio side both learn (SFT targets reach the audio encoder
    # through the audio prompt); ALARM trains the audio side only.
    assert any("language_model" in n for n in changed) is (objective != "alarm")
    assert any("audio_tower" in n or "multi_modal_projector" in n for n in changed)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    if objective in ("cord", "grpo", "grpo_opd"):
        assert judge.calls and metrics["reward"] == pytest.approx(0.5)
        assert metrics["l_seq"] != 0.0
    if objective in ("cord", "opd", "grpo_opd"):
        assert metrics["kl_mean"] >= 0 and metrics["kl_p80"] >= 0
    if objective == "fkl":
        assert 0 <= metrics["fkl_mean"] <= metrics["l_fkl"]


def test_gold_sft_needs_answers_and_is_the_nll_of_them(tmp_path):
    trainer = CordTrainer(tiny_config(tmp_path, objective="sft_gold", max_steps=1),
                          train_dataset=records())
    with pytest.raises(ValueError, match="'answer' column"):
        trainer.train()
    from cord.data.paired import collate_paired
    from cord.train.objectives import StepContext, compute_loss
    from cord.train.teacher import Teacher

    data = [{**r, "answer": "seven plus two"} for r in records()[:2]]
    adapter = trainer.adapter
    ctx = StepContext(adapter, Teacher("live", adapter), trainer.config)
    batch = collate_paired(data)
    out = compute_loss(ctx, batch)
    ids = adapter.tokenizer("seven plus two", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ids + [adapter.eos_token_ids[0]]] * 2)
    x_a = adapter.audio_prompts(batch.audios, sampling_rate=batch.sampling_rate)
    logits = adapter.completion_logits(x_a, ids, torch.ones_like(ids, dtype=torch.bool))
    nll = -torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None]).sum() / 2
    assert float(out.loss) == pytest.approx(float(nll), rel=1e-4)


def test_opd_is_the_uniform_reverse_kl(tmp_path):
    # OPD: L_tok = sum_t D_t / B = mean D * mean completion length (uniform weights).
    trainer = CordTrainer(tiny_config(tmp_path, objective="opd", max_steps=1),
                          train_dataset=records(), judge=None)
    m = trainer.train()
    assert m["l_tok"] == pytest.approx(m["kl_mean"] * m["completion_length"], rel=1e-4)


def test_cord_weights_raise_the_token_loss_over_opd(tmp_path):
    # Same rollouts (greedy), same model: alpha = beta = 2 weights every token by >= 1.
    out = {}
    for objective in ("opd", "cord"):
        cfg = tiny_config(tmp_path / objective, objective=objective, temperature=0.0,
                          cord_seq_weight=0.0, max_steps=1, learning_rate=1e-9)
        out[objective] = CordTrainer(cfg, train_dataset=records(), judge=None).train()
    assert out["cord"]["kl_mean"] == pytest.approx(out["opd"]["kl_mean"], rel=1e-5)
    assert out["opd"]["l_tok"] < out["cord"]["l_tok"] <= 4 * out["opd"]["l_tok"]


@pytest.mark.parametrize("kind", ["base", "ema"])
def test_frozen_teachers_get_no_gradient(tmp_path, kind):
    trainer = CordTrainer(tiny_config(tmp_path, objective="cord", teacher=kind,
                                      teacher_ema_decay=0.5),
                          train_dataset=records(), judge=AlternatingJudge())
    frozen_before = {n: p.clone() for n, p in trainer.teacher.frozen.named_parameters()}
    student_before = snapshot(trainer.model)
    trainer.train()
    student_after = snapshot(trainer.model)
    for name, p in trainer.teacher.frozen.named_parameters():
        assert p.grad is None and not p.requires_grad
        if kind == "base":
            assert torch.equal(p, frozen_before[name])
    if kind == "ema":  # ema = d * ema + (1 - d) * student after each step, d = 0.5
        name = "lm_head.weight"
        s0, s2 = student_before[name], student_after[name]
        ema = dict(trainer.teacher.frozen.named_parameters())[name]
        assert not torch.equal(ema, frozen_before[name])
        # Between the initial and the current student weights.
        lo, hi = torch.minimum(s0, s2) - 1e-3, torch.maximum(s0, s2) + 1e-3
        assert ((ema >= lo) & (ema <= hi)).float().mean() > 0.95


def test_live_teacher_pass_carries_no_gradient():
    model, processor = build_tiny_qwen2_audio(seed=0)
    adapter = Qwen2AudioAdapter(model, processor)
    teacher = Teacher("live", adapter)
    x_a = adapter.audio_prompts([tone_audio(t, 16000) for t in TEXTS[:2]], sampling_rate=16000)
    x_t = adapter.text_prompts(TEXTS[:2])
    ids = torch.randint(10, 500, (2, 5))
    mask = torch.ones_like(ids, dtype=torch.bool)
    s = adapter.completion_logits(x_a, ids, mask)
    u = teacher.completion_logits(x_t, ids, mask)
    assert not u.requires_grad
    loss = cord_kernels.cord_token_loss(s, u, mask)
    (g_s,) = torch.autograd.grad(loss, s, retain_graph=True)
    # The gradient wrt the student logits is the reverse-KL one with q held constant.
    s_ = s.detach().requires_grad_(True)
    ref = cord_kernels.cord_token_loss(s_, u.clone(), mask, impl="torch")
    (g_ref,) = torch.autograd.grad(ref, s_)
    torch.testing.assert_close(g_s, g_ref, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="teacher"):
        Teacher("frozen", adapter)


def test_judge_rewards_map_unjudged_to_nan():
    ctx = StepContext(adapter=None, teacher=None, config=CordConfig(), judge=lambda q, c, r: [
        1, 0, -1])
    r = judge_rewards(ctx, ["q"] * 3, ["a", "b", "c"], ["x"] * 3)
    assert r[:2].tolist() == [1.0, 0.0] and math.isnan(r[2])
    bad = StepContext(None, None, CordConfig(), judge=lambda q, c, r: [2, 0, 1])
    with pytest.raises(ValueError, match="verdicts"):
        judge_rewards(bad, ["q"] * 3, ["a", "b", "c"], ["x"] * 3)
    none = StepContext(None, None, CordConfig(), judge=None)
    with pytest.raises(ValueError, match="judge"):
        judge_rewards(none, ["q"], ["a"], ["x"])


def test_alarm_rephrases_the_text_answer_before_sft(tmp_path):
    cfg = tiny_config(tmp_path, objective="alarm", max_steps=1,
                      alarm_rephrase_prompt="Say it as if heard: {answer}")
    trainer = CordTrainer(cfg, train_dataset=records(), judge=None)
    seen = []
    original = trainer.adapter.text_prompts

    def spy(texts, **kw):
        seen.extend(texts)
        return original(texts, **kw)

    trainer.ctx.teacher._student.text_prompts = spy
    m = trainer.train()
    rephrase_asks = [t for t in seen if t.startswith("Say it as if heard: ")]
    assert len(rephrase_asks) == 2 and m["first_answer_length"] > 0


def test_compute_loss_takes_the_one_paired_batch():
    b = collate_paired(records(TEXTS[:2]))
    assert isinstance(b, PairedBatch)
    assert b.texts == TEXTS[:2] and b.ids == ["0", "1"] and b.sampling_rate == 16000
    assert len(b) == 2 and b.audios[0].dtype == np.float32
    ctx = StepContext(adapter=None, teacher=None, config=CordConfig(), judge=None)
    with pytest.raises(TypeError, match="PairedBatch"):
        compute_loss(ctx, records(TEXTS[:2]))  # raw records: collate them first
    # cord needs a judge for L_seq; the registry says so before any rollout is sampled
    with pytest.raises(ValueError, match="needs a judge"):
        compute_loss(ctx, b)


def test_registry_rules_follow_the_config():
    seq = CordConfig(objective="cord")
    no_seq = CordConfig(objective="cord", cord_seq_weight=0.0, num_generations=1)
    cord = OBJECTIVES["cord"]
    assert cord.needs_judge(seq) and cord.needs_groups(seq)
    assert not cord.needs_judge(no_seq) and not cord.needs_groups(no_seq)
    for name in ("grpo", "grpo_opd"):  # the ladder's rows (ii) and (iii) always have L_seq
        assert OBJECTIVES[name].needs_groups(no_seq) and OBJECTIVES[name].needs_judge(no_seq)
    with pytest.raises(ValueError, match="objective='opd'"):
        CordConfig(objective="grpo_opd", cord_seq_weight=0.0)
    assert list(OBJECTIVES)[:3] == ["grpo", "grpo_opd", "cord"]  # Table 3: (ii), (iii), (iv)
    assert {o.trainable for o in OBJECTIVES.values() if o.name != "alarm"} == {"all"}
    assert OBJECTIVES["alarm"].trainable == "audio"
    for name in ("opd", "sft", "fkl", "alarm"):
        assert not OBJECTIVES[name].needs_judge(seq) and not OBJECTIVES[name].needs_groups(seq)
    # Config validation consults the same registry.
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        CordConfig(objective="grpo", num_generations=1)
    with pytest.raises(ValueError, match="objective must be one of"):
        CordConfig(objective="dpo")


@pytest.mark.parametrize("objective, teacher", [("cord", "live"), ("cord", "base"),
                                                ("sft", "live"), ("fkl", "base")])
def test_fused_linear_matches_the_logits_path(tmp_path, objective, teacher):
    # Hidden states in (cord_kernels.fused_linear_*) == logits in: same loss, same update.
    if not hasattr(cord_kernels, "fused_linear_cord_token_loss"):
        cfg = tiny_config(tmp_path, objective=objective, max_steps=1, use_fused_linear=True)
        with pytest.raises(RuntimeError, match="fused_linear_cord_token_loss"):
            CordTrainer(cfg, train_dataset=records(), judge=AlternatingJudge()).train()
        return
    out = {}
    for fused in (False, True):
        cfg = tiny_config(tmp_path / str(fused), objective=objective, teacher=teacher,
                          max_steps=1, use_fused_linear=fused)
        t = CordTrainer(cfg, train_dataset=records(), judge=AlternatingJudge())
        out[fused] = (t.train(), snapshot(t.model))
    (m0, p0), (m1, p1) = out[False], out[True]
    for key in ("loss", "l_tok", "l_seq", "l_sft", "l_fkl", "kl_mean", "kl_p80", "fkl_mean",
                "grad_norm"):
        if key in m0:
            assert m1[key] == pytest.approx(m0[key], rel=1e-4, abs=1e-5), key
    for name in p0:  # Adam's first step ~ lr * sign(g): a tenth of lr bounds rounding flips
        torch.testing.assert_close(p1[name], p0[name], rtol=0, atol=1e-4)


class ScriptedJudge:
    """Returns a fixed verdict pattern, cycled over the candidates; records every call."""

    def __init__(self, pattern):
        self.pattern, self.calls = list(pattern), []

    def __call__(self, questions, candidates, references):
        self.calls.append((list(questions), list(candidates), list(references)))
        return [self.pattern[i % len(self.pattern)] for i in range(len(candidates))]


def _one_batch(trainer):
    return collate_paired([trainer.train_dataset[i] for i in range(2)])


@pytest.mark.parametrize("kind", ["live", "base"])
def test_references_are_the_teachers_greedy_text_answers(tmp_path, kind):
    judge = ScriptedJudge([1, 0])
    cfg = tiny_config(tmp_path, objective="grpo", teacher=kind, reference_temperature=0.0)
    trainer = CordTrainer(cfg, train_dataset=records(), judge=judge)
    with torch.no_grad():  # the student drifts away from the frozen base
        trainer.model.lm_head.weight.add_(torch.randn_like(trainer.model.lm_head.weight))
    batch = _one_batch(trainer)
    compute_loss(trainer.ctx, batch)
    refs = judge.calls[0][2][::cfg.num_generations]  # one reference per prompt, repeated

    def greedy(adapter):
        x_t = adapter.text_prompts(batch.texts)
        return sample(adapter, x_t, temperature=0.0, max_new_tokens=6).texts

    student, base = greedy(trainer.adapter), greedy(trainer.teacher.adapter)
    assert refs == (student if kind == "live" else base)
    if kind == "base":
        assert base != student  # so the check above tells them apart


@pytest.mark.parametrize("unjudged", ["zero", "skip"])
def test_unjudged_rollouts_get_reward_zero_or_no_advantage(tmp_path, unjudged):
    # Groups of 2 judged [1, unjudged]: "zero" gives rewards [1, 0] (advantages +-0.5),
    # "skip" leaves the unjudged one out (the judged one is its group's mean: advantage 0).
    cfg = tiny_config(tmp_path, objective="grpo", unjudged_reward=unjudged)
    trainer = CordTrainer(cfg, train_dataset=records(), judge=ScriptedJudge([1, -1]))
    out = compute_loss(trainer.ctx, _one_batch(trainer))
    assert out.metrics["judged_fraction"] == 0.5
    assert out.metrics["agreement"] == 0.5 and out.metrics["agreement_judged_fraction"] == 0.5
    if unjudged == "zero":
        assert out.metrics["reward"] == 0.5 and out.loss.detach() != 0
    else:
        assert out.metrics["reward"] == 1.0 and out.loss.detach() == 0
    with pytest.raises(ValueError, match="unjudged_reward"):
        CordConfig(unjudged_reward="nan")


def test_judged_fraction_and_agreement_are_defined_when_nothing_is_judged(tmp_path):
    # Formerly agreement = mean over judged items: 0/0 = NaN on a step the judge could not
    # score at all (garbled or answer-less rollouts or references).
    cfg = tiny_config(tmp_path, objective="cord", max_steps=1)
    trainer = CordTrainer(cfg, train_dataset=records(), judge=ScriptedJudge([-1]))
    m = trainer.train()
    assert m["agreement"] == 0.0 and m["agreement_judged_fraction"] == 0.0
    assert m["reward"] == 0.0 and m["judged_fraction"] == 0.0 and m["l_seq"] == 0.0
    assert agreement_stats(torch.tensor([1.0, math.nan, 0.0, 1.0])) == {
        "agreement": 0.5, "agreement_judged_fraction": 0.75}


def test_grpo_opd_is_uniform_token_loss_plus_the_sequence_loss(tmp_path):
    cfg = tiny_config(tmp_path, objective="grpo_opd", cord_seq_weight=0.5)
    trainer = CordTrainer(cfg, train_dataset=records(), judge=AlternatingJudge())
    out = compute_loss(trainer.ctx, _one_batch(trainer))
    m = out.metrics
    assert m["l_tok"] == pytest.approx(m["kl_mean"] * m["completion_length"], rel=1e-4)
    assert m["l_seq"] != 0.0
    assert float(out.loss.detach()) == pytest.approx(m["l_tok"] + 0.5 * m["l_seq"], rel=1e-5)


@pytest.mark.parametrize("objective", ["cord", "alarm"])
def test_generated_tokens_count_every_sampling_call(tmp_path, monkeypatch, objective):
    """References, token rollouts, GRPO groups, teacher rollouts: all are counted."""
    counted, real_sample = [], rollout.sample

    def counting_sample(*args, **kwargs):
        ro = real_sample(*args, **kwargs)
        counted.append(ro.num_tokens)
        return ro

    monkeypatch.setattr(objectives, "sample", counting_sample)
    monkeypatch.setattr(rollout, "sample", counting_sample)  # text_references' call
    cfg = tiny_config(tmp_path, objective=objective)
    trainer = CordTrainer(cfg, train_dataset=records(), judge=AlternatingJudge())
    out = compute_loss(trainer.ctx, _one_batch(trainer))
    assert len(counted) == (3 if objective == "cord" else 2)
    assert out.num_generated_tokens == sum(counted) > 0


def test_trainer_reports_cumulative_generated_tokens_and_calls_on_step_end(tmp_path):
    seen = []

    def on_step_end(step, trainer):
        seen.append((step, trainer.state.total_generated_tokens, trainer.model.training))
        trainer.model.eval()  # an evaluation would; the trainer restores train mode

    cfg = tiny_config(tmp_path, objective="opd", max_steps=3, logging_steps=2)
    trainer = CordTrainer(cfg, train_dataset=records(), judge=None, on_step_end=on_step_end)
    m = trainer.train()
    assert [s for s, _, _ in seen] == [1, 2, 3] and all(t for _, _, t in seen)
    assert seen[0][1] < seen[1][1] < seen[2][1] == m["generated_tokens"]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["generated_tokens"] for x in lines] == [seen[1][1], seen[2][1]]
    with pytest.raises(TypeError, match="on_step_end"):
        CordTrainer(cfg, train_dataset=records(), on_step_end=3)


@pytest.mark.parametrize("objective, trainable, group", [
    ("sft", "projector", "projector"), ("cord", "audio", "audio"), ("alarm", None, "audio")])
def test_trainable_freezes_the_rest(tmp_path, objective, trainable, group):
    cfg = tiny_config(tmp_path, objective=objective, trainable=trainable, max_steps=1)
    trainer = CordTrainer(cfg, train_dataset=records(), judge=AlternatingJudge())
    chosen = {n for n, _ in trainer.adapter.parameter_group(group)}
    named = dict(trainer.model.named_parameters())
    assert {n for n, q in named.items() if q.requires_grad} == chosen
    in_optimizer = {id(q) for g in trainer.optimizer.param_groups for q in g["params"]}
    assert in_optimizer == {id(named[n]) for n in chosen}
    before = {n: q.detach().clone() for n, q in named.items()}
    trainer.train()
    moved = {n for n, q in trainer.model.named_parameters() if not torch.equal(q, before[n])}
    assert moved and moved <= chosen
    info = json.loads((tmp_path / "final" / "training_info.json").read_text())
    total = sum(q.numel() for q in named.values())
    assert info["trainable"] == group and info["objective"] == objective
    assert info["trained_parameters"] == sum(named[n].numel() for n in chosen)
    assert info["total_parameters"] == total > info["trained_parameters"]
    with pytest.raises(ValueError, match="trainable must be one of"):
        CordConfig(trainable="llm")
