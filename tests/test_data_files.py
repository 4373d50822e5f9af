"""A broken dataset file, as a new user makes one (issue 20, item 1): a ``.jsonl`` truncated
mid-line, empty, actually CSV, or holding a line ``[1,2,3]``. ``cord train``, ``cord eval`` and
``cord synth`` answer in one line with status 2, naming the file, the line and what was
expected (it was a pyarrow ``DatasetGenerationError`` traceback); with ``on_bad_record=skip``
malformed lines are skipped and counted like bad records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from cord.cli import main
from cord.data.paired import load_paired
from cord.data.sources import read_records
from cord.data.validate import BAD_RECORDS_FILE, load_paired_checked

GOOD = json.dumps({"id": "a", "text": "What is 1 + 2?", "audio": "a.wav", "answer": "3"})

#: name -> (file contents, what the error says after the file name)
BROKEN = {
    "truncated": (GOOD + "\n" + GOOD[:25], "line 2: expected one JSON object per line"),
    "empty": ("", "the file is empty; expected one JSON object per line"),
    "csv": ("id,text,audio,answer\na,What is 1 + 2?,a.wav,3\n",
            "line 1: expected one JSON object per line"),
    "array": (GOOD + "\n[1,2,3]\n", "line 2: expected one JSON object per line"),
}
#: what each broken file was found to be
FOUND = {"truncated": "got an unfinished object (the file looks truncated)", "empty": "",
         "csv": "got comma-separated text (a CSV file?", "array": "got a JSON array: [1,2,3]"}


def _write_wav(path, seconds=0.2, sr=16_000):
    sf.write(path, 0.1 * np.sin(np.arange(int(seconds * sr)) / 5.0).astype(np.float32), sr)


def _broken(tmp_path, name):
    path = tmp_path / f"{name}.jsonl"
    path.write_text(BROKEN[name][0])
    _write_wav(tmp_path / "a.wav")
    return path


COMMANDS = {
    "train": lambda p, tmp: ["train", f"dataset={p}", f"output_dir={tmp / 'out'}"],
    "eval": lambda p, tmp: ["eval", "--model", "tiny", "--data", str(p)],
    "synth": lambda p, tmp: ["synth", str(p), "-o", str(tmp / "out")],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_jsonl_is_one_line_naming_file_and_line(tmp_path, capsys, command, name):
    path = _broken(tmp_path, name)
    assert main(COMMANDS[command](path, tmp_path)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{path}: {BROKEN[name][1]}" in err and FOUND[name] in err
    assert "Traceback" not in err and "DatasetGenerationError" not in err
    assert not (tmp_path / "out").exists()  # nothing was built or written


def test_the_array_line_is_named_by_its_line(tmp_path):
    """It was "every line must be a JSON object", with no line and nothing about the array."""
    path = _broken(tmp_path, "array")
    with pytest.raises(ValueError, match=r"array\.jsonl: line 2: .* got a JSON array"):
        read_records(path)
    with pytest.raises(ValueError, match=r"line 2: .* got a JSON array"):
        load_paired(path)


@pytest.mark.parametrize("name", ["truncated", "array"])
def test_skip_counts_malformed_lines_as_bad_records(tmp_path, name):
    path = _broken(tmp_path, name)
    seen = []
    ds = load_paired_checked(path, on_bad_record="skip", max_bad_records=1,
                             output_dir=tmp_path, report=seen.append)
    assert list(ds["id"]) == ["a"]
    assert seen == [f"skipped 1 bad record(s) of 2 (1 malformed line): ids and reasons in "
                    f"{tmp_path / BAD_RECORDS_FILE}"]
    (listed,) = [json.loads(x) for x in (tmp_path / BAD_RECORDS_FILE).read_text().splitlines()]
    assert listed["id"] == "line 2" and listed["kind"] == "malformed line"
    assert listed["reason"].startswith(f"{path}: line 2: expected one JSON object")
    # over the limit: the malformed line counts like any bad record
    with pytest.raises(ValueError, match=r"1 of 2 records are bad \(1 malformed line\), more "
                                         r"than max_bad_records=0\.1"):
        load_paired_checked(path, on_bad_record="skip", max_bad_records=0.1)
    with pytest.raises(ValueError, match=r"line 2: .*; fix the file, or set on_bad_record=skip"):
        load_paired_checked(path)


def test_skip_counts_malformed_lines_with_the_other_bad_records(tmp_path):
    path = tmp_path / "mixed.jsonl"
    _write_wav(tmp_path / "a.wav")
    missing = json.dumps({"id": "b", "text": "x", "audio": "nope.wav"})
    path.write_text("\n".join([GOOD, "[1,2,3]", missing, "not json", ""]))
    with pytest.raises(ValueError, match=r"3 of 4 records are bad \(2 malformed line, 1 "
                                         r"missing audio file\), more than max_bad_records=2"):
        load_paired_checked(path, on_bad_record="skip", max_bad_records=2)
    assert len(load_paired_checked(path, on_bad_record="skip", report=lambda s: None)) == 1


def test_nothing_but_malformed_lines_cannot_be_skipped(tmp_path):
    path = _broken(tmp_path, "csv")
    with pytest.raises(ValueError, match="no line of the file is a JSON object"):
        load_paired_checked(path, on_bad_record="skip")


@pytest.mark.parametrize("text, says", [("", "EmptyDataError"),
                                        ('id,text\n"a,b\n', "EOF inside string")])
def test_a_broken_csv_names_the_file(tmp_path, text, says):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"bad\.csv: cannot be read as csv: .*{says}"):
        load_paired(path)


def test_answers_of_mixed_types_still_load(tmp_path):
    """The JSONL is parsed here now, not by arrow's JSON reader, which made such a column
    strings; so does the line reader."""
    _write_wav(tmp_path / "a.wav")
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "text": "t", "audio": "a.wav", "answer": a})
                              for i, a in enumerate([5, "x", None])))
    assert list(load_paired(path)["answer"]) == ["5", "x", None]
