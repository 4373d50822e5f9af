"""Qwen2-Audio (``model_type="qwen2_audio"``), the paper's model: a Whisper-style encoder, a
linear projector and a Qwen2 decoder. The adapter is :class:`cord.models.adapter.Qwen2AudioAdapter`
(also behind ``model=tiny``)."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

from cord.models.adapter import Qwen2AudioAdapter
from cord.models.families import load_checked, with_blocks
from cord.models.tiny import build_tiny_qwen2_audio

Adapter = Qwen2AudioAdapter
#: The transformer blocks FSDP wraps: the encoder's and the decoder's layers.
BLOCKS = ("Qwen2AudioEncoderLayer", "Qwen2DecoderLayer")


def load(path: Path):
    model = load_checked(Qwen2AudioForConditionalGeneration, path)
    return with_blocks(model, BLOCKS), AutoProcessor.from_pretrained(path, local_files_only=True)


def build_tiny(seed: int = 0, **kwargs):
    """The tiny random-init Qwen2-Audio of ``cord.models.tiny``."""
    model, processor = build_tiny_qwen2_audio(seed=seed, **kwargs)
    return with_blocks(model, BLOCKS), processor
