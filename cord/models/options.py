"""The model options ``cord train``, ``cord eval`` and ``cord analyze`` share, each declared
once, with its default, its choices and its help: ``CordConfig``'s fields are built from these
declarations (``cord train``), and :func:`add_argument` adds them to the ``cord eval`` and
``cord analyze`` parsers (``--long-audio``, ``--system-prompt``, ...).

Only the standard library and :mod:`cord.models.hub` (light) are imported: the commands check
their options before torch loads.

Example:
    >>> add_argument(parser, "long_audio")    # --long-audio {error,chunk}, default error
    >>> MODEL_OPTIONS["long_audio"].check("cut")
    ValueError: long_audio must be one of ['error', 'chunk'], got 'cut'
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cord.models.hub import is_hub_id, resolve_model_path

__all__ = ["LONG_AUDIO", "MODEL_OPTIONS", "ModelOption", "add_argument", "check_device",
           "check_model"]

#: What ``ChatAdapter.audio_prompts`` does with a clip longer than the family's window.
LONG_AUDIO = ("error", "chunk")
#: The devices ``resolve_device`` knows; whether CUDA is there is checked with the model.
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class ModelOption:
    """One option: its name (``long_audio``; ``--long-audio`` on a command line), default,
    one-line help and, where it has them, its choices."""

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any, name: str | None = None) -> None:
        """A one-line ValueError naming the option (``name``: its spelling for the user)
        when ``value`` is not one of the choices."""
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{name or self.name} must be one of {list(self.choices)}, got "
                             f"{value!r}")


MODEL_OPTIONS: dict[str, ModelOption] = {o.name: o for o in (
    ModelOption("model", "tiny", '"tiny" (a random-init Qwen2-Audio built offline), a local '
                "checkpoint directory or a hub id in the local HF cache (families: "
                "docs/models.md)"),
    ModelOption("long_audio", "error", 'a clip longer than the model\'s audio window: "error" '
                '(names it) or "chunk" (the family\'s own chunking); never cut', LONG_AUDIO),
    ModelOption("system_prompt", None, "system turn of every prompt (None: the chat "
                "template's default)"),
    ModelOption("device", "auto", "where the model runs: auto (the GPU when there is one, else "
                "the CPU), cpu, cuda, cuda:N"),
)}


def add_argument(parser: argparse.ArgumentParser | argparse._ActionsContainer, name: str,
                 **overrides: Any) -> None:
    """Adds ``MODEL_OPTIONS[name]`` to ``parser`` (or an argument group) as its dashed flag,
    with its default, choices and help; ``overrides`` are further ``add_argument`` keywords
    (``required=True``, or a ``help`` that says when the option applies)."""
    option = MODEL_OPTIONS[name]
    kwargs: dict[str, Any] = {"default": option.default, "help": option.help}
    if option.choices is not None:
        kwargs["choices"] = option.choices
    kwargs.update(overrides)
    if kwargs.get("required"):
        kwargs.pop("default")
    parser.add_argument(option.flag, **kwargs)


def check_model(model: str | Path, name: str = "model", tiny: str = "model=tiny") -> None:
    """Raises ValueError, naming ``name`` and the fix, unless ``model`` is ``tiny``, a
    directory or a hub id with a snapshot in the local cache (nothing is downloaded).
    ``tiny``: how the user spells the tiny model in this command."""
    if str(model) == "tiny" or Path(model).is_dir():
        return
    if not is_hub_id(str(model)):
        raise ValueError(f"{name} {str(model)!r} is not a directory: pass {tiny}, a local "
                         "checkpoint folder or a hub id in the local cache (nothing is "
                         "downloaded)")
    resolve_model_path(model)  # one line when nothing is cached for it


def check_device(device: str, name: str = "device") -> str:
    """``device`` when it is one ``resolve_device`` knows; a one-line ValueError otherwise."""
    if not _DEVICE.match(str(device)):
        raise ValueError(f"{name} must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device
