"""The audio language models ``cord`` knows, keyed by their checkpoint's ``config.model_type``.

One module per family (``cord/models/families/<family>.py``) holds everything family-specific:
its adapter (a :class:`cord.models.adapter.ChatAdapter` subclass), ``load(path)`` returning
``(model, processor)``, the transformer-block classes FSDP wraps (``BLOCKS``) and
``build_tiny(seed=...)``, a random-init tiny model with a processor built offline (for tests).
Modules are imported only when their family is used.

The registry (``FAMILIES``), the checks a checkpoint passes and the one model loader
:func:`build_adapter` (the tiny offline model or any checkpoint of a family listed there,
wrapped in its adapter) live in ``cord.models.loading``; this package re-exports them, so
``from cord.models.families import build_adapter`` is the documented path.

Example:
    >>> adapter = build_adapter("tiny", seed=0)    # or a checkpoint folder, or a hub id
    >>> family = get_family("voxtral")            # the module cord.models.families.voxtral
    >>> model, processor = family.build_tiny(seed=0)
    >>> adapter = family.Adapter(model, processor)
"""

from cord.models.loading import (
    FAMILIES,
    MODELS_DOC,
    UnknownFamilyError,
    build_adapter,
    get_family,
    load_checked,
    load_family,
    read_model_type,
    supported_model_types,
    with_blocks,
)

__all__ = ["FAMILIES", "MODELS_DOC", "UnknownFamilyError", "build_adapter", "get_family",
           "load_checked", "load_family", "read_model_type", "supported_model_types", "with_blocks"]
