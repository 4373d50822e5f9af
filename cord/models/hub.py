"""Where ``model=`` points: a local checkpoint folder, or a Hugging Face hub id resolved from the
local cache (nothing is downloaded). Light imports only: ``cord train`` checks the option before
torch loads."""

from __future__ import annotations

from pathlib import Path

from cord import settings


def is_hub_id(text: str) -> bool:
    """``org/name``: two non-empty parts, not a relative or absolute path."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def resolve_model_path(model: str | Path) -> Path:
    """A local checkpoint directory, or the snapshot of hub id ``model`` ("org/name") in the
    local Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``); never downloads.

    Raises:
        ValueError: neither a directory nor a cached hub id (one line saying how to fetch it).
    """
    path = Path(model)
    if path.is_dir():
        return path
    text = str(model)
    if not is_hub_id(text):
        raise ValueError(f"model must be 'tiny', a local model directory or a hub id like "
                         f"Qwen/Qwen2-Audio-7B-Instruct, got {text!r} (no such directory)")

    from huggingface_hub import snapshot_download  # local: only for hub ids
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = settings.hf_hub_cache()  # at call time: huggingface_hub read its own at import
    try:
        return Path(snapshot_download(text, local_files_only=True, cache_dir=cache))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        raise ValueError(
            f"model {text!r}: no such directory, and nothing is cached for this hub id in the "
            f"Hugging Face cache (HF_HOME); nothing is downloaded during a run: fetch it first "
            f"with `hf download {text}` (or point model= at a local directory)") from None
