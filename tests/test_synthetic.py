"""The synthetic paired sets of cord.data.synthetic: tasks, tone audio, and their audio."""

from __future__ import annotations

import numpy as np
import pytest

from cord.data.paired import collate_paired, resample
from cord.data.synthetic import (
    make_arithmetic_dataset,
    make_multiple_choice_dataset,
    synthetic_dataset,
    tone_audio,
    tone_records,
)


def test_tone_audio_is_deterministic_and_text_dependent():
    a = tone_audio("What is 1 + 2?", 16_000)
    assert a.dtype == np.float32 and a.ndim == 1 and a.size == 14 * 640
    np.testing.assert_array_equal(a, tone_audio("What is 1 + 2?", 16_000))
    assert not np.array_equal(a, tone_audio("What is 1 + 3?", 16_000))
    batch = collate_paired(tone_records(["a b", "c"], 8_000))
    assert batch.ids == ["0", "1"] and batch.sampling_rate == 8_000


def test_synthetic_dataset_with_tones_and_bad_names():
    records = synthetic_dataset("multiple_choice", 3, seed=1, audio="tone", sampling_rate=8_000)
    assert [r["answer"] for r in records] == [r["answer"] for r in
                                              make_multiple_choice_dataset(3, seed=1)]
    assert all(r["audio"]["sampling_rate"] == 8_000 for r in records)
    np.testing.assert_array_equal(records[0]["audio"]["array"],
                                  tone_audio(records[0]["text"], 8_000))
    with pytest.raises(ValueError, match="name must be one of"):
        synthetic_dataset("algebra", 2, audio="tone")
    with pytest.raises(ValueError, match="audio must be one of"):
        synthetic_dataset("arithmetic", 2, audio="speech")


def test_resample_rejects_multichannel_audio():
    with pytest.raises(ValueError, match="1-D waveform"):
        resample(np.zeros((10, 2), np.float32), 16_000, 8_000)


def test_make_arithmetic_dataset_is_correct_and_seeded():
    records = make_arithmetic_dataset(50, seed=3)
    assert records == make_arithmetic_dataset(50, seed=3)
    assert records != make_arithmetic_dataset(50, seed=4)
    assert len({r["id"] for r in records}) == 50
    for r in records:
        a, op, b = r["text"].removeprefix("What is ").removesuffix("?").split()
        expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert r["answer"] == str(expected) and int(r["answer"]) >= 0
        assert r["kind"] == "math"
    assert {r["text"].split()[3] for r in make_arithmetic_dataset(30, operations="+")} == {"+"}


def test_make_multiple_choice_dataset_is_consistent():
    records = make_multiple_choice_dataset(60, seed=1)
    assert records == make_multiple_choice_dataset(60, seed=1)
    positions = {r["answer"] for r in records}
    assert positions == set("ABCD")  # the gold letter is not always in one place
    for r in records:
        question, *options = r["text"].split("\n")
        assert [o[:3] for o in options] == ["(A)", "(B)", "(C)", "(D)"]
        chosen = options["ABCD".index(r["answer"])][4:]
        values = [o[4:] for o in options]
        assert len(set(values)) == 4, r
        if question == "Which number is the largest?":
            assert int(chosen) == max(int(v) for v in values)
        elif question.startswith("What is "):
            a, _, b = question.removeprefix("What is ").removesuffix("?").split()
            assert int(chosen) == int(a) + int(b)
    assert make_multiple_choice_dataset(1, instruction="Answer with the letter.")[0][
        "text"
    ].endswith("\nAnswer with the letter.")


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_synthetic_tasks_reject_bad_n(n):
    with pytest.raises(ValueError, match="n must be a positive int"):
        make_arithmetic_dataset(n)
    with pytest.raises(ValueError, match="n must be a positive int"):
        make_multiple_choice_dataset(n)
