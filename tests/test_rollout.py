"""Rollouts, completion masks, and the student/teacher alignment on completion tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cord.data.synthetic import tone_audio
from cord.models.adapter import Qwen2AudioAdapter
from cord.models.generation import sampling_config
from cord.models.rollout import completion_mask, sample, text_references
from cord.models.tiny import build_tiny_qwen2_audio
from cord.train.teacher import Teacher

QUESTIONS = ["What is 1 + 2?", "What is 13 * 4? Think.", "Which is larger, 7 or 9?"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def adapter():
    model, processor = build_tiny_qwen2_audio(seed=0)
    return Qwen2AudioAdapter(model, processor)


def _audio_prompts(adapter, texts=QUESTIONS):
    return adapter.audio_prompts([tone_audio(t, 16000) for t in texts], sampling_rate=16000)


@pytest.mark.parametrize(
    "ids, expected",
    [
        pytest.param([[5, 6, 2, 0, 0]], [[1, 1, 1, 0, 0]], id="eos-mid-kept"),
        pytest.param([[2, 7, 7]], [[1, 0, 0]], id="eos-first"),
        pytest.param([[5, 6, 7]], [[1, 1, 1]], id="no-eos-truncated"),
        pytest.param([[5, 2, 2, 2]], [[1, 1, 0, 0]], id="only-first-eos"),
        pytest.param([[5, 9, 4], [2, 5, 5]], [[1, 1, 0], [1, 0, 0]], id="second-eos-id"),
    ],
)
def test_completion_mask_stops_at_first_eos(ids, expected):
    mask = completion_mask(torch.tensor(ids), eos_token_ids=[2, 9])
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[bool(x) for x in row] for row in expected]


def test_completion_mask_bad_input():
    with pytest.raises(ValueError, match="completion_ids"):
        completion_mask(torch.zeros(3, dtype=torch.long), [2])
    with pytest.raises(ValueError, match="eos_token_ids"):
        completion_mask(torch.zeros(1, 3, dtype=torch.long), [])


def test_sampled_masks_stop_at_eos():
    model, processor = build_tiny_qwen2_audio(seed=3)
    # Make EOS likely (~20% a step) so the rollouts end at different lengths.
    eos = processor.tokenizer.eos_token_id
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight * 0.1)
        head.bias.zero_()
        head.bias[eos] = 6.0
    model.lm_head = head
    adapter = Qwen2AudioAdapter(model, processor)
    torch.manual_seed(0)
    ro = sample(adapter, _audio_prompts(adapter), num_generations=4, temperature=1.0,
                max_new_tokens=12)
    ids, mask = ro.completion_ids, ro.completion_mask
    ended = 0
    for row_ids, row_mask in zip(ids, mask, strict=True):
        n = int(row_mask.sum())
        assert row_mask[:n].all() and not row_mask[n:].any()  # a prefix
        eos_at = (row_ids == eos).nonzero()
        if len(eos_at):
            ended += 1
            assert int(eos_at[0]) == n - 1  # the first EOS is the last kept token
            assert (row_ids[n:] == adapter.pad_token_id).all()
        else:
            assert n == ids.shape[1]
    assert ended >= 3 and len(set(mask.sum(-1).tolist())) > 1


def test_groups_are_consecutive_copies_of_a_prompt(adapter):
    x_a = _audio_prompts(adapter, QUESTIONS[:2])
    ro = sample(adapter, x_a, num_generations=3, temperature=1.5, max_new_tokens=5)
    assert ro.completion_ids.shape[0] == 6 and ro.group_size == 3 and len(ro.texts) == 6
    for i in range(2):
        for j in range(3):
            assert torch.equal(ro.prompts.input_ids[3 * i + j], x_a.input_ids[i])
            assert torch.equal(ro.prompts.model_kwargs["input_features"][3 * i + j],
                               x_a.model_kwargs["input_features"][i])


def test_greedy_is_deterministic_and_references_are_text_answers(adapter):
    x_a = _audio_prompts(adapter, QUESTIONS[:2])
    a = sample(adapter, x_a, temperature=0.0, max_new_tokens=6)
    b = sample(adapter, x_a, temperature=0.0, max_new_tokens=6)
    assert torch.equal(a.completion_ids, b.completion_ids)
    refs = text_references(adapter, QUESTIONS[:2], temperature=0.0, max_new_tokens=6).texts
    x_t = adapter.text_prompts(QUESTIONS[:2])
    direct = sample(adapter, x_t, temperature=0.0, max_new_tokens=6)
    assert refs == direct.texts
    with pytest.raises(ValueError, match="num_generations"):
        sample(adapter, x_a, num_generations=0)


def _manual_logits(model, input_ids, prompt_len, **extra):
    """One unpadded sequence through the model; rows that predict the completion tokens."""
    out = model(input_ids=input_ids[None], **extra)
    return out.logits[0, prompt_len - 1 : input_ids.shape[0] - 1]


@pytest.mark.parametrize("kind", ["live", "base", "ema"])
def test_student_and_teacher_logits_align_with_a_manual_forward(adapter, kind):
    x_a = _audio_prompts(adapter)
    x_t = adapter.text_prompts(QUESTIONS)
    torch.manual_seed(1)
    ro = sample(adapter, x_a, temperature=1.0, max_new_tokens=6)
    ids, mask = ro.completion_ids, ro.completion_mask
    teacher = Teacher(kind, adapter, ema_decay=0.5)
    student = adapter.completion_logits(x_a, ids, mask)
    taught = teacher.completion_logits(x_t, ids, mask)
    assert student.shape == taught.shape == (*ids.shape, student.shape[-1])
    assert student.requires_grad and not taught.requires_grad and taught.grad_fn is None
    model = adapter.model
    for i in range(len(QUESTIONS)):
        n = int(mask[i].sum())
        comp = ids[i, :n]
        # Student: the audio prompt without its left padding, then the completion.
        p_a = x_a.input_ids[i][x_a.attention_mask[i].bool()]
        ref_s = _manual_logits(model, torch.cat([p_a, comp, comp[:1]]), len(p_a),
                               input_features=x_a.model_kwargs["input_features"][i : i + 1],
                               feature_attention_mask=x_a.model_kwargs[
                                   "feature_attention_mask"][i : i + 1])
        torch.testing.assert_close(student[i, :n], ref_s[:n], rtol=1e-4, atol=1e-4)
        # Teacher: the text prompt + the SAME completion tokens.
        p_t = x_t.input_ids[i][x_t.attention_mask[i].bool()]
        ref_t = _manual_logits(model, torch.cat([p_t, comp, comp[:1]]), len(p_t))
        torch.testing.assert_close(taught[i, :n], ref_t[:n], rtol=1e-4, atol=1e-4)
    # The audio and text conditionings do differ (the test is not comparing a thing to itself).
    assert (student[:, 0] - taught[:, 0]).abs().max() > 1e-3


def test_audio_placeholders_are_never_generated():
    # A completion holding <|AUDIO|> would be read as an audio frame when scored.
    model, processor = build_tiny_qwen2_audio(seed=5)
    audio_id = model.config.audio_token_id
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[audio_id] = 8.0  # would be sampled most of the time
    model.lm_head = head
    adapter = Qwen2AudioAdapter(model, processor)
    assert audio_id in adapter.suppress_token_ids
    ro = sample(adapter, _audio_prompts(adapter), num_generations=2, temperature=1.0,
                max_new_tokens=8)
    assert not (ro.completion_ids == audio_id).any()
    adapter.completion_logits(ro.prompts, ro.completion_ids, ro.completion_mask)  # no mismatch


def test_samples_are_draws_from_the_softmax_whatever_the_generation_config():
    """The model's generation_config asks for repetition_penalty=1.3, top_k=5 (and more); the
    sampled first tokens must still follow softmax(logits) (chi-square), while plain
    ``model.generate`` with that config is rejected by the same test (its power)."""
    stats = pytest.importorskip("scipy.stats")
    model, processor = build_tiny_qwen2_audio(seed=0)
    with torch.no_grad():  # a peaked softmax: the penalties and cut-offs change it visibly
        model.lm_head.weight.mul_(12.0)
    gen = model.generation_config
    gen.repetition_penalty, gen.top_k, gen.top_p = 1.3, 5, 0.9
    gen.no_repeat_ngram_size, gen.min_new_tokens = 1, 2
    adapter = Qwen2AudioAdapter(model, processor)
    x_t = adapter.text_prompts(["What is 1 + 2? Say one two three."])
    with torch.no_grad():
        logits = model(input_ids=x_t.input_ids, attention_mask=x_t.attention_mask).logits[0, -1]
    # The adapter never emits its placeholder tokens: p_theta conditioned on not emitting them.
    logits[adapter.suppress_token_ids] = -float("inf")
    probs = torch.softmax(logits.double(), -1).numpy()
    n = 2000
    expected = probs * n
    keep = expected >= 5  # chi-square cells: the likely tokens one by one, the rest pooled
    assert keep.sum() >= 8 and probs[np.argsort(probs)[:-5]].sum() > 0.2

    def p_value(first_tokens):
        counts = np.bincount(first_tokens.numpy(), minlength=len(probs))
        obs = np.append(counts[keep], counts[~keep].sum())
        exp = np.append(expected[keep], expected[~keep].sum())
        return stats.chisquare(obs, exp).pvalue

    torch.manual_seed(0)
    ours = sample(adapter, x_t, num_generations=n, temperature=1.0, max_new_tokens=1)
    assert p_value(ours.completion_ids[:, 0]) > 1e-3
    assert model.generation_config.top_k == 5  # the model's own config is left as it was
    torch.manual_seed(0)
    inherited = model.generate(input_ids=x_t.input_ids, attention_mask=x_t.attention_mask,
                               do_sample=True, max_new_tokens=2, num_return_sequences=n,
                               suppress_tokens=adapter.suppress_token_ids)
    assert p_value(inherited[:, x_t.input_ids.shape[1]]) < 1e-6


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_the_sampling_config_is_neutral(temperature):
    c = sampling_config(max_new_tokens=4, temperature=temperature, pad_token_id=0,
                        eos_token_ids=[2], suppress_token_ids=[7])
    assert c.do_sample is (temperature > 0) and c.num_beams == 1
    # top-k off when sampling; unset when greedy (nothing to truncate, and no warning)
    assert c.temperature == (temperature or 1.0) and c.top_p == 1.0
    assert c.top_k == (0 if temperature > 0 else None)
    assert c.repetition_penalty == 1.0 and c.no_repeat_ngram_size == 0
    assert c.min_new_tokens == 0 and c.bad_words_ids is None and c.min_p is None
    assert c.suppress_tokens == [7] and c.eos_token_id == [2]
    with pytest.raises(ValueError, match="temperature"):
        sampling_config(max_new_tokens=4, temperature=-1.0, pad_token_id=0, eos_token_ids=[2])
