"""How one value of a ``CordConfig`` is read and checked: ``key=value`` overrides parsed as
YAML, values coerced to their field's type, choices matched with a "did you mean", dataset paths
checked before anything loads, and the defaults ``CordConfig`` takes from cord_kernels' loss
options without importing torch. Standard library and PyYAML only: every config error answers
before torch loads."""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

#: The files ``datasets``' ``save_to_disk`` writes into a Dataset / DatasetDict folder.
SAVED_DATASET_FILES = ("state.json", "dataset_dict.json")


def kernel_default(name: str) -> int | float:
    """A default of cord_kernels' loss options (``cord_kernels/core/options.py``, the module
    ``LossOptions`` reads its defaults from), read from its source: importing it imports torch,
    which this module must not (every config error answers before torch loads;
    tests/test_train_cli.py checks the value against the imported one). Should that module
    move, the value comes from importing it instead: slower, never wrong."""
    spec = importlib.util.find_spec("cord_kernels")
    source = Path(spec.origin).with_name("core") / "options.py" if spec and spec.origin else None
    try:
        for node in ast.parse(source.read_text()).body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and getattr(node.targets[0], "id", None) == name):
                return ast.literal_eval(node.value)
    except (AttributeError, OSError, SyntaxError, ValueError):
        pass
    return getattr(importlib.import_module("cord_kernels.core.options"), name)


def choice_of(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` as one of ``choices``: itself, or the one choice it spells in another case
    (``objective=CORD``); otherwise a ValueError naming ``name``, with a "did you mean"."""
    if value in choices:
        return value
    folded = [c for c in choices if isinstance(value, str) and c.lower() == value.lower()]
    if len(folded) == 1:
        return folded[0]
    close = difflib.get_close_matches(str(value).lower(), list(choices), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}{hint}")


def named_value(value: Any, names: tuple[str, ...]) -> Any:
    """``value``, or the one of ``names`` it spells in another case when no file or folder of
    that name exists (``dataset=Arithmetic``, ``model=Tiny``, ``eval_dataset=Holdout``)."""
    if not isinstance(value, str) or value in names or Path(value).exists():
        return value
    folded = [n for n in names if n.lower() == value.lower()]
    return folded[0] if len(folded) == 1 else value


def check_data_path(name: str, value: str, synthetic: tuple[str, ...] = ()) -> None:
    """A ValueError naming ``name`` when ``value`` is no dataset file or folder: missing, an
    empty folder or one this process cannot read (checked before anything loads)."""
    path = Path(value)
    fix = ("pass an existing .jsonl/.json/.csv/.parquet file or saved dataset folder"
           + (f", or one of {list(synthetic)}" if synthetic else ""))
    if not path.exists():
        close = difflib.get_close_matches(value.lower(), list(synthetic), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{name} {value!r} does not exist{hint}: {fix}")
    if path.is_dir():
        try:
            empty = not any(path.iterdir())
        except OSError as err:
            raise ValueError(f"{name} {value!r} cannot be read ({err.strerror}): {fix}") from None
        if empty:
            raise ValueError(f"{name} {value!r} is an empty folder: {fix}")
        if not any((path / marker).is_file() for marker in SAVED_DATASET_FILES):
            raise ValueError(f"{name} {value!r} is not a saved dataset folder (no "
                             f"{' or '.join(SAVED_DATASET_FILES)}, which datasets' save_to_disk "
                             f"writes): {fix}")
    elif not os.access(path, os.R_OK):
        raise ValueError(f"{name} {value!r} cannot be read (permission denied): {fix}")


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values parsed as YAML scalars/lists)."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"overrides must look like key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = value
    return out


def coerce(name: str, value: Any, hint: Any) -> Any:
    """Checks (and mildly converts: int -> float, "1e-5" -> float, str -> [str]) one value."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(name, value, inner[0])
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{name} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [coerce(name, v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        close = difflib.get_close_matches(str(value).lower(), ["true", "false"], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise TypeError(f"{name} must be true or false, got {value!r}{hint}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise TypeError(f"{name} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise TypeError(f"{name} must be a number, got {value!r}") from None
        if not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {value!r}")
        return value
    return value
