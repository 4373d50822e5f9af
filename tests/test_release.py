"""The release: the wheel, installed without ``-e`` into a fresh virtual environment, runs
``cord demo --quick`` from outside the checkout (what ``pip install cord-kernels[train]``
gives a user). A file the package needs at run time but does not ship fails here."""

from __future__ import annotations

import importlib.util
import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n" + (
        done.stdout[-3000:] + done.stderr[-3000:])
    return done


def _site_dirs() -> list[str]:
    """The site-packages folders this interpreter imports its packages from: a venv's own
    (and its base's with --system-site-packages), a conda env's, the system Python's, and the
    user site where it is on. Not the checkout (PYTHONPATH) and not what their .pth files add
    (an editable install of this project among them)."""
    dirs = [*site.getsitepackages(), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


def _fresh_env(venv: Path, work: Path) -> Path:
    """A new virtual environment that imports the running interpreter's packages (torch,
    transformers, ...) after its own: a .pth file in its site-packages names their folders.
    ``--system-site-packages`` would not do: from inside a venv or a conda env it exposes the
    base interpreter's packages, not the running environment's. Built without pip (the venv
    module may lack ensurepip, as on Debian): the running environment's pip, imported through
    the .pth file, installs into the new one. Returns its python."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], work, 120)
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                   work, 60).stdout.strip()
    (Path(purelib) / "_running_env.pth").write_text("\n".join(_site_dirs()) + "\n")
    return python


@pytest.mark.slow
def test_the_wheel_runs_the_quick_demo_outside_the_checkout(tmp_path):
    wheels, venv, work = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()
    # without build isolation where setuptools is here (no download); with it elsewhere
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
          "-w", str(wheels), str(ROOT)], work, 600)
    (wheel,) = wheels.glob("cord_kernels-*.whl")
    # the dependencies come from the running environment; cord and cord_kernels only from the
    # wheel, installed into the new environment, whose site-packages comes first
    python = _fresh_env(venv, work)
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
          "--force-reinstall", str(wheel)], work, 300)
    where = _run([str(python), "-c", "import cord, cord_kernels, torch; print(cord.__file__); "
                  "print(cord_kernels.__file__); print(torch.__file__)"], work, 120).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where[:2]), where
    # torch is the running environment's, not its base interpreter's
    assert Path(where[2]) == Path(importlib.util.find_spec("torch").origin), where
    _run([str(venv / "bin" / "cord"), "demo", "--quick", "--output-dir", "run",
          "--cache-dir", "cache", "--workers", "1"], work, 900)
    results = json.loads((work / "run" / "results.json").read_text())
    from cord.demo.claim.verdict import HEADLINES

    assert results["verdict"]["a"].split(" (")[0] in HEADLINES  # the rule's headline
