"""Voxtral (``model_type="voxtral"``): a Whisper-style encoder on 30 s windows, a projector
that merges 4 frames per token, and a Llama/Mistral decoder.

The prompt is the Mistral instruct format with the audio first in the user turn,
``<s>[INST][BEGIN_AUDIO][AUDIO]...[AUDIO]{text}[/INST]``, and the text prompt is the same turn
with no audio (the format Voxtral's tokenizer renders for a chat). ``[AUDIO]`` is expanded to
``window_frames / 2 / 4`` tokens per window.

Long clips: one window by default (a longer clip is an error naming it); ``long_audio=chunk``
pads the clip to whole windows and stacks them along the feature batch, as Voxtral's processor
does; each prompt then owns several feature rows (``PromptBatch.row_keys``), which move with
their prompt when a GRPO group copies it (transformers' own copying would pair the windows of
one clip with the prompts of another).

The real checkpoints' tokenizer is ``mistral-common``'s Tekken (``pip install mistral-common``);
the tests use a tiny byte-level BPE with Tekken's special-token ids (``[AUDIO]`` = 24).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoProcessor,
    VoxtralConfig,
    VoxtralForConditionalGeneration,
    VoxtralProcessor,
    WhisperFeatureExtractor,
)

from cord.models.chat import ChatAdapter, PromptBatch, unwrap_model
from cord.models.loading import load_checked, with_blocks
from cord.models.tiny import build_tiny_tokenizer, seeded_tiny

BLOCKS = ("VoxtralEncoderLayer", "LlamaDecoderLayer", "MistralDecoderLayer")

#: Tekken's first special tokens, by id (the ones the prompt uses are named).
_NAMED = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 11: "<pad>",
          17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]", 24: "[AUDIO]", 25: "[BEGIN_AUDIO]"}
SPECIAL_TOKENS = tuple(_NAMED.get(i, f"<SPECIAL_{i}>") for i in range(26))


class Adapter(ChatAdapter):
    """Voxtral. Parameter groups: ``audio`` = ``audio_tower`` + ``multi_modal_projector``,
    ``projector`` = ``multi_modal_projector``."""

    family = "voxtral"
    model_class = VoxtralForConditionalGeneration
    shared_modules = ("audio_tower", "multi_modal_projector")
    module_groups = {"audio": ("audio_tower", "multi_modal_projector"),
                     "projector": ("multi_modal_projector",)}

    def __init__(self, model: nn.Module, processor, **options: Any):
        super().__init__(model, processor, **options)  # system_prompt, long_audio
        bare = unwrap_model(model)
        tok = self.tokenizer
        self.audio_token = tok.convert_ids_to_tokens(int(bare.config.audio_token_id))
        self.begin_audio = "[BEGIN_AUDIO]"
        self.suppress_token_ids = sorted({int(bare.config.audio_token_id),
                                          int(tok.convert_tokens_to_ids(self.begin_audio)),
                                          int(tok.convert_tokens_to_ids("[INST]"))})
        fe = processor.feature_extractor
        self.window_seconds = float(fe.chunk_length)
        audio = bare.config.audio_config
        # encoder frames = mel frames / 2; the projector merges intermediate / hidden of them
        self.tokens_per_window = (fe.nb_max_frames // 2) // (
            audio.intermediate_size // audio.hidden_size)

    def _render(self, messages: list[dict[str, Any]]) -> str:
        (turn,) = messages
        body = "".join(f"{self.begin_audio}{self.audio_token}" if c["type"] == "audio"
                       else c["text"] for c in turn["content"])
        system = (f"[SYSTEM_PROMPT]{self.system_prompt}[/SYSTEM_PROMPT]"
                  if self.system_prompt else "")
        return f"<s>{system}[INST]{body}[/INST]"

    def _encode(self, texts: list[str], audios: list | None) -> PromptBatch:
        if audios is not None:
            raise TypeError("Voxtral prompts with audio go through _encode_audio")
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        return PromptBatch(enc["input_ids"], enc["attention_mask"])

    def chunked_limit(self) -> None:  # the family's own chunking takes any length
        return None

    def _encode_audio(self, texts: list[str], waves: list, *, chunk: bool) -> PromptBatch:
        fe = self.processor.feature_extractor
        window = fe.n_samples
        windows = [max(1, math.ceil(w.size / window)) for w in waves]
        feats = []
        for w in waves:  # as VoxtralProcessor: padded to whole windows, split, stacked
            mel = fe(w, sampling_rate=self.sampling_rate, padding=True, truncation=False,
                     pad_to_multiple_of=window, return_tensors="pt")["input_features"]
            feats.append(mel.reshape(fe.feature_size, -1, fe.nb_max_frames).transpose(0, 1))
        expanded = [t.replace(self.audio_token, self.audio_token * (n * self.tokens_per_window),
                              1) for t, n in zip(texts, windows, strict=True)]
        batch = self._encode(expanded, None)
        batch.model_kwargs = {"input_features": torch.cat(feats)}
        batch.row_keys = ("input_features",)
        batch.item_rows = torch.tensor(windows)
        return batch



def load(path: Path):
    model = load_checked(VoxtralForConditionalGeneration, path)
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except ImportError as err:
        raise ValueError(f"{path}: Voxtral's tokenizer needs mistral-common (pip install "
                         f"mistral-common): {err}") from None
    return with_blocks(model, BLOCKS), processor


def build_tiny(seed: int = 0, *, chunk_seconds: int = 8):
    """A random-init tiny Voxtral and its processor (windows of ``chunk_seconds``)."""
    tok = build_tiny_tokenizer(special_tokens=SPECIAL_TOKENS, eos_token="</s>",
                               pad_token="<pad>", chat_template=None)
    fe = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=320,
                                 chunk_length=chunk_seconds, n_fft=400)
    processor = VoxtralProcessor(fe, tok)
    config = VoxtralConfig(
        audio_config=dict(model_type="voxtral_encoder", hidden_size=32, intermediate_size=128,
                          num_hidden_layers=1, num_attention_heads=2, num_mel_bins=80,
                          max_source_positions=fe.nb_max_frames // 2),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=64,
                         intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        audio_token_id=24)
    model = seeded_tiny(VoxtralForConditionalGeneration, config, tok, seed)
    return with_blocks(model, BLOCKS), processor
