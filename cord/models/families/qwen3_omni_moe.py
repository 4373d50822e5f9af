"""Qwen3-Omni (MoE) (``model_type="qwen3_omni_moe"`` or ``"qwen3_omni_moe_thinker"``): the
THINKER only, as for Qwen2.5-Omni (``cord.models.families.qwen2_5_omni``, whose adapter this
one extends): no talker or code-to-wave model is built, the vision encoder never runs, image
and video tokens are refused.

The processor does not cut audio (no window): the encoder runs any length in its own windows of
``2 * n_window`` mel frames, so ``long_audio`` never applies.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Qwen3OmniMoeForConditionalGeneration,
    Qwen3OmniMoeThinkerConfig,
    Qwen3OmniMoeThinkerForConditionalGeneration,
)
from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import (
    _get_feat_extract_output_lengths,
)

from cord.models.chat import PromptBatch, unwrap_model
from cord.models.families import qwen2_5_omni as omni
from cord.models.loading import with_blocks
from cord.models.tiny import seeded_tiny

BLOCKS = ("Qwen3OmniMoeAudioEncoderLayer", "Qwen3OmniMoeThinkerTextDecoderLayer")


class Adapter(omni.Adapter):
    """The Qwen3-Omni thinker. Parameter groups: ``audio`` = the audio encoder (its output
    projections included), ``projector`` = those projections (``audio_tower.proj1/proj2``)."""

    family = "qwen3_omni_moe"
    model_class = Qwen3OmniMoeThinkerForConditionalGeneration
    module_groups = {"audio": ("audio_tower",),
                     "projector": ("audio_tower.proj1", "audio_tower.proj2")}

    def _window(self, feature_extractor) -> float | None:
        return None

    def _output_lengths(self, frames: torch.Tensor) -> torch.Tensor:
        n_window = unwrap_model(self.model).config.audio_config.n_window
        return _get_feat_extract_output_lengths(frames, n_window=n_window)

    def _encode_audio(self, texts: list[str], waves: list, *, chunk: bool) -> PromptBatch:
        return self._encode(texts, waves, whole=True)


def load(path: Path):
    return omni.load_thinker(path, "qwen3_omni_moe", Qwen3OmniMoeForConditionalGeneration,
                             Qwen3OmniMoeThinkerForConditionalGeneration, BLOCKS)


def build_tiny(seed: int = 0):
    """A random-init tiny Qwen3-Omni thinker (4 experts, 2 per token) and its processor."""
    processor = omni.tiny_processor()
    tok = processor.tokenizer
    parts = omni.tiny_config_parts(tok)
    ids = parts["ids"]
    audio = {**parts["audio"], "downsample_hidden_size": 8, "n_window_infer": 100,
             "conv_chunksize": 50}
    text = {**parts["text"], "num_experts": 4, "num_experts_per_tok": 2,
            "moe_intermediate_size": 32, "decoder_sparse_step": 1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": [2, 3, 3], "mrope_interleaved": True}}
    vision = {**parts["vision"], "num_position_embeddings": 64, "patch_size": 4}
    config = Qwen3OmniMoeThinkerConfig(
        audio_config=audio, vision_config=vision, text_config=text,
        audio_token_id=ids["audio_token"], image_token_id=ids["image_token"],
        video_token_id=ids["video_token"], audio_start_token_id=ids["audio_bos_token"],
        vision_start_token_id=ids["vision_bos_token"])
    model = with_blocks(seeded_tiny(Qwen3OmniMoeThinkerForConditionalGeneration, config, tok,
                                    seed), BLOCKS)
    return model, processor
