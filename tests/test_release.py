"""The release: the wheel, installed without ``-e`` into a fresh virtual environment, runs
``cord demo --quick`` from outside the checkout (what ``pip install cord-kernels[train]``
gives a user). A file the package needs at run time but does not ship fails here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


@pytest.mark.slow
def test_the_wheel_runs_the_quick_demo_outside_the_checkout(tmp_path):
    wheels, venv, work = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(wheels), str(ROOT)], work, 600)
    (wheel,) = wheels.glob("cord_kernels-*.whl")
    # the dependencies (torch, transformers, ...) come from this interpreter's site-packages;
    # cord and cord_kernels only from the wheel (an editable install there is found after it)
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], work, 120)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
         work, 300)
    where = _run([str(python), "-c", "import cord, cord_kernels; print(cord.__file__); "
                  "print(cord_kernels.__file__)"], work, 120).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where
    _run([str(venv / "bin" / "cord"), "demo", "--quick", "--output-dir", "run",
          "--cache-dir", "cache", "--workers", "1"], work, 900)
    results = json.loads((work / "run" / "results.json").read_text())
    from cord.demo.claim.verdict import HEADLINES

    assert results["verdict"]["a"].split(" (")[0] in HEADLINES  # the rule's headline
