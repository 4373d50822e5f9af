"""CordConfig: paper defaults, YAML + overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cord.cli import main
from cord.config import CordConfig, hparams, parse_overrides

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"


def test_defaults_are_the_papers():
    c = CordConfig()
    assert c.learning_rate == 3e-5 and c.num_generations == 4
    assert c.max_completion_length == 200 and c.temperature == 1.0
    assert c.grpo_temperature == 1.5
    assert (c.cord_top_k, c.cord_alpha, c.cord_position_beta) == (20, 2.0, 2.0)
    assert c.objective == "cord" and c.teacher == "live" and c.model == "tiny"
    assert not hasattr(c, "beta")  # TRL's KL coefficient is not CORD's position weight


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("objective: opd\nlearning_rate: 1.0e-4\nmax_steps: 7\nreport_to: none\n")
    c = CordConfig.from_yaml(path, ["max_steps=9", "bf16=true", "instruction=Answer briefly.",
                                    "report_to=[tensorboard]", "learning_rate=2e-5"])
    assert c.objective == "opd" and c.max_steps == 9 and c.bf16 is True
    assert c.instruction == "Answer briefly." and c.report_to == ["tensorboard"]
    assert c.learning_rate == 2e-5 and isinstance(c.learning_rate, float)
    c.to_yaml(tmp_path / "out.yaml")
    assert CordConfig.from_yaml(tmp_path / "out.yaml") == c
    assert CordConfig.from_yaml(None, ["objective=sft"]).objective == "sft"
    assert CordConfig(report_to="none").report_to == ["none"]


@pytest.mark.parametrize(
    "values, error, match",
    [
        pytest.param({"learning_rat": 1e-4}, ValueError, r"'learning_rat'.*'learning_rate'",
                     id="unknown-key-with-suggestion"),
        pytest.param({"beta": 0.1}, ValueError, "unknown config key 'beta'", id="trl-beta"),
        pytest.param({"objective": "ppo"}, ValueError, "objective must be one of",
                     id="bad-objective"),
        pytest.param({"teacher": "frozen"}, ValueError, "teacher must be one of",
                     id="bad-teacher"),
        pytest.param({"max_steps": "ten"}, TypeError, "max_steps must be an integer",
                     id="bad-int"),
        pytest.param({"max_steps": 0}, ValueError, "max_steps", id="zero-steps"),
        pytest.param({"learning_rate": "fast"}, TypeError, "learning_rate must be a number",
                     id="bad-float"),
        pytest.param({"learning_rate": 0}, ValueError, "learning_rate must be > 0",
                     id="zero-lr"),
        pytest.param({"bf16": "maybe"}, TypeError, "bf16 must be true or false",
                     id="bad-bool"),
        pytest.param({"num_generations": 1}, ValueError, "num_generations must be >= 2",
                     id="grpo-needs-a-group"),
        pytest.param({"per_device_train_batch_size": 0}, ValueError,
                     "per_device_train_batch_size must be >= 1", id="zero-batch"),
        pytest.param({"teacher_ema_decay": 1.0}, ValueError, "teacher_ema_decay",
                     id="ema-decay-1"),
        pytest.param({"report_to": ["wandb", "mlflow"]}, ValueError, "report_to",
                     id="bad-tracker"),
        pytest.param({"alarm_rephrase_prompt": "rephrase"}, ValueError, "{answer}",
                     id="rephrase-without-placeholder"),
        pytest.param({"cord_alpha": -1}, ValueError, "cord_alpha", id="negative-alpha"),
    ],
)
def test_bad_values_name_the_key(values, error, match):
    with pytest.raises(error, match=match):
        CordConfig.from_dict(values)


def test_yaml_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file"):
        CordConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        CordConfig.from_yaml(bad)
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["max_steps"])


def test_metrics_are_logged_every_ten_steps_by_default():
    assert CordConfig().logging_steps == 10


def test_opd_and_sft_need_no_group():
    assert CordConfig(objective="opd", num_generations=1).num_generations == 1
    assert CordConfig(objective="cord", cord_seq_weight=0, num_generations=1).cord_seq_weight == 0


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_configs_load(path):
    c = CordConfig.from_yaml(path)
    # collapse_guard.yaml is named after what it shows (CORD tripping the guard)
    assert (c.objective in path.stem or path.stem.startswith("qwen2_audio")
            or (path.stem == "collapse_guard" and c.objective == "cord"))


def test_cli_reports_config_errors_and_prints_config(capsys):
    assert main(["train", "max_step=3"]) == 2
    assert "unknown config key 'max_step'" in capsys.readouterr().err
    assert main(["train", "objective=grpo", "num_generations=1"]) == 2
    assert "num_generations must be >= 2" in capsys.readouterr().err
    assert main(["train", "--print-config", "objective=fkl", "max_steps=3"]) == 0
    out = capsys.readouterr().out
    assert "objective: fkl" in out and "max_steps: 3" in out


def test_hparams_follow_the_field_metadata():
    values = hparams(CordConfig(report_to=["none"], system_prompt=None))
    assert "alarm_rephrase_prompt" not in values  # marked hparam=False on its field
    assert values["report_to"] == "['none']" and "system_prompt" not in values
    assert values["learning_rate"] == 3e-5 and values["objective"] == "cord"
