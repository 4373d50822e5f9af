"""How the ``cord`` command starts (issue 20, items 6, 8 and 9): ``--help`` and user errors
answer without importing torch, transformers or datasets; a missing ``[train]`` extra is one
line saying what to install; typos get a suggestion.

Whether torch was imported is the robust check (read from ``sys.modules`` in a fresh
process); the wall-clock bound is generous, for a loaded CI machine.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import pyproject
from packaging.requirements import Requirement

from cord.cli import SUBCOMMANDS, TRAIN_EXTRA_HINT, TRAIN_EXTRA_MODULES, main

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "accelerate")

#: Runs ``cord ARGV`` in this process and prints which heavy modules it imported.
_PROBE = """
import sys
from cord.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:  # --help
    code = e.code
print("IMPORTED", *[m for m in {heavy!r} if m in sys.modules])
sys.exit(code)
"""


def _cord(argv: list[str], *, prelude: str = "", cwd: Path = ROOT):
    """(exit status, stdout, stderr, seconds) of ``cord argv`` in a fresh interpreter."""
    code = prelude + _PROBE.format(heavy=HEAVY)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT),
                                                      "PATH": "/usr/bin:/bin"})
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - start


def _imported(stdout: str) -> list[str]:
    (line,) = [x for x in stdout.splitlines() if x.startswith("IMPORTED")]
    return line.split()[1:]


HELP = [pytest.param([], id="cord"), *[pytest.param([name], id=name) for name in SUBCOMMANDS]]


@pytest.mark.parametrize("command", HELP)
def test_help_answers_without_heavy_imports(command):
    code, out, err, seconds = _cord([*command, "--help"])
    assert code == 0, err
    assert "usage: cord" in out
    assert _imported(out) == [], f"--help imported {_imported(out)}"
    assert seconds < 10  # about 0.2 s; 11 s before the heavy imports moved after the checks


@pytest.mark.parametrize("argv, says", [
    (["train", "max_steps=0"], "max_steps must be -1"),
    (["train", "judge=modl"], "judge must be one of ['match', 'model', 'none']"),
    (["train", "objective=cordd"], "objective must be one of"),
    (["eval", "--model", "tiny", "--data", "x.jsonl", "--limit", "0"], "--data x=x.jsonl"),
    (["eval", "--model", "tiny", "--data", "tests/helpers.py", "--device", "gpu"],
     "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    (["eval", "--model", "tiny", "--data", "tests/helpers.py", "--limit", "0"],
     "--limit must be >= 1, got 0"),
    (["synth", "tests/helpers.py", "-o", "out", "--limit", "0"], "--limit must be >= 1, got 0"),
    (["analyze", "--rollouts", "missing.jsonl"], "--rollouts missing.jsonl: no such file"),
    (["analyze", "--rollouts", "tests/helpers.py", "--percentile", "120"],
     "--percentile must be in (0, 100)"),
])
def test_value_errors_answer_without_heavy_imports(argv, says):
    code, out, err, seconds = _cord(argv)
    assert code == 2, err
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert _imported(out) == []
    assert seconds < 10


#: Makes the [train] extra's modules unimportable, as after ``pip install .``.
_NO_EXTRAS = ("import sys\n"
              "for name in ('yaml', 'numpy', 'transformers', 'datasets', 'accelerate'):\n"
              "    sys.modules[name] = None\n")


@pytest.mark.parametrize("argv", [["train", "--help"], ["synth", "--help"],
                                  ["train", "max_steps=3"]], ids=" ".join)
def test_without_the_train_extra_the_command_says_what_to_install(argv):
    code, out, err, _ = _cord(argv, prelude=_NO_EXTRAS)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and TRAIN_EXTRA_HINT in err, err
    assert "Traceback" not in err


def test_without_the_train_extra_top_level_help_still_works():
    code, out, err, _ = _cord(["--help"], prelude=_NO_EXTRAS)
    assert code == 0 and "COMMAND" in out, err


def test_the_extra_modules_cover_the_train_extra():
    extra = pyproject()["project"]["optional-dependencies"]["train"]
    renamed = {"pyyaml": "yaml"}  # the distributions whose module has another name
    for requirement in map(Requirement, extra):
        name = requirement.name.lower()
        module = renamed.get(name, name.replace("-", "_"))
        assert module in TRAIN_EXTRA_MODULES, f"{requirement.name} ({module}) is not listed"


@pytest.mark.parametrize("argv, says", [
    (["train", "--confg", "x.yaml"], "unknown option --confg (did you mean --config?)"),
    (["train", "--print-confg"], "unknown option --print-confg (did you mean --print-config?)"),
    (["train", "--max_stepz", "3"], "unknown config key 'max_stepz' (did you mean 'max_steps'?)"),
    (["eval", "--modle", "tiny", "--data", "x"], "unknown option --modle (did you mean --model?)"),
    (["synth", "in.jsonl", "--output-dirr", "o"], "(did you mean --output-dir?)"),
    (["train", "judge=modl"], "judge must be one of ['match', 'model', 'none'], got 'modl'"),
])
def test_typos_get_a_suggestion(argv, says, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
