"""Qwen2-Audio (``model_type="qwen2_audio"``), the paper's model: a Whisper-style encoder, a
linear projector and a Qwen2 decoder. Its adapter, :class:`Qwen2AudioAdapter` (also behind
``model=tiny``; ``cord.models.adapter`` re-exports it), is the reference the other families
follow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

from cord.models.chat import ChatAdapter, PromptBatch
from cord.models.loading import load_checked, with_blocks
from cord.models.tiny import build_tiny_qwen2_audio


class Qwen2AudioAdapter(ChatAdapter):
    """``Qwen2AudioForConditionalGeneration`` + ``Qwen2AudioProcessor`` (the paper's model).

    The audio goes in the user turn through the chat template
    (``Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>``); the processor expands ``<|AUDIO|>`` to
    one token per encoder frame and returns ``input_features`` and ``feature_attention_mask``.
    Parameter groups: ``audio`` = the Whisper-style ``audio_tower`` + ``multi_modal_projector``,
    ``projector`` = ``multi_modal_projector`` alone.

    Long clips: the processor cuts audio at its feature extractor's window (30 s); with
    ``long_audio="chunk"`` a clip becomes consecutive window-long clips in the same user turn
    (``Audio 1: ... Audio 2: ...``), the template's own way of holding several audios.
    """

    family = "qwen2_audio"
    shared_modules = ("audio_tower", "multi_modal_projector")
    module_groups = {"audio": ("audio_tower", "multi_modal_projector"),
                     "projector": ("multi_modal_projector",)}
    model_class = Qwen2AudioForConditionalGeneration

    def __init__(self, model: nn.Module, processor, **options: Any):
        super().__init__(model, processor, **options)  # system_prompt, long_audio
        tok = self.tokenizer
        names = (processor.audio_token, processor.audio_bos_token, processor.audio_eos_token,
                 "<|im_start|>")
        ids = [tok.convert_tokens_to_ids(n) for n in names]
        self.suppress_token_ids = sorted({int(i) for i in ids
                                          if i is not None and i != tok.unk_token_id})
        self.window_seconds = float(processor.feature_extractor.chunk_length)

    def chunked_limit(self) -> None:  # the family's own chunking takes any length
        return None

    def _encode_audio(self, texts: list[str], waves: list, *, chunk: bool) -> PromptBatch:
        if not chunk:
            return self._encode(texts, waves)
        window = round(self.window_seconds * self.sampling_rate)
        pieces = [[w[s:s + window] for s in range(0, w.size, window)] for w in waves]
        prompts = []
        for text, clip in zip(texts, pieces, strict=True):
            one = self._render(self.audio_message(None))
            turn = one[one.index("Audio 1:"):one.index("<|audio_eos|>") + len("<|audio_eos|>\n")]
            many = "".join(turn.replace("Audio 1:", f"Audio {k + 1}:") for k in range(len(clip)))
            prompts.append(text.replace(turn, many, 1))
        batch = self._encode(prompts, [p for clip in pieces for p in clip])
        batch.row_keys = tuple(k for k in batch.model_kwargs
                               if k in ("input_features", "feature_attention_mask"))
        batch.item_rows = torch.tensor([len(clip) for clip in pieces])
        return batch


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
