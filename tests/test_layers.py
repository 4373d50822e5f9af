"""Imports run downward only: demo -> {eval, train} -> config -> models -> {data, rewards}
-> cord_kernels. Every import counts, function-local ones included, read with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Rank of each layer; a module may import its own package or a strictly lower rank.
#: ``models`` sits above ``data`` (the adapter resamples audio with ``data.paired.resample``);
#: ``config`` below ``train`` (it holds what validation needs of each objective); ``eval`` and
#: ``train`` are siblings: what both use (rollouts, the training-info file name) lives below.
RANKS = {
    "cord_kernels": 0,
    "cord": 0,  # cord/__init__.py: the version only
    "cord.settings": 0,  # the environment, read once
    "cord.data": 1,
    "cord.rewards": 1,
    "cord.models": 2,
    "cord.config": 3,
    "cord.train": 4,
    "cord.eval": 4,
    "cord.demo": 5,
    "cord.cli": 6,
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "cord":
        return parts[0]
    return ".".join(parts[:2]) if len(parts) > 1 else "cord"


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import statement in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module
            found.append((node.lineno, name))
            if name in ("cord", "cord_kernels"):  # ``from cord import metrics``
                found += [(node.lineno, f"{name}.{a.name}") for a in node.names]
    return found


def violations(root: Path = ROOT) -> list[str]:
    out = []
    paths = sorted((root / "cord").rglob("*.py")) + sorted((root / "cord_kernels").rglob("*.py"))
    for path in paths:
        my_layer = layer_of(module_name(path, root))
        for line, target in imports_of(path, root):
            top = target.split(".")[0]
            if my_layer == "cord_kernels":
                if top in ("cord", "bench"):
                    out.append(f"{path.relative_to(root)}:{line} cord_kernels imports {target}")
                continue
            if top not in ("cord", "cord_kernels"):
                continue
            their_layer = layer_of(target)
            if their_layer == my_layer or their_layer == "cord" and target == "cord":
                continue
            if their_layer not in RANKS:
                out.append(f"{path.relative_to(root)}:{line} imports {target}: unknown layer")
            elif RANKS[their_layer] >= RANKS[my_layer]:
                out.append(f"{path.relative_to(root)}:{line} {my_layer} imports {target} "
                           f"({their_layer} is not below it)")
    return out


def test_every_cord_module_has_a_layer():
    for path in (ROOT / "cord").rglob("*.py"):
        assert layer_of(module_name(path)) in RANKS, path


def test_imports_only_run_downward():
    assert violations() == []


@pytest.mark.parametrize("source, layer, bad", [
    ("from cord.train.trainer import train\n", "models/bad.py", True),
    ("from cord.eval import evaluate\n", "train/bad.py", True),
    ("from cord.train.trainer import CordTrainer\n", "eval/bad.py", True),  # siblings
    ("def f():\n    from cord.train.objectives import OBJECTIVES\n", "config.py", True),
    ("def f():\n    from cord.demo.demo import run_demo\n", "eval/bad.py", True),
    ("from cord.data.paired import resample\n", "rewards/bad.py", True),  # same rank, other pkg
    ("import bench\n", "../cord_kernels/bad.py", True),
    ("from cord.models.adapter import build_adapter\n", "eval/fine.py", False),
    ("from cord.config import CordConfig\n", "train/fine.py", False),
    ("from . import paired\n", "data/fine.py", False),
])
def test_the_check_catches_an_upward_import(tmp_path, source, layer, bad):
    """The checker itself, on a copy of the tree with one extra module."""
    for pkg in ("cord", "cord_kernels"):
        for path in (ROOT / pkg).rglob("*.py"):
            target = tmp_path / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
    (tmp_path / "cord" / layer).resolve().write_text(source)
    found = violations(tmp_path.resolve())
    assert bool(found) is bad, found
