"""Settings are read once, in one module per package, and docs/settings.md lists exactly them."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import cord.settings
import cord_kernels.settings

ROOT = Path(__file__).resolve().parents[1]
MODULES = {"cord_kernels": cord_kernels.settings, "cord": cord.settings}


def documented_rows() -> list[tuple[str, ...]]:
    """``(variable, module, setting, default, meaning)`` of each row of the docs table."""
    rows = []
    for line in (ROOT / "docs" / "settings.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            rows.append(tuple(c.strip("`") for c in cells))
    return rows


def test_the_docs_table_is_the_settings_modules():
    expected = [(v.name, package, v.field, v.default, v.meaning)
                for package, module in MODULES.items() for v in module.VARIABLES]
    assert documented_rows() == expected


@pytest.mark.parametrize("package", MODULES)
def test_every_setting_has_one_variable_and_default(package):
    module = MODULES[package]
    fields = {f.name: f for f in dataclasses.fields(module.Settings)}
    assert [v.field for v in module.VARIABLES] == list(fields)
    defaults = module.from_env({})
    assert defaults == module.Settings()
    for v in module.VARIABLES:  # the documented default is the one in force
        assert module.from_env({v.name: v.default}) == defaults, v.name


def _reads_the_environment(path: Path) -> list[int]:
    tree = ast.parse(path.read_text())
    return [n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr in ("environ", "getenv")
            and isinstance(n.value, ast.Name) and n.value.id == "os"]


def test_only_the_settings_modules_read_the_environment():
    found = {}
    for package in MODULES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name != "settings.py" and _reads_the_environment(path):
                found[str(path.relative_to(ROOT))] = _reads_the_environment(path)
    assert found == {}


def test_no_kernel_function_sets_the_thread_count():
    """The thread count is process-wide: the caller's to set (``cord train`` does, for its
    process), never a loss's."""
    for path in sorted((ROOT / "cord_kernels").rglob("*.py")):
        calls = [n.lineno for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and n.func.attr in ("set_num_threads", "set_num_interop_threads")]
        assert calls == [], path


def test_cord_settings_from_the_environment(tmp_path):
    s = cord.settings.from_env({"CORD_CACHE": str(tmp_path), "RANK": "3"})
    assert (s.cache_dir, s.rank) == (tmp_path, 3)
    assert cord.settings.from_env({"CORD_CACHE": "~/c"}).cache_dir == Path.home() / "c"
    with pytest.raises(ValueError, match="RANK must be an integer"):
        cord.settings.from_env({"RANK": "first"})


def test_the_demo_cache_follows_cord_cache(monkeypatch, tmp_path):
    from cord.demo.speech import default_cache_dir

    chosen = cord.settings.from_env({"CORD_CACHE": str(tmp_path)})
    monkeypatch.setattr(cord.settings, "get", lambda: chosen)
    assert default_cache_dir() == tmp_path / "demo"
