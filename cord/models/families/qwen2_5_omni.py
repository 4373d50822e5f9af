"""Qwen2.5-Omni (``model_type="qwen2_5_omni"`` or ``"qwen2_5_omni_thinker"``): the THINKER only.

A full checkpoint loads with ``enable_audio_output=False``, so the talker and the token-to-wave
model are never built, and only ``.thinker`` is kept. The vision encoder is part of the thinker
class and is built (transformers has no switch), but never runs: the processor loaded is
:class:`cord.models.processor.AudioTextProcessor` (no image or video processor), a prompt that
holds an image or video token is refused, and those tokens are never generated.

Audio: ``<|audio_bos|><|AUDIO|><|audio_eos|>`` in the user turn; ``<|AUDIO|>`` is expanded to
one token per encoder output frame. The feature extractor pads and cuts at its window (30 s);
``long_audio=chunk`` hands the whole clip to the encoder, which runs in its own windows of
``2 * n_window`` mel frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    Qwen2_5OmniForConditionalGeneration,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    WhisperFeatureExtractor,
)
from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import (
    _get_feat_extract_output_lengths,
)

from cord.models.chat import ChatAdapter, PromptBatch, unwrap_model
from cord.models.loading import load_checked, read_model_type, with_blocks
from cord.models.processor import AudioTextProcessor
from cord.models.tiny import SPECIAL_TOKENS, build_tiny_tokenizer, chatml_template, seeded_tiny

BLOCKS = ("Qwen2_5OmniAudioEncoderLayer", "Qwen2_5OmniDecoderLayer")

#: Token attributes of the Omni tokenizers and their usual values.
TOKENS = {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>",
          "audio_eos_token": "<|audio_eos|>", "image_token": "<|IMAGE|>",
          "video_token": "<|VIDEO|>", "vision_bos_token": "<|vision_bos|>",
          "vision_eos_token": "<|vision_eos|>"}

CHAT_TEMPLATE = chatml_template(
    "<|audio_bos|><|AUDIO|><|audio_eos|>",
    "{% elif content['type'] == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'video' %}<|vision_bos|><|VIDEO|><|vision_eos|>")


class Adapter(ChatAdapter):
    """The Qwen2.5-Omni thinker. Parameter groups: ``audio`` = the audio encoder (its output
    projection included), ``projector`` = that projection (``audio_tower.proj``)."""

    family = "qwen2_5_omni"
    model_class = Qwen2_5OmniThinkerForConditionalGeneration
    module_groups = {"audio": ("audio_tower",), "projector": ("audio_tower.proj",)}

    def __init__(self, model: nn.Module, processor, **options: Any):
        super().__init__(model, processor, **options)  # system_prompt, long_audio
        bare = unwrap_model(model)
        tok = self.tokenizer
        self.tokens = {k: getattr(tok, k, None) or v for k, v in TOKENS.items()}
        ids = {k: tok.convert_tokens_to_ids(v) for k, v in self.tokens.items()}
        self.audio_token_id = int(ids["audio_token"])
        #: Image and video placeholders: refused in a prompt, never generated.
        self.vision_token_ids = [int(ids[k]) for k in ("image_token", "video_token",
                                                       "vision_bos_token", "vision_eos_token")]
        self.suppress_token_ids = sorted({*(int(i) for i in ids.values()),
                                          int(tok.convert_tokens_to_ids("<|im_start|>"))})
        self.window_seconds = self._window(processor.feature_extractor)
        # generate()'s M-RoPE index reads it, and transformers' thinker config lacks it (a
        # full checkpoint's thinker config has it); only vision prompts would use its value.
        if not hasattr(bare.config, "vision_start_token_id"):
            bare.config.vision_start_token_id = int(ids["vision_bos_token"])

    def _window(self, feature_extractor) -> float | None:
        return float(feature_extractor.chunk_length)

    def _output_lengths(self, frames: torch.Tensor) -> torch.Tensor:
        return _get_feat_extract_output_lengths(frames)

    def _encode(self, texts: list[str], audios: list | None, *, whole: bool = False
                ) -> PromptBatch:
        extra = {}
        if audios is not None:
            fe = self.processor.feature_extractor
            # The window (padded, cut: never reached, see audio_prompts) or the whole clip.
            feats = fe(audios, sampling_rate=self.sampling_rate, return_attention_mask=True,
                       return_tensors="pt", padding="longest" if whole else "max_length",
                       truncation=not whole)
            mask = feats["attention_mask"]
            counts = self._output_lengths(mask.sum(-1)).tolist()
            audio = self.tokens["audio_token"]
            texts = [t.replace(audio, audio * int(n), 1) for t, n in zip(texts, counts,
                                                                         strict=True)]
            extra = {"input_features": feats["input_features"], "feature_attention_mask": mask}
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(texts, padding=True, return_tensors="pt")
        refused = torch.isin(enc["input_ids"], torch.tensor(self.vision_token_ids))
        if refused.any():
            raise ValueError(f"{self.family}: a prompt holds an image or video token "
                             f"({self.tokenizer.decode(enc['input_ids'][refused][:1])!r}); only "
                             "audio and text are supported")
        return PromptBatch(enc["input_ids"], enc["attention_mask"], extra)

    def chunked_limit(self) -> None:  # the family's own chunking takes any length
        return None

    def _encode_audio(self, texts: list[str], waves: list, *, chunk: bool) -> PromptBatch:
        return self._encode(texts, waves, whole=chunk)

    def shared_audio_calls(self, model: nn.Module) -> list[tuple[object, str]]:
        # get_audio_features flattens every clip into one sequence of output frames.
        return [(_thinker_model(model), "get_audio_features")]

    def audio_output_tokens(self, prompts: PromptBatch) -> torch.Tensor | None:
        return (prompts.input_ids == self.audio_token_id).sum(-1)


def _thinker_model(model: nn.Module) -> nn.Module:
    """The module whose forward calls ``get_audio_features`` (``thinker.model``)."""
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(inner, "get_audio_features") else model


def load(path: Path):
    return load_thinker(path, "qwen2_5_omni", Qwen2_5OmniForConditionalGeneration,
                        Qwen2_5OmniThinkerForConditionalGeneration, BLOCKS)


def load_thinker(path: Path, full_type: str, full_class, thinker_class,
                 blocks: tuple[str, ...]):
    """``(thinker, processor)`` of a Qwen Omni checkpoint: the thinker of a full checkpoint
    (``model_type == full_type``, its talker never built) or a thinker-only one."""
    if read_model_type(path) == full_type:  # a full checkpoint: build no talker
        full = load_checked(full_class, path, enable_audio_output=False)
        model = full.thinker
        model.generation_config = full.generation_config
    else:
        model = load_checked(thinker_class, path)
    return with_blocks(model, blocks), AudioTextProcessor.from_pretrained(path)


def tiny_processor(*, num_mel_bins: int = 80, chunk_seconds: int = 8, hop_length: int = 320,
                   chat_template: str = CHAT_TEMPLATE) -> AudioTextProcessor:
    tokenizer = build_tiny_tokenizer(
        special_tokens=SPECIAL_TOKENS + ("<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>",
                                         "<|vision_eos|>"),
        chat_template=chat_template, extra_special_tokens=dict(TOKENS))
    fe = WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=16000,
                                 hop_length=hop_length, chunk_length=chunk_seconds, n_fft=400,
                                 return_attention_mask=True)
    return AudioTextProcessor(tokenizer, fe, chat_template)


def tiny_config_parts(tokenizer, *, hidden_size: int = 64, audio_d_model: int = 32,
                      num_mel_bins: int = 80) -> dict:
    """The sub-configs shared by the tiny Omni thinkers."""
    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in TOKENS.items()}
    return dict(
        audio=dict(num_mel_bins=num_mel_bins, encoder_layers=1, encoder_attention_heads=2,
                   encoder_ffn_dim=4 * audio_d_model, d_model=audio_d_model,
                   max_source_positions=100, n_window=50, output_dim=hidden_size),
        vision=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                    out_hidden_size=hidden_size),
        text=dict(vocab_size=len(tokenizer), hidden_size=hidden_size,
                  intermediate_size=2 * hidden_size, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                   "mrope_section": [2, 3, 3]},
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        ids=ids)


def build_tiny(seed: int = 0):
    """A random-init tiny Qwen2.5-Omni thinker and its processor, built offline."""
    processor = tiny_processor()
    tok = processor.tokenizer
    parts = tiny_config_parts(tok)
    ids = parts["ids"]
    config = Qwen2_5OmniThinkerConfig(
        audio_config=parts["audio"], vision_config=parts["vision"], text_config=parts["text"],
        audio_token_index=ids["audio_token"], image_token_index=ids["image_token"],
        video_token_index=ids["video_token"], audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"])
    model = seeded_tiny(Qwen2_5OmniThinkerForConditionalGeneration, config, tok, seed)
    return with_blocks(model, BLOCKS), processor



