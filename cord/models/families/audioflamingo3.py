"""Audio Flamingo 3 (``model_type="audioflamingo3"``): a Whisper-style encoder run on 30 s
windows, an MLP projector and a Qwen2 decoder. ``<sound>`` in the user turn is expanded by the
processor to one token per encoder output frame of every window.

Long clips: one window by default (a longer clip is an error naming it); ``long_audio=chunk``
uses the processor's own windows, up to ``max_audio_len`` (600 s = 20 windows). The windows are
stacked along the feature batch, so each prompt owns several rows (``PromptBatch.row_keys``),
which move with their prompt when a GRPO group copies it. A clip over 20 windows is an error,
never cut (the processor would cut it with a warning).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AudioFlamingo3Config,
    AudioFlamingo3ForConditionalGeneration,
    AudioFlamingo3Processor,
    AutoProcessor,
    WhisperFeatureExtractor,
)

from cord.data.paired import AudioLimit
from cord.models.chat import ChatAdapter, PromptBatch
from cord.models.loading import load_checked, with_blocks
from cord.models.tiny import SPECIAL_TOKENS, build_tiny_tokenizer, chatml_template, seeded_tiny

BLOCKS = ("AudioFlamingo3EncoderLayer", "Qwen2DecoderLayer")
ROW_KEYS = ("input_features", "input_features_mask")

CHAT_TEMPLATE = chatml_template("<sound>")


class Adapter(ChatAdapter):
    """Audio Flamingo 3. Parameter groups: ``audio`` = ``audio_tower`` +
    ``multi_modal_projector``, ``projector`` = ``multi_modal_projector``."""

    family = "audioflamingo3"
    model_class = AudioFlamingo3ForConditionalGeneration
    shared_modules = ("audio_tower", "multi_modal_projector")
    module_groups = {"audio": ("audio_tower", "multi_modal_projector"),
                     "projector": ("multi_modal_projector",)}
    # Every window padded to its full length: the encoder's positions need it.
    audio_kwargs = {"padding": "max_length"}

    def __init__(self, model: nn.Module, processor, **options: Any):
        super().__init__(model, processor, **options)  # system_prompt, long_audio
        tok = self.tokenizer
        ids = [tok.convert_tokens_to_ids(t) for t in (processor.audio_token, "<|im_start|>")]
        self.suppress_token_ids = sorted({int(i) for i in ids
                                          if i is not None and i != tok.unk_token_id})
        self.window_seconds = float(processor.feature_extractor.chunk_length)
        self.max_windows = int(processor.max_audio_len // processor.feature_extractor.chunk_length)

    def chunked_limit(self) -> AudioLimit:
        return AudioLimit(self.max_windows * self._window_samples(),
                          f"more than {self.family}'s {self.max_windows} windows of "
                          f"{self.window_seconds:g} s (the processor would cut it); shorten the "
                          "clip")

    def _encode_audio(self, texts: list[str], waves: list, *, chunk: bool) -> PromptBatch:
        window = self._window_samples()
        windows = [max(1, math.ceil(w.size / window)) for w in waves]
        batch = self._encode(texts, waves)
        batch.row_keys = tuple(k for k in ROW_KEYS if k in batch.model_kwargs)
        batch.item_rows = torch.tensor(windows)
        return batch



def load(path: Path):
    model = load_checked(AudioFlamingo3ForConditionalGeneration, path)
    return with_blocks(model, BLOCKS), AutoProcessor.from_pretrained(path, local_files_only=True)


def build_tiny(seed: int = 0, *, chunk_seconds: int = 8, max_windows: int = 20):
    """A random-init tiny Audio Flamingo 3 and its processor, built offline (windows of
    ``chunk_seconds``, at most ``max_windows`` per clip)."""
    tok = build_tiny_tokenizer(special_tokens=SPECIAL_TOKENS + ("<sound>",),
                               chat_template=CHAT_TEMPLATE)
    fe = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=320,
                                 chunk_length=chunk_seconds, n_fft=400,
                                 return_attention_mask=True)
    processor = AudioFlamingo3Processor(fe, tok, chat_template=CHAT_TEMPLATE,
                                        max_audio_len=chunk_seconds * max_windows)
    config = AudioFlamingo3Config(
        audio_config=dict(model_type="audioflamingo3_encoder", num_mel_bins=80,
                          num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                          hidden_size=32, max_source_positions=fe.nb_max_frames // 2),
        text_config=dict(model_type="qwen2", vocab_size=len(tok), hidden_size=64,
                         intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=4096,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        audio_token_id=tok.convert_tokens_to_ids("<sound>"))
    model = seeded_tiny(AudioFlamingo3ForConditionalGeneration, config, tok, seed)
    return with_blocks(model, BLOCKS), processor
