"""The audio language models ``cord`` knows, keyed by their checkpoint's ``config.model_type``.

One module per family (``cord/models/families/<family>.py``) holds everything family-specific:
its adapter (a :class:`cord.models.adapter.ChatAdapter` subclass), ``load(path)`` returning
``(model, processor)``, the transformer-block classes FSDP wraps (``BLOCKS``) and
``build_tiny(seed=...)``, a random-init tiny model with a processor built offline (for tests).
Modules are imported only when their family is used.

:func:`load_family` reads ``config.json`` first and refuses a ``model_type`` not listed here,
and :func:`load_checked` refuses a checkpoint that leaves any weight of the model newly
initialised. ``docs/models.md`` says how to add a family.

:func:`build_adapter` is the one model loader: the tiny offline model or any checkpoint of a
family listed here, wrapped in its adapter.

Example:
    >>> adapter = build_adapter("tiny", seed=0)    # or a checkpoint folder, or a hub id
    >>> family = get_family("voxtral")            # the module cord.models.families.voxtral
    >>> model, processor = family.build_tiny(seed=0)
    >>> adapter = family.Adapter(model, processor)
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from cord.models.options import MODEL_OPTIONS

if TYPE_CHECKING:
    import torch

    from cord.models.adapter import ChatAdapter

#: config.model_type -> family module (a full Omni checkpoint and its thinker alone share one).
FAMILIES: dict[str, str] = {
    "qwen2_audio": "qwen2_audio",
    "qwen2_5_omni": "qwen2_5_omni",
    "qwen2_5_omni_thinker": "qwen2_5_omni",
    "qwen3_omni_moe": "qwen3_omni_moe",
    "qwen3_omni_moe_thinker": "qwen3_omni_moe",
    "voxtral": "voxtral",
    "audioflamingo3": "audioflamingo3",
}

#: Where a user reads which families exist and how to add one.
MODELS_DOC = "docs/models.md"


class UnknownFamilyError(ValueError):
    """A checkpoint whose ``model_type`` no family handles (the CLI's one-line exit 2)."""


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


def get_family(model_type: str) -> ModuleType:
    """The family module of ``model_type``; raises :class:`UnknownFamilyError` naming it."""
    if model_type not in FAMILIES:
        raise UnknownFamilyError(
            f"model_type {model_type!r} is not a supported audio language model (supported: "
            f"{', '.join(supported_model_types())}); {MODELS_DOC} says how to add a family")
    return importlib.import_module(f"{__name__}.{FAMILIES[model_type]}")


def read_model_type(path: str | Path) -> str:
    """``model_type`` of the checkpoint folder ``path`` (its config.json), read without
    building any config class, so an unknown type is refused before anything loads."""
    config = Path(path) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{path} holds no config.json: not a transformers checkpoint")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except json.JSONDecodeError as err:
        raise ValueError(f"{config} is not valid JSON: {err}") from None
    if not model_type:
        raise UnknownFamilyError(f"{config} names no model_type (supported: "
                                 f"{', '.join(supported_model_types())}); {MODELS_DOC}")
    return str(model_type)


def load_family(path: str | Path):
    """``(family module, model, processor)`` of the checkpoint folder ``path``."""
    family = get_family(read_model_type(path))
    model, processor = family.load(Path(path))
    return family, model, processor


def build_adapter(model: str | Path = "tiny", *, seed: int = 42,
                  system_prompt: str | None = None,
                  device: str | torch.device | None = None,
                  long_audio: str = MODEL_OPTIONS["long_audio"].default) -> ChatAdapter:
    """The one model loader: ``"tiny"`` builds the offline tiny Qwen2-Audio (random init from
    ``seed``); anything else is a local checkpoint directory or a Hugging Face hub id resolved
    from the local cache (nothing is downloaded, see
    :func:`cord.models.hub.resolve_model_path`). The family is picked from the checkpoint's
    ``config.model_type`` (:func:`load_family`): an unknown type, or a checkpoint that leaves
    any weight newly initialised, is a ValueError. ``device`` (see
    :func:`cord.models.adapter.resolve_device`) moves the model there; None leaves it on the
    CPU, where the trainer's accelerate places it. ``long_audio``: see
    ``ChatAdapter.audio_prompts``.
    """
    # Local: torch and transformers load only when a model is built, not with the registry.
    from cord.models.adapter import Qwen2AudioAdapter, resolve_device
    from cord.models.hub import resolve_model_path
    from cord.models.tiny import build_tiny_qwen2_audio

    if str(model) == "tiny":
        net, processor = build_tiny_qwen2_audio(seed=seed)
        adapter_class = Qwen2AudioAdapter
    else:
        family, net, processor = load_family(resolve_model_path(model))
        adapter_class = family.Adapter
    if device is not None:
        net.to(resolve_device(device))
    return adapter_class(net, processor, system_prompt=system_prompt, long_audio=long_audio)


def load_checked(model_class, path: Path, **kwargs):
    """``model_class.from_pretrained(path)``, offline, refusing any weight the checkpoint does
    not hold (transformers would initialise it randomly and only warn) or holds with another
    shape. Extra tensors in the checkpoint (a talker the thinker does not use) are fine."""
    # super(): the plain PreTrainedModel loader, past overrides that load what CORD never
    # uses (the full Omni models' speaker files for the talker).
    loader = super(model_class, model_class).from_pretrained
    try:
        model, info = loader(path, local_files_only=True, dtype="auto", output_loading_info=True,
                             **kwargs)
    except RuntimeError as err:  # transformers' own refusal of weights of another shape
        if "mismatched" not in str(err):
            raise
        raise ValueError(f"{path}: some weights of the checkpoint have another shape than "
                         f"{model_class.__name__} expects: is it a checkpoint of this family "
                         f"(config model_type {read_model_type(path)!r})?") from None
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k)
                        for k in info.get("mismatched_keys") or ())
    bad = missing + mismatched
    if bad:
        shown = ", ".join(bad[:6]) + (f", ... ({len(bad)} in all)" if len(bad) > 6 else "")
        what = "missing from" if missing else "of another shape in"
        raise ValueError(
            f"{path}: {len(bad)} weight(s) of {model_class.__name__} are {what} the checkpoint "
            f"and would be newly initialised: {shown}; is it a checkpoint of this family "
            f"(config model_type {getattr(model.config, 'model_type', '?')!r})?")
    return model


def with_blocks(model, blocks: tuple[str, ...]):
    """Sets the FSDP wrap classes (``_no_split_modules``) of ``model`` to the family's
    transformer blocks: accelerate's FSDP and ``distributed=fsdp2`` both read it."""
    model._no_split_modules = list(blocks)
    return model


__all__ = ["FAMILIES", "MODELS_DOC", "UnknownFamilyError", "build_adapter", "get_family",
           "load_checked", "load_family", "read_model_type", "supported_model_types", "with_blocks"]
