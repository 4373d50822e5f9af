"""Bad records (``cord.data.validate``): each kind is found and listed before step one, the
run fails on them or skips them, and ``max_bad_records`` bounds how many it may skip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from child_runs import rows

from cord.cli import main as cord_main
from cord.config import CordConfig
from cord.data.synthetic import tone_audio, tone_records
from cord.data.validate import BAD_RECORDS_FILE, load_paired_checked
from cord.train.trainer import CordTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _wav(path: Path, audio: np.ndarray, subtype: str | None = None) -> str:
    sf.write(path, audio, 16000, subtype=subtype)
    return path.name


@pytest.fixture
def bad_corpus(tmp_path):
    """Four good records and one of each bad kind, as a JSONL file with wav files."""
    good = [{"id": f"ok{i}", "text": f"What is {i} + 1?", "answer": str(i + 1),
             "audio": _wav(tmp_path / f"ok{i}.wav", tone_audio(f"{i} + 1", 16000))}
            for i in range(4)]
    full = tmp_path / "ok0.wav"
    (tmp_path / "truncated.wav").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    (tmp_path / "garbage.wav").write_bytes(b"this is not audio at all" * 10)
    tone = tone_audio("x", 16000)
    bad = [
        {"id": "missing", "text": "What is 1?", "answer": "1", "audio": "nope.wav"},
        {"id": "unreadable", "text": "What is 2?", "answer": "2", "audio": "garbage.wav"},
        {"id": "truncated", "text": "What is 3?", "answer": "3", "audio": "truncated.wav"},
        {"id": "nan", "text": "What is 4?", "answer": "4",
         "audio": _wav(tmp_path / "nan.wav", np.r_[tone[:100], np.nan].astype(np.float32),
                       "FLOAT")},
        {"id": "empty_audio", "text": "What is 5?", "answer": "5",
         "audio": _wav(tmp_path / "empty.wav", np.zeros(0, np.float32))},
        {"id": "empty_text", "text": "  ", "answer": "6", "audio": "ok1.wav"},
    ]
    duplicate = {"id": "ok2", "text": "What is 7?", "answer": "7", "audio": "ok3.wav"}
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good[:2] + bad + good[2:] + [duplicate]))
    return path


KINDS = {"missing": "missing audio file", "unreadable": "unreadable audio",
         "truncated": "truncated audio", "nan": "NaN/Inf audio",
         "empty_audio": "empty audio", "empty_text": "empty text", "ok2": "duplicate id"}


def _trainer_config(corpus, out, **kw):
    return CordConfig(**{"dataset": str(corpus), "output_dir": str(out), "max_steps": 1,
                         "max_completion_length": 4, "num_generations": 2,
                         "report_to": ["none"], "disable_tqdm": True, "seed": 0,
                         "logging_steps": 1, **kw})


def test_bad_records_error_fails_before_step_one(bad_corpus, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"7 of 11 records are bad .* the first is record "
                       r"'missing' \(row 2\): audio file .*nope.wav' does not exist"):
        CordTrainer(_trainer_config(bad_corpus, out))
    assert not (out / "metrics.jsonl").exists()
    listed = [json.loads(x) for x in (out / BAD_RECORDS_FILE).read_text().splitlines()]
    assert {r["id"]: r["kind"] for r in listed} == KINDS


def test_bad_records_skip_trains_on_the_rest(bad_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    t = CordTrainer(_trainer_config(bad_corpus, out, on_bad_record="skip"))
    assert sorted(t.train_dataset["id"]) == ["ok0", "ok1", "ok2", "ok3"]
    assert "skipped 7 bad record(s) of 11" in capsys.readouterr().out
    t.train()
    assert [r["step"] for r in rows(out)] == [1]
    listed = [json.loads(x) for x in (out / BAD_RECORDS_FILE).read_text().splitlines()]
    assert {r["id"]: r["kind"] for r in listed} == KINDS
    by_id = {r["id"]: r["reason"] for r in listed}
    assert "truncated" in by_id["truncated"] and "NaN" in by_id["nan"]
    assert "row 8 has the same id" in by_id["ok2"]


@pytest.mark.parametrize("limit", [1, 0.5])
def test_bad_records_beyond_the_limit_stop_the_run(bad_corpus, tmp_path, limit):
    with pytest.raises(ValueError, match=f"7 of 11 records are bad .* more than "
                       f"max_bad_records={limit} allows"):
        load_paired_checked(bad_corpus, on_bad_record="skip", max_bad_records=limit)
    assert len(load_paired_checked(bad_corpus, on_bad_record="skip", max_bad_records=7)) == 4


def test_bad_records_limit_through_cord_train(bad_corpus, tmp_path, capsys):
    code = cord_main(["train", f"dataset={bad_corpus}", f"output_dir={tmp_path / 'o'}",
                      "on_bad_record=skip", "max_bad_records=1", "report_to=none"])
    err = capsys.readouterr().err
    assert code == 2 and "more than max_bad_records=1 allows" in err, err[-500:]


@pytest.fixture
def long_clip_corpus(tmp_path):
    """Four records, the last a 40 s clip: longer than the tiny model's 8 s window."""
    records = [{"id": f"ok{i}", "text": f"What is {i} + 1?", "answer": str(i + 1),
                "audio": _wav(tmp_path / f"ok{i}.wav", tone_audio(f"{i} + 1", 16000))}
               for i in range(3)]
    long = np.tile(tone_audio("4 + 1", 16000), 40 * 16000 // len(tone_audio("4 + 1", 16000)) + 1)
    records.append({"id": "long", "text": "What is 4 + 1?", "answer": "5",
                    "audio": _wav(tmp_path / "long.wav", long[:40 * 16000])})
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_clip_longer_than_the_window_fails_before_step_one(long_clip_corpus, tmp_path):
    """Item 4 of 4 is refused in the data pass that decodes every clip, before step 1, not at
    its batch (with max_steps=4 that was step 2)."""
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"1 of 4 records are bad \(1 audio too long\): 'long'; "
                       r"the first is record 'long' \(row 3\): its audio is 40\.0 s long, "
                       r"longer than the 8 s window .*long_audio=chunk"):
        CordTrainer(_trainer_config(long_clip_corpus, out, max_steps=4))
    assert not (out / "metrics.jsonl").exists()


def test_clips_longer_than_the_window_are_named_or_skipped(long_clip_corpus, tmp_path, capsys):
    records = [json.loads(x) for x in long_clip_corpus.read_text().splitlines()]
    records.insert(0, {**records[-1], "id": "long0"})
    two = tmp_path / "two.jsonl"
    two.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match=r"2 of 5 records are bad \(2 audio too long\): "
                       r"'long0', 'long'; "):
        CordTrainer(_trainer_config(two, tmp_path / "a"))
    t = CordTrainer(_trainer_config(two, tmp_path / "b", on_bad_record="skip"))
    assert sorted(t.train_dataset["id"]) == ["ok0", "ok1", "ok2"]
    assert "skipped 2 bad record(s) of 5 (2 audio too long)" in capsys.readouterr().out
    chunked = CordTrainer(_trainer_config(two, tmp_path / "c", long_audio="chunk"))
    assert len(chunked.train_dataset) == 5  # the family's own chunking takes them


def test_missing_answer_and_list_sources(tmp_path):
    records = tone_records(["What is 1 + 1?", "What is 2 + 2?", "What is 3 + 3?"])
    for r, answer in zip(records, ["2", None, ""], strict=True):
        r["answer"] = answer
    records.append({**records[0]})  # a duplicate id
    with pytest.raises(ValueError, match="record '1' .*answer is empty"):
        load_paired_checked(records, require_answer=True, output_dir=tmp_path)
    listed = [json.loads(x) for x in (tmp_path / BAD_RECORDS_FILE).read_text().splitlines()]
    assert [(r["id"], r["kind"]) for r in listed] == [
        ("1", "missing answer"), ("2", "missing answer"), ("0", "duplicate id")]
    kept = load_paired_checked(records, on_bad_record="skip", report=lambda s: None)
    assert kept["id"] == ["0", "1", "2"]  # answers are optional without require_answer


def test_bad_record_options_are_checked():
    with pytest.raises(ValueError, match="on_bad_record must be one of"):
        CordConfig(on_bad_record="ignore")
    with pytest.raises(ValueError, match="max_bad_records must be"):
        CordConfig(max_bad_records=2.5)
    with pytest.raises(ValueError, match="max_bad_records must be"):
        CordConfig(max_bad_records=-1)
    assert CordConfig(max_bad_records=0.01).max_bad_records == 0.01
