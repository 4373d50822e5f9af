"""cord eval: scoring of responses, the paper's gap metrics and the table, on hand-made cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cord.eval.evaluate import (
    evaluate,
    gap_reduction,
    gap_summary,
    gap_table,
    modality_gaps,
    normalize_record,
    reference_kind,
    score_response,
)

# (response, reference, kind, (correct, parsed))
SCORING_CASES = [
    pytest.param("The answer is (B).", "B", "auto", (True, True), id="choice-cue-bracket"),
    pytest.param("b", "B", "auto", (True, True), id="choice-lowercase-bare"),
    pytest.param("I would go with option C", "(C)", "auto", (True, True), id="choice-ref-bracket"),
    pytest.param("Answer: A. It is the largest.", "B", "auto", (False, True), id="choice-wrong"),
    pytest.param("It could be A or B", "A", "auto", (False, False), id="choice-unparsed"),
    pytest.param("", "A", "choice", (False, False), id="choice-empty"),
    pytest.param("so the answer is 12", "12", "auto", (True, True), id="math-cue"),
    pytest.param("The result is \\boxed{\\frac{1}{2}}", "0.5", "auto", (True, True), id="latex"),
    pytest.param("x = 13", "12", "math", (False, True), id="math-wrong"),
    pytest.param("I do not know", "7", "math", (False, False), id="math-unparsed"),
    pytest.param("the answer is twelve", "12", "math", (True, True), id="math-words"),
]


@pytest.mark.parametrize("response, reference, kind, expected", SCORING_CASES)
def test_score_response(response, reference, kind, expected):
    assert score_response(response, reference, kind) == expected


def test_reference_kind():
    assert reference_kind("B") == "choice"
    assert reference_kind("(d)") == "choice"
    assert reference_kind("E") == "math"  # not one of the options ABCD
    assert reference_kind("E", choices="ABCDE") == "choice"
    assert reference_kind("12") == "math"
    assert reference_kind("\\frac{1}{2}") == "math"


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="kind"):
        score_response("A", "A", "essay")
    with pytest.raises(ValueError, match="reference"):
        score_response("A", "", "auto")
    with pytest.raises(ValueError, match="prompt"):
        normalize_record({"audio": "x.wav", "reference": "A"}, 3)
    with pytest.raises(ValueError, match="reference"):
        normalize_record({"audio": "x.wav", "prompt": "q"}, 3)


def test_voicebench_record_layout():
    rec = normalize_record({"audio": "a.wav", "prompt": "Which?", "reference": "C"}, 5)
    assert (rec["id"], rec["text"], rec["answer"]) == ("5", "Which?", "C")
    assert "prompt" not in rec and "reference" not in rec


def _run(text_acc, audio_acc, name="b"):
    return {"name": name, "text": {"accuracy": text_acc}, "audio": {"accuracy": audio_acc}}


def test_gap_metrics_by_hand():
    # Two benchmarks. Base: text 0.80 / 0.60, audio 0.40 / 0.40 -> Δ = 0.40, 0.20, mean 0.30.
    base = {"benchmarks": {"x": _run(0.8, 0.4), "y": _run(0.6, 0.4)}}
    # Method: audio 0.60 / 0.50 -> Δ = 0.8-0.6 = 0.20, 0.6-0.5 = 0.10 (text of the BASE),
    # mean 0.15 -> reduction 1 - 0.15/0.30 = 0.5. Its own text accuracy does not enter.
    method = {"benchmarks": {"x": _run(0.1, 0.6), "y": _run(0.1, 0.5)}}
    assert modality_gaps(method, base) == pytest.approx({"x": 0.2, "y": 0.1})
    summary = gap_summary({"base": base, "m": method}, "base")
    assert summary["base"]["mean_delta"] == pytest.approx(0.3)
    assert summary["base"]["reduction"] == pytest.approx(0.0)
    assert summary["m"]["mean_delta"] == pytest.approx(0.15)
    assert summary["m"]["reduction"] == pytest.approx(0.5)
    # A method worse than the base widens the gap: Δ = 0.6, 0.2, mean 0.4, negative reduction.
    worse = {"benchmarks": {"x": _run(0.8, 0.2), "y": _run(0.6, 0.4)}}
    assert gap_summary({"base": base, "w": worse}, "base")["w"]["reduction"] == pytest.approx(
        1 - 0.4 / 0.3
    )
    assert np.isnan(gap_reduction(0.1, 0.0))


def test_gap_over_seeds_is_mean_and_std():
    base = _run(0.9, 0.5)  # Δ_base = 0.4
    seeds = [_run(0.9, 0.6), _run(0.9, 0.7)]  # Δ = 0.3, 0.2 -> reductions 0.25, 0.5
    s = gap_summary({"base": base, "m": seeds}, "base")["m"]
    assert s["runs"] == 2
    assert s["reduction"] == pytest.approx(0.375)
    assert s["reduction_std"] == pytest.approx(np.std([0.25, 0.5], ddof=1))
    assert s["audio"]["b"] == pytest.approx(0.65)


def test_gap_table_markdown():
    base = _run(0.9, 0.5)
    table = gap_table({"base": base, "+ CORD": _run(0.85, 0.7), "+ SFT": _run(0.9, 0.4)}, "base")
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Method | b text acc | b audio acc | b Δ | mean Δ | gap reduction")
    base_row, cord_row, sft_row = lines[2:]
    assert "| 90.0 | 50.0 | 40.0 | 40.0 | — |" in base_row
    assert "70.0 | 20.0 (↓20.0) | 20.0 | 50.0 |" in cord_row  # reduction 1 - 0.2/0.4
    assert "(↑10.0)" in sft_row and "-25.0" in sft_row
    with pytest.raises(ValueError, match="base"):
        gap_table({"m": base}, "missing")


class _EchoAdapter:
    """A stand-in model: answers each prompt with a fixed string per modality and item."""

    pad_token_id = 0
    eos_token_ids = [1]

    def __init__(self, text_answers, audio_answers):
        self.answers = {"text": text_answers, "audio": audio_answers}
        self.seen = {"text": 0, "audio": 0}

    def audio_prompts(self, audios, *, sampling_rate, instruction=None):
        assert sampling_rate == 16000
        return ("audio", len(audios))

    def text_prompts(self, texts, *, instruction=None):
        return ("text", len(texts))

    def generate(self, prompts, *, max_new_tokens, temperature):
        modality, n = prompts
        start = self.seen[modality]
        self.seen[modality] += n
        self._last = self.answers[modality][start : start + n]
        return torch.full((n, 2), 5)

    def decode(self, ids, mask):
        return list(self._last)


def test_evaluate_counts_accuracy_and_unparsed():
    audio = {"array": np.zeros(160, np.float32), "sampling_rate": 16000}
    data = [
        {"id": "q0", "prompt": "Which?", "audio": audio, "reference": "A"},
        {"id": "q1", "prompt": "Which?", "audio": audio, "reference": "B"},
        {"id": "q2", "text": "7+5?", "audio": audio, "answer": "12"},
        {"id": "q3", "text": "2+2?", "audio": audio, "answer": "4"},
    ]
    adapter = _EchoAdapter(
        text_answers=["The answer is A", "(B)", "so the answer is 12", "4"],
        audio_answers=["A", "hmm, A or B", "the answer is 13", "so the answer is 4"],
    )
    r = evaluate(adapter, data, name="mix", batch_size=3, progress=False)
    assert r["n"] == 4 and r["kinds"] == {"choice": 2, "math": 2}
    assert r["text"] == {"accuracy": 1.0, "correct": 4, "unparsed": 0.0}
    assert r["audio"]["accuracy"] == pytest.approx(0.5)
    assert r["audio"]["unparsed"] == pytest.approx(0.25)
    assert r["gap"] == pytest.approx(0.5)
    assert [i["audio_correct"] for i in r["items"]] == [True, False, False, True]
    json.dumps(r)  # results are JSON-serialisable
    with pytest.raises(ValueError, match="empty"):
        evaluate(adapter, [], progress=False)


def test_cli_on_a_voicebench_file_with_the_tiny_model(tmp_path, capsys):
    """End to end: VoiceBench-layout JSONL with WAV files -> JSON, table, reduction vs a base."""
    import soundfile as sf

    from cord.eval.evaluate_cli import add_arguments, run

    rows = []
    for i, (prompt, ref) in enumerate([("Which is largest? (A) 3 (B) 9", "B"), ("2 + 2?", "4")]):
        sf.write(tmp_path / f"q{i}.wav", 0.1 * np.sin(np.arange(8000) / 9.0), 16000)
        rows.append({"audio": f"q{i}.wav", "prompt": prompt, "reference": ref})
    data = tmp_path / "bench.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    base = {"method": "base", "benchmarks": {"bench": _run(0.5, 0.0, "bench")}}
    (tmp_path / "base.json").write_text(json.dumps(base))

    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([
        "--model", "tiny", "--data", str(data), "--max-new-tokens", "4",
        "--output", str(tmp_path / "out.json"), "--markdown", str(tmp_path / "table.md"),
        "--base", str(tmp_path / "base.json"), "--name", "random tiny",
    ])  # fmt: skip
    assert run(args) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    r = out["benchmarks"]["bench"]
    assert r["n"] == 2 and r["kinds"] == {"choice": 1, "math": 1}
    audio_acc = r["audio"]["accuracy"]
    # Δ uses the base's text accuracy (0.5); the base's own Δ is 0.5 - 0.0.
    assert out["gap"]["delta"]["bench"] == pytest.approx(0.5 - audio_acc)
    assert out["gap"]["reduction"] == pytest.approx(1 - (0.5 - audio_acc) / 0.5)
    table = (tmp_path / "table.md").read_text()
    assert "| base |" in table and "| random tiny |" in table
    assert "gap reduction" in capsys.readouterr().out


def test_cli_reports_how_many_parameters_were_trained(tmp_path, capsys):
    """A model saved by the trainer with trainable=projector: cord eval prints the counts."""
    import argparse

    from cord.config import CordConfig
    from cord.data.synthetic import tone_records
    from cord.eval.evaluate import training_info
    from cord.eval.evaluate_cli import add_arguments, run
    from cord.train.trainer import CordTrainer

    texts = ["What is 1 + 2?", "What is 3 * 4?"]
    cfg = CordConfig(model="tiny", objective="sft", trainable="projector", max_steps=1,
                     per_device_train_batch_size=2, max_completion_length=4, seed=0,
                     output_dir=str(tmp_path / "run"), report_to=["none"], save_steps=0,
                     disable_tqdm=True)
    trainer = CordTrainer(cfg, train_dataset=tone_records(texts))
    trainer.train()
    saved = tmp_path / "run" / "final"
    info = training_info(saved)
    assert info["trained_parameters"] == trainer.trained_parameters < info["total_parameters"]
    assert training_info("tiny") is None and training_info(tmp_path) is None
    data = tmp_path / "bench.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "answer": "3", "audio": {
        "array": [0.1] * 8000, "sampling_rate": 16000}}) for t in texts))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", str(saved), "--data", str(data), "--max-new-tokens",
                              "2", "--output", str(tmp_path / "out.json")])
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert (f"trained {info['trained_parameters']:,} of {info['total_parameters']:,} parameters"
            in printed and "trainable=projector" in printed)
    assert json.loads((tmp_path / "out.json").read_text())["training"] == info


def test_model_options_are_declared_once_for_train_eval_and_analyze():
    """``model``, ``long_audio``, ``system_prompt`` (and ``device`` for eval and analyze) come
    from one declaration each (``cord.models.options``): same default, help and choices."""
    import dataclasses

    from cord.cli import _subparser, build_parser
    from cord.config import CordConfig
    from cord.models.options import MODEL_OPTIONS

    fields = {f.name: f for f in dataclasses.fields(CordConfig)}
    for name in ("model", "long_audio", "system_prompt"):
        declared, field = MODEL_OPTIONS[name], fields[name]
        assert (field.default, field.metadata["help"], field.metadata["choices"]) == (
            declared.default, declared.help, declared.choices)
    for command in ("eval", "analyze"):
        actions = {a.dest: a for a in _subparser(build_parser(command), command)._actions}
        for name in ("long_audio", "system_prompt", "device"):
            declared, action = MODEL_OPTIONS[name], actions[name]
            assert (action.default, action.help, action.choices) == (
                declared.default, declared.help, declared.choices), (command, name)
        assert "model" in actions


def test_cli_long_audio_errors_or_chunks(tmp_path, capsys):
    """``cord eval --long-audio chunk`` takes a clip longer than the tiny model's 8 s window,
    which the default refuses in one line naming the item."""
    import soundfile as sf

    from cord.cli import main

    sf.write(tmp_path / "long.wav", 0.1 * np.sin(np.arange(19 * 16000) / 9.0), 16000)
    data = tmp_path / "bench.jsonl"
    data.write_text(json.dumps({"id": "q7", "audio": "long.wav", "prompt": "2 + 2?",
                                "reference": "4"}) + "\n")
    common = ["eval", "--model", "tiny", "--data", str(data), "--max-new-tokens", "2",
              "--device", "cpu", "--output", str(tmp_path / "out.json")]
    assert main(common) == 2
    err = capsys.readouterr().err
    assert "record 'q7': its audio is 19.0 s long, longer than the 8 s window" in err, err
    assert main([*common, "--long-audio", "chunk"]) == 0
    assert json.loads((tmp_path / "out.json").read_text())["benchmarks"]["bench"]["n"] == 1
