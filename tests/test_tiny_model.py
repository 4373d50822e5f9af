"""The offline tiny Qwen2-Audio and its adapter: tokenizer, chat template, prompts, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from cord.data.synthetic import tone_audio
from cord.models.adapter import ModelAdapter, Qwen2AudioAdapter
from cord.models.families import build_adapter
from cord.models.tiny import SPECIAL_TOKENS, build_tiny_qwen2_audio, build_tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny_qwen2_audio(seed=0)
    return model, processor, Qwen2AudioAdapter(model, processor)


def test_special_tokens_are_single_tokens(tiny):
    tok = tiny[1].tokenizer
    for special in SPECIAL_TOKENS:
        ids = tok(special, add_special_tokens=False).input_ids
        assert len(ids) == 1, special
        assert tok.convert_ids_to_tokens(ids[0]) == special
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_tokenizer_round_trips_any_text_and_splits_digits():
    tok = build_tiny_tokenizer()
    text = "What is 127 + 5? Answer: (B) naïve ünïcode"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    digits = tok("1234", add_special_tokens=False).input_ids
    assert len(digits) == 4  # one token per digit, as in Qwen2


def test_vocab_words_become_single_tokens():
    tok = build_tiny_tokenizer(["photosynthesis"])
    assert len(tok(" photosynthesis", add_special_tokens=False).input_ids) == 1
    with pytest.raises(TypeError, match="vocab_words"):
        build_tiny_tokenizer("photosynthesis")


def test_chat_template_matches_qwen2_audio(tiny):
    processor = tiny[1]
    messages = [{"role": "user", "content": [{"type": "audio", "audio": "x"},
                                             {"type": "text", "text": "Answer it."}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nAnswer it.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_same_seed_same_weights_and_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, _ = build_tiny_qwen2_audio(seed=1)
    after = torch.rand(1)
    assert torch.equal(before, after)  # building does not consume the caller's RNG
    b, _ = build_tiny_qwen2_audio(seed=1)
    c, _ = build_tiny_qwen2_audio(seed=2)
    wa, wb, wc = (m.lm_head.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_bad_builder_arguments():
    with pytest.raises(ValueError, match="hidden_size"):
        build_tiny_qwen2_audio(hidden_size=0)
    with pytest.raises(ValueError, match="divisible"):
        build_tiny_qwen2_audio(hidden_size=66, num_attention_heads=4)


def test_adapter_prompts(tiny):
    model, processor, adapter = tiny
    assert isinstance(adapter, ModelAdapter)
    waves = [tone_audio("What is 1 + 2?", 16000), tone_audio("Hi", 16000)]
    x_a = adapter.audio_prompts(waves, sampling_rate=16000)
    audio_id = model.config.audio_token_id
    n_audio = (x_a.input_ids == audio_id).sum(-1)
    # One <|AUDIO|> per encoder frame: ((frames - 1) // 2 + 1 - 2) // 2 + 1.
    frames = x_a.model_kwargs["feature_attention_mask"].sum(-1)
    assert torch.equal(n_audio, (((frames - 1) // 2 + 1) - 2) // 2 + 1)
    assert n_audio[0] > n_audio[1]  # longer audio, more audio tokens
    assert (x_a.attention_mask[:, -1] == 1).all()  # left padded
    x_t = adapter.text_prompts(["What is 1 + 2?"])
    assert not (x_t.input_ids == audio_id).any() and x_t.model_kwargs == {}
    text = processor.tokenizer.decode(x_t.input_ids[0])
    assert "<|im_start|>user\nWhat is 1 + 2?<|im_end|>" in text


def test_adapter_resamples_and_rejects_bad_input(tiny):
    adapter = tiny[2]
    wave_16k = tone_audio("abc", 16000)
    wave_8k = wave_16k[::2].copy()
    a = adapter.audio_prompts([wave_16k], sampling_rate=16000)
    b = adapter.audio_prompts([wave_8k], sampling_rate=8000)
    assert a.input_ids.shape == b.input_ids.shape  # same duration, same number of audio tokens
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        adapter.text_prompts(["ok", "  "])
    with pytest.raises(ValueError, match="empty"):
        adapter.audio_prompts([np.zeros(0, np.float32)], sampling_rate=16000)
    with pytest.raises(TypeError, match="Qwen2Audio"):
        Qwen2AudioAdapter(torch.nn.Linear(2, 2), tiny[1])


def test_hidden_path_gives_the_logits(tiny):
    adapter = tiny[2]
    x_a = adapter.audio_prompts([tone_audio("What is 2 + 2?", 16000)], sampling_rate=16000)
    ids = torch.randint(3, 500, (1, 5))
    mask = torch.ones_like(ids, dtype=torch.bool)
    logits = adapter.completion_logits(x_a, ids, mask)
    hidden, weight, bias = adapter.completion_hidden(x_a, ids, mask)
    assert hidden.shape == (1, 5, 64) and weight.shape == (logits.shape[-1], 64) and bias is None
    torch.testing.assert_close(hidden @ weight.T, logits, rtol=1e-5, atol=1e-5)
    assert adapter.model.lm_head is not None and not isinstance(adapter.model.lm_head,
                                                                torch.nn.Identity)


def test_forward_and_generate_are_fast_on_cpu(tiny):
    adapter = tiny[2]
    x_a = adapter.audio_prompts([tone_audio("What is 3 + 4?", 16000)], sampling_rate=16000)
    ids = adapter.generate(x_a, max_new_tokens=4, temperature=1.0)  # warm-up
    t0 = time.perf_counter()
    ids = adapter.generate(x_a, max_new_tokens=16, temperature=1.0)
    logits = adapter.completion_logits(x_a, ids, torch.ones_like(ids, dtype=torch.bool))
    elapsed = time.perf_counter() - t0
    assert logits.shape[:2] == ids.shape and torch.isfinite(logits).all()
    assert elapsed < 1.0, f"generate(16) + forward took {elapsed:.2f}s"


def test_saved_tiny_model_loads_back_offline(tiny, tmp_path):
    model, processor, adapter = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = build_adapter(str(tmp_path))
    wave = [tone_audio("What is 1 + 2?", 16000)]
    a = adapter.audio_prompts(wave, sampling_rate=16000)
    b = loaded.audio_prompts(wave, sampling_rate=16000)
    assert torch.equal(a.input_ids, b.input_ids)
    ids = torch.randint(10, 500, (1, 4))
    mask = torch.ones_like(ids, dtype=torch.bool)
    torch.testing.assert_close(loaded.completion_logits(b, ids, mask),
                               adapter.completion_logits(a, ids, mask))
    assert loaded.eos_token_ids == adapter.eos_token_ids
    assert loaded.suppress_token_ids == adapter.suppress_token_ids
