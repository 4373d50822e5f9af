"""The adapter's LM head and devices: the head runs on the completion positions only, is found
through ``get_output_embeddings()`` wherever it sits (transformers 4.x's
``language_model.lm_head``), and ``cord eval`` / ``build_adapter`` put the model on the device
asked for."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cord.cli import main
from cord.data.synthetic import tone_audio
from cord.models.adapter import ChatAdapter, Qwen2AudioAdapter
from cord.models.families import build_adapter
from cord.models.loading import resolve_device
from cord.models.tiny import build_tiny_qwen2_audio
from cord_kernels import fused_linear_token_logprobs, token_logprobs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny_qwen2_audio(seed=0)
    return model, processor, Qwen2AudioAdapter(model, processor)


def _batch(adapter, n=2, t=5):
    waves = [tone_audio(f"What is {i} + 2?", 16000) for i in range(n)]
    x_a = adapter.audio_prompts(waves, sampling_rate=16000)
    ids = torch.randint(3, 500, (n, t), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, -2:] = False  # a shorter completion
    return x_a, ids, mask


def _plain_forward_logits(model, x_a, ids, mask):
    """What a plain forward gives: (B, P+T, V) logits, then the completion rows sliced out."""
    input_ids = torch.cat([x_a.input_ids, ids], 1)
    attention = torch.cat([x_a.attention_mask, mask.long()], 1)
    out = model(input_ids=input_ids, attention_mask=attention,
                position_ids=(attention.cumsum(-1) - 1).clamp_min(0), use_cache=False,
                **x_a.model_kwargs)
    p = x_a.input_ids.shape[1]
    return out.logits[:, p - 1 : p - 1 + ids.shape[1]]


def test_head_runs_on_the_completion_positions_only(tiny):
    model, _, adapter = tiny
    x_a, ids, mask = _batch(adapter)
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    try:
        logits = adapter.completion_logits(x_a, ids, mask)
    finally:
        hook.remove()
    b, t = ids.shape
    v = model.lm_head.out_features
    assert seen == [(b, t, 64)]  # B*T rows through the head, none of the P prompt rows
    # Its own (B, T, V) buffer, not a view into (B, P+T, V) logits.
    assert logits.shape == (b, t, v)
    assert logits.untyped_storage().nbytes() == b * t * v * logits.element_size()

    # The same values and the same gradient as projecting everything and slicing.
    full = _plain_forward_logits(model, x_a, ids, mask)
    torch.testing.assert_close(logits, full, rtol=1e-5, atol=1e-5)
    cot = torch.randn_like(logits)
    g_new = torch.autograd.grad((logits * cot).sum(), model.lm_head.weight)[0]
    full = _plain_forward_logits(model, x_a, ids, mask)
    g_ref = torch.autograd.grad((full * cot).sum(), model.lm_head.weight)[0]
    torch.testing.assert_close(g_new, g_ref, rtol=1e-5, atol=1e-6)
    assert not isinstance(model.lm_head, nn.Identity)  # the bypass was undone


class LegacyLayout(nn.Module):
    """Qwen2-Audio as transformers 4.x lays it out: the head at ``language_model.lm_head``."""

    def __init__(self, tiny_model):
        super().__init__()
        self.body = tiny_model.model
        self.language_model = nn.Module()
        self.language_model.lm_head = tiny_model.lm_head

    def get_output_embeddings(self):
        return self.language_model.lm_head

    def forward(self, **kwargs):
        hidden = self.body(**kwargs).last_hidden_state
        return SimpleNamespace(logits=self.language_model.lm_head(hidden))


def test_head_found_through_get_output_embeddings(tiny):
    model, processor, adapter = tiny
    legacy = ChatAdapter(LegacyLayout(model), processor)
    x_a, ids, mask = _batch(adapter)
    assert legacy.lm_head(legacy.model) is model.lm_head

    hidden, weight, bias = legacy.completion_hidden(x_a, ids, mask)
    assert weight is model.lm_head.weight and bias is None
    assert legacy.model.language_model.lm_head is model.lm_head  # put back after the bypass
    ref_hidden, _, _ = adapter.completion_hidden(x_a, ids, mask)
    torch.testing.assert_close(hidden, ref_hidden)
    # The fused-linear path on the legacy layout gives the logits path's log-probs.
    labels = ids.masked_fill(~mask, -100)
    fused = fused_linear_token_logprobs(hidden, weight, labels)
    plain = token_logprobs(legacy.completion_logits(x_a, ids, mask), labels)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)


def test_a_model_without_a_head_is_a_type_error(tiny):
    _, processor, _ = tiny

    class NoHead(nn.Module):
        def get_output_embeddings(self):
            return None

    with pytest.raises(TypeError, match="no LM head"):
        ChatAdapter(NoHead(), processor).lm_head(NoHead())


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu0")
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_build_adapter_moves_the_model():
    # "meta" needs no hardware and is not the CPU: the model really moved.
    adapter = build_adapter("tiny", seed=0, device="meta")
    assert {p.device.type for p in adapter.model.parameters()} == {"meta"}
    adapter = build_adapter("tiny", seed=0, device="auto")
    assert {p.device for p in adapter.model.parameters()} == {resolve_device("auto")}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CPU-only machine")
def test_cord_eval_without_cuda_says_so(tmp_path, capsys):
    data = tmp_path / "b.jsonl"
    data.write_text(json.dumps({"text": "What is 1 + 1?", "audio": "x.wav", "answer": "2"}) + "\n")
    code = main(["eval", "--model", "tiny", "--data", str(data), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "CUDA is not available" in err
