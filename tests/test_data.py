"""Paired data: reading every source kind, resampling, batching, clear errors, synthetic tasks."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import soundfile as sf

from cord.data.paired import (
    PairedBatch,
    PairedExample,
    collate_paired,
    load_audio,
    load_paired,
    read_records,
    resample,
)


def _tone(seconds: float, sr: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    mono = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


@pytest.fixture
def wav_dir(tmp_path):
    """q1: 0.5 s mono at 22.05 kHz, q2: 0.25 s stereo at 8 kHz, both as WAV files."""
    sf.write(tmp_path / "q1.wav", _tone(0.5, 22_050), 22_050)
    sf.write(tmp_path / "q2.wav", _tone(0.25, 8_000, channels=2), 8_000)
    return tmp_path


RECORDS = [
    {"id": "q1", "text": "What is 2 + 3?", "audio": "q1.wav", "answer": "5"},
    {"id": "q2", "text": "What is 4 * 4?", "audio": "q2.wav", "answer": "16"},
]


def _write(path, records, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "csv":
        datasets.Dataset.from_list(records).to_csv(str(path), index=False)
    elif fmt == "parquet":
        datasets.Dataset.from_list(records).to_parquet(str(path))
    elif fmt == "saved":
        datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path


def _check_decoded(ds, sampling_rate=16_000):
    assert ds["id"] == ["q1", "q2"]
    assert ds["text"] == ["What is 2 + 3?", "What is 4 * 4?"]
    assert ds["answer"] == ["5", "16"]
    first, second = ds[0]["audio"], ds[1]["audio"]
    assert first["sampling_rate"] == second["sampling_rate"] == sampling_rate
    # Durations survive resampling: 0.5 s and 0.25 s at the new rate.
    assert len(first["array"]) == int(0.5 * sampling_rate)
    assert len(second["array"]) == int(0.25 * sampling_rate)
    assert ds.features["audio"]["array"].feature.dtype == "float32"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "saved"])
def test_load_paired_from_files(wav_dir, fmt):
    # Relative audio paths resolve against the data file's folder, not the working directory.
    # For a saved dataset (a folder) the paths must be absolute or relative to that folder.
    records = RECORDS
    if fmt == "saved":
        records = [{**r, "audio": str(wav_dir / r["audio"])} for r in RECORDS]
    name = {"jsonl": "p.jsonl", "csv": "p.csv", "parquet": "p.parquet", "saved": "saved"}[fmt]
    path = _write(wav_dir / name, records, fmt)
    _check_decoded(load_paired(path, sampling_rate=16_000, require_answer=True))


def test_load_paired_from_list_with_mono_and_stereo_arrays():
    # A list may mix (samples,) and (samples, channels) arrays, which one arrow column could
    # not hold: load_paired decodes lists before they become a dataset.
    records = [
        {"id": "q1", "text": "t1", "answer": "5",
         "audio": {"array": _tone(0.5, 22_050), "sampling_rate": 22_050}},
        {"id": "q2", "text": "t2", "answer": "16",
         "audio": {"array": _tone(0.25, 8_000, channels=2), "sampling_rate": 8_000}},
    ]  # fmt: skip
    ds = load_paired(records, sampling_rate=16_000)
    assert [len(a["array"]) for a in ds["audio"]] == [8_000, 4_000]
    assert ds["text"] == ["t1", "t2"] and ds["answer"] == ["5", "16"]
    assert ds.features["audio"]["sampling_rate"].dtype == "int32"


def test_load_paired_list_keeps_columns_absent_from_the_first_record():
    audio = {"array": _tone(0.1, 16_000), "sampling_rate": 16_000}
    records = [{"text": "a", "audio": audio}, {"text": "b", "audio": audio, "answer": 3, "n": 1}]
    ds = load_paired(records)
    assert ds["answer"] == [None, "3"] and ds["n"] == [None, 1] and ds["id"] == ["0", "1"]


def test_load_paired_from_dataset_with_arrays():
    ds = datasets.Dataset.from_list(
        [{"id": 7, "text": "t", "audio": {"array": _tone(0.5, 22_050), "sampling_rate": 22_050}}]
    )
    out = load_paired(ds, sampling_rate=16_000)
    assert out["id"] == ["7"] and len(out[0]["audio"]["array"]) == 8_000


def test_resampling_preserves_a_tone():
    tone = _tone(1.0, 22_050, freq=440.0)
    out = resample(tone, 22_050, 16_000)
    assert out.dtype == np.float32 and len(out) == 16_000
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16_000 / len(out) - 440.0) < 2.0
    assert resample(tone, 22_050, 22_050) is not None
    np.testing.assert_array_equal(resample(tone, 22_050, 22_050), tone)


def test_stereo_becomes_mono_average(tmp_path):
    left = _tone(0.1, 16_000)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 16_000)
    audio, sr = load_audio(str(tmp_path / "s.wav"))
    assert sr == 16_000 and audio.ndim == 1
    np.testing.assert_allclose(audio, left / 2, atol=1e-4)  # 16-bit WAV quantisation
    channels_first, _ = load_audio({"array": stereo.T, "sampling_rate": 16_000})
    np.testing.assert_allclose(channels_first, left / 2, atol=1e-6)


def test_int16_pcm_array_is_scaled():
    pcm = (_tone(0.1, 16_000) * 32767).astype(np.int16)
    audio, _ = load_audio({"array": pcm, "sampling_rate": 16_000})
    assert 0.45 < np.abs(audio).max() <= 0.5


def test_missing_id_uses_row_number_and_extra_columns_pass_through(wav_dir):
    records = [{"text": "t", "audio": "q1.wav", "kind": "math"}]
    ds = load_paired(_write(wav_dir / "p.jsonl", records, "jsonl"))
    assert ds["id"] == ["0"] and ds["kind"] == ["math"]
    assert "answer" not in ds.column_names


def test_datasets_audio_feature_is_decoded_with_soundfile(wav_dir):
    ds = datasets.Dataset.from_dict(
        {"id": ["q1"], "text": ["t"], "audio": [str(wav_dir / "q1.wav")]}
    ).cast_column("audio", datasets.Audio())
    out = load_paired(ds, sampling_rate=16_000)
    assert len(out[0]["audio"]["array"]) == 8_000


# ---------------------------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------------------------


def test_error_missing_column(wav_dir):
    with pytest.raises(ValueError, match=r"missing column\(s\) \['audio'\]"):
        load_paired([{"id": "a", "text": "t"}])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['answer'\]"):
        load_paired([{"id": "a", "text": "t", "audio": "q1.wav"}], require_answer=True)


def test_error_names_record_for_missing_audio_file(wav_dir):
    records = [RECORDS[0], {"id": "gone", "text": "t", "audio": "nope.wav"}]
    with pytest.raises(ValueError, match=r"record 'gone': audio file .*nope\.wav.* does not exist"):
        load_paired(_write(wav_dir / "p.jsonl", records, "jsonl"))


def test_error_names_record_for_unreadable_audio(wav_dir):
    (wav_dir / "bad.wav").write_bytes(b"this is not audio")
    records = [{"id": "broken", "text": "t", "audio": "bad.wav"}]
    with pytest.raises(ValueError, match=r"record 'broken': cannot read audio file"):
        load_paired(_write(wav_dir / "p.jsonl", records, "jsonl"))


@pytest.mark.parametrize(
    "record, message",
    [
        ({"id": "e", "text": "   ", "audio": "q1.wav"}, r"record 'e': text is empty"),
        ({"id": "n", "text": None, "audio": "q1.wav"}, r"record 'n': text is empty"),
        ({"id": "s", "text": "t", "audio": {"array": [0.1], "sampling_rate": 0}},
         r"record 's': audio dict needs a positive int 'sampling_rate'"),
        ({"id": "z", "text": "t", "audio": {"array": [], "sampling_rate": 16000}},
         r"record 'z': audio 'array' must be a non-empty"),
        ({"id": "f", "text": "t", "audio": {"array": [0.1, float("nan")], "sampling_rate": 8000}},
         r"record 'f': audio contains NaN"),
    ],
    ids=["blank-text", "null-text", "bad-rate", "empty-array", "nan-audio"],
)  # fmt: skip
def test_error_names_record(wav_dir, record, message):
    path = _write(wav_dir / "p.jsonl", [record], "jsonl")
    with pytest.raises(ValueError, match=message):
        load_paired(path)


def test_error_empty_answer_when_required(wav_dir):
    records = [{**RECORDS[0], "answer": ""}]
    with pytest.raises(ValueError, match=r"record 'q1': answer is empty"):
        load_paired(_write(wav_dir / "p.jsonl", records, "jsonl"), require_answer=True)


def test_error_duplicate_ids(wav_dir):
    records = [RECORDS[0], {**RECORDS[0], "text": "again"}]
    with pytest.raises(ValueError, match=r"'q1' appears more than once"):
        load_paired(_write(wav_dir / "p.jsonl", records, "jsonl"))


@pytest.mark.parametrize(
    "source, error, message",
    [
        ("/nonexistent/data.jsonl", ValueError, "existing file or folder"),
        (42, TypeError, "source must be a path"),
        ([], ValueError, "empty list"),
        (["not a dict"], TypeError, "record 0 is str"),
    ],
)
def test_error_bad_source(source, error, message):
    with pytest.raises(error, match=message):
        load_paired(source)


def test_error_unsupported_suffix_and_rate(tmp_path):
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ValueError, match=r"\.jsonl, \.json, \.csv or \.parquet"):
        load_paired(tmp_path / "data.txt")
    with pytest.raises(ValueError, match="sampling_rate must be a positive int"):
        load_paired([{"text": "t", "audio": "x.wav"}], sampling_rate=0)


def test_dataset_dict_needs_one_split(wav_dir):
    row = {"id": ["q1"], "text": ["t"], "audio": [str(wav_dir / "q1.wav")]}
    one = datasets.DatasetDict({"train": datasets.Dataset.from_dict(row)})
    assert load_paired(one)["id"] == ["q1"]
    two = datasets.DatasetDict({"train": one["train"], "test": one["train"]})
    with pytest.raises(ValueError, match=r"splits \['test', 'train'\]"):
        load_paired(two)


# ---------------------------------------------------------------------------------------------
# Batching and raw records
# ---------------------------------------------------------------------------------------------


def test_collate_paired_with_dataloader(wav_dir):
    from torch.utils.data import DataLoader

    ds = load_paired(_write(wav_dir / "p.jsonl", RECORDS, "jsonl"), sampling_rate=16_000)
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate_paired)))
    assert isinstance(batch, PairedBatch)
    assert batch.ids == ["q1", "q2"] and batch.answers == ["5", "16"]
    assert batch.texts[0] == "What is 2 + 3?" and batch.sampling_rate == 16_000
    assert [a.shape for a in batch.audios] == [(8_000,), (4_000,)]
    assert all(a.dtype == np.float32 for a in batch.audios)


def test_collate_paired_examples_and_errors():
    a = PairedExample("a", "t", np.zeros(10, np.float32), 16_000)
    b = PairedExample("b", "u", np.zeros(5, np.float32), 8_000, answer="x")
    assert collate_paired([a]).answers == [None]
    with pytest.raises(ValueError, match="share one sampling rate"):
        collate_paired([a, b])
    with pytest.raises(ValueError, match="batch is empty"):
        collate_paired([])


def test_read_records_jsonl_with_mixed_answer_types(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = ['{"id": 1, "text": "a", "answer": 5}', "", '{"id": 2, "text": "b", "answer": "x"}']
    path.write_text("\n".join(lines) + "\n")
    assert read_records(path) == [
        {"id": 1, "text": "a", "answer": 5},
        {"id": 2, "text": "b", "answer": "x"},
    ]
    path.write_text('{"id": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"line 2: expected one JSON object .* invalid JSON"):
        read_records(path)


# ---------------------------------------------------------------------------------------------
# Synthetic tasks
# ---------------------------------------------------------------------------------------------
