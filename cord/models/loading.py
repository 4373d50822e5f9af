"""Loading a model: the registry of families by ``config.model_type``, the checks a checkpoint
passes before and while it loads, the one loader :func:`build_adapter` and the device a model
runs on (:func:`resolve_device`). Every family module imports its loading helpers
(:func:`load_checked`, :func:`with_blocks`) from here; ``cord.models.families`` re-exports
the public names (its docstring says what a family module holds).

:func:`load_family` reads ``config.json`` first and refuses a ``model_type`` not listed in
:data:`FAMILIES`, and :func:`load_checked` refuses a checkpoint that leaves any weight of the
model newly initialised. ``docs/models.md`` says how to add a family.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from cord.models.options import MODEL_OPTIONS

if TYPE_CHECKING:  # torch and transformers load only when a model is built, not with the registry
    import torch

    from cord.models.chat import ChatAdapter

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
    return importlib.import_module(f"cord.models.families.{FAMILIES[model_type]}")


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
    :func:`resolve_device`) moves the model there; None leaves it on the
    CPU, where the trainer's accelerate places it. ``long_audio``: see
    ``ChatAdapter.audio_prompts``.
    """
    from cord.models.hub import resolve_model_path

    if str(model) == "tiny":
        family = get_family("qwen2_audio")
        net, processor = family.build_tiny(seed=seed)
    else:
        family, net, processor = load_family(resolve_model_path(model))
    if device is not None:
        net.to(resolve_device(device))
    return family.Adapter(net, processor, system_prompt=system_prompt, long_audio=long_audio)


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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device a model runs on: ``"auto"`` is the current CUDA device when CUDA is
    available and the CPU otherwise; ``"cpu"``, ``"cuda"``, ``"cuda:1"`` are checked to exist.

    Raises:
        ValueError: an unknown device string, or a CUDA device this machine does not have.
    """
    import torch

    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") \
            from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: CUDA is not available on this machine; use "
                             "device 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)")
    return dev


__all__ = ["FAMILIES", "MODELS_DOC", "UnknownFamilyError", "build_adapter", "get_family",
           "load_checked", "load_family", "read_model_type", "resolve_device",
           "supported_model_types", "with_blocks"]
