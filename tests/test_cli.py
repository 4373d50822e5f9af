"""The ``cord`` command as a new user meets it: every spelling of an option, one-line errors
with exit status 2 before any model is built, and help that documents every option."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cord.cli import SUBCOMMANDS, build_parser, main
from cord.config import CordConfig, describe_options, options_markdown

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv", [
    ["--max_steps", "5"], ["--max_steps=5"], ["max_steps=5"], ["--max-steps", "5"],
    ["objective=opd", "--max_steps", "5", "seed=3"],
])
def test_train_accepts_every_option_spelling(argv, capsys):
    assert main(["train", "--print-config", *argv]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["max_steps"] == 5
    if "seed=3" in argv:
        assert printed["objective"] == "opd" and printed["seed"] == 3


def test_bare_boolean_flag_means_true(capsys):
    assert main(["train", "--print-config", "--disable_tqdm", "--bf16", "false"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["disable_tqdm"] is True and printed["bf16"] is False


@pytest.mark.parametrize("argv, says", [
    (["train", "--max_step", "5"], "unknown config key 'max_step' (did you mean 'max_steps'?)"),
    (["train", "--foo=1"], "unknown config key 'foo'"),
    (["train", "max_steps=abc"], "max_steps must be an integer, got 'abc'"),
    (["train", "--learning_rate"], None),  # argparse itself: expected one argument
    (["train", "dataset=missing.jsonl"], "dataset 'missing.jsonl' does not exist: pass an"),
    (["train", "model=no/such/dir"], "model 'no/such/dir' is not a directory: pass model=tiny"),
    (["train", "--config", "missing.yaml"], "config file not found: missing.yaml"),
    (["synth", "missing.jsonl", "-o", "out"], "input 'missing.jsonl' does not exist: pass a"),
    (["eval", "--model", "tiny", "--data", "missing.jsonl"], "--data missing=missing.jsonl"),
    (["analyze", "--model", "tiny"], "--model needs --data"),
])
def test_user_errors_are_one_line_with_status_2(argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    if says is not None:
        assert says in err and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err and "--debug" in err
    assert not (tmp_path / "cord-output").exists()  # nothing was built or written


def test_debug_shows_the_traceback():
    with pytest.raises(ValueError, match="unknown config key"):
        main(["train", "--debug", "max_step=1"])


def test_user_errors_come_before_any_model_is_built(tmp_path):
    """A missing dataset is reported before the trainer (which builds the model) is even
    imported."""
    code = ("import sys; from cord.cli import main; rc = main(['train', 'dataset=nope.jsonl']);"
            "assert 'cord.train.trainer' not in sys.modules; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert "dataset 'nope.jsonl' does not exist" in done.stderr


def test_train_help_lists_every_config_field_with_its_help():
    done = subprocess.run([sys.executable, "-m", "cord.cli", "train", "--help"], cwd=ROOT,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT),
                                                               "COLUMNS": "200",
                                                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines
    for f in dataclasses.fields(CordConfig):
        assert f"--{f.name}" in text, f.name
        assert " ".join(f.metadata["help"].split()) in text, f.name
    for name, type_name, default, _ in describe_options():
        assert f"[{type_name}, default {default}]" in text, name


def test_every_option_of_every_command_has_help_and_default():
    for command in SUBCOMMANDS:
        parser = build_parser(command)
        (sub,) = [a for a in parser._actions if a.dest == "command"]
        text = " ".join(sub.choices[command].format_help().split())
        for action in sub.choices[command]._actions:
            if action.dest in ("help",) or not action.option_strings:
                continue
            assert action.help, f"cord {command} {action.option_strings[0]} has no help"
            if action.default not in (None, False, "==SUPPRESS=="):
                shown = "default" in action.help or f"(default: {action.default})" in text
                assert shown, f"cord {command} {action.option_strings[0]}: default not shown"


def test_trainer_page_option_list_is_generated_from_the_config():
    page = (ROOT / "docs" / "trainer.md").read_text()
    block = re.search(r"<!-- train-options:start -->\n(.*?)<!-- train-options:end -->", page,
                      re.S)
    assert block, "docs/trainer.md lacks the generated option list markers"
    assert block.group(1) == options_markdown(), (
        "docs/trainer.md's option list is stale: paste cord.config.options_markdown() between "
        "the train-options markers")


def test_default_output_folders_are_ignored_by_git():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "cord-output/" in ignored and "cord_demo/" in ignored
