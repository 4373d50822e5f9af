"""TTS engines, spoken-form math and ``cord synth`` (all on the CPU, eSpeak NG from the wheel)."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from cord.data.spoken_math import fraction_words, number_to_words, ordinal_words, to_spoken
from cord.data.tts import EspeakEngine, KokoroEngine, TTSEngine, get_engine


@pytest.fixture(scope="module")
def espeak() -> EspeakEngine:
    return get_engine("espeak")


# ---------------------------------------------------------------------------------------------
# eSpeak NG
# ---------------------------------------------------------------------------------------------


def test_espeak_is_a_tts_engine_at_22050_hz(espeak):
    assert isinstance(espeak, TTSEngine)
    assert espeak.sample_rate == 22_050


def test_espeak_short_sentence_has_plausible_audio(espeak):
    audio = espeak.synthesize("What is two plus three?")
    assert audio.dtype == np.float32 and audio.ndim == 1
    seconds = len(audio) / espeak.sample_rate
    assert 0.3 < seconds < 3.0, seconds
    assert np.abs(audio).max() <= 1.0
    rms = float(np.sqrt(np.mean(audio**2)))
    assert rms > 0.01, "audio is (nearly) silent"
    # Speech has pauses and voiced parts: the loudness of 20 ms frames must vary a lot.
    frames = audio[: len(audio) // 441 * 441].reshape(-1, 441)
    frame_rms = np.sqrt((frames**2).mean(axis=1))
    assert frame_rms.max() > 5 * np.percentile(frame_rms, 10) + 1e-4


def test_espeak_duration_grows_with_text(espeak):
    lengths = [len(espeak.synthesize(" ".join(["seven"] * n))) for n in (1, 4, 12)]
    assert lengths[0] < lengths[1] < lengths[2]
    # Roughly linear in the number of words (pauses and ramps make it not exact).
    assert 1.5 < lengths[2] / lengths[1] < 4.5


def test_espeak_rate_changes_duration():
    text = "The quick brown fox jumps over the lazy dog."
    slow = len(get_engine("espeak", rate=120).synthesize(text))
    fast = len(get_engine("espeak", rate=300).synthesize(text))
    assert fast < 0.7 * slow


def test_espeak_voices_by_name_and_language():
    us = get_engine("espeak", voice="en-us").synthesize("tomato")
    gb = get_engine("espeak", voice="en-gb").synthesize("tomato")
    assert len(us) > 0 and len(gb) > 0
    assert not (len(us) == len(gb) and np.allclose(us, gb))


def test_espeak_is_bit_deterministic_whatever_was_spoken_before(espeak):
    # libespeak-ng carries pitch and wave phases across utterances in C statics; the engine
    # reloads the library per utterance so history cannot leak into the samples.
    first = espeak.synthesize("hello there, what is seven plus five?")
    espeak.synthesize("Something else entirely, to move any internal state along.")
    get_engine("espeak", voice="en-gb", rate=300).synthesize("And another voice.")
    np.testing.assert_array_equal(espeak.synthesize("hello there, what is seven plus five?"), first)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"voice": "xx-not-a-voice"}, ValueError),
        ({"voice": ""}, ValueError),
        ({"rate": 10}, ValueError),
        ({"rate": 175.0}, TypeError),
    ],
    ids=["unknown-voice", "empty-voice", "rate-too-low", "rate-not-int"],
)
def test_espeak_bad_options(kwargs, error):
    with pytest.raises(error):
        EspeakEngine(**kwargs)


def test_espeak_rejects_non_text(espeak):
    with pytest.raises(TypeError, match="text must be a str"):
        espeak.synthesize(42)


def test_get_engine_unknown_name():
    with pytest.raises(ValueError, match="engine must be one of"):
        get_engine("festival")


def test_kokoro_needs_local_package_and_weights(tmp_path):
    # The kokoro package is not installed here: a clear error, and never a download attempt.
    # With the package installed, missing weight files give FileNotFoundError instead.
    with pytest.raises((ImportError, FileNotFoundError), match="kokoro|local"):
        KokoroEngine(tmp_path / "missing.pth", tmp_path / "config.json", tmp_path / "af.pt")


@pytest.fixture
def fake_kokoro(monkeypatch):
    """A stand-in ``kokoro`` package with Kokoro's API (KModel, KPipeline yielding
    (graphemes, phonemes, audio) per chunk), recording how it was called."""
    import importlib.machinery
    import sys
    import types

    import torch

    calls = {}

    class KModel:
        def __init__(self, repo_id=None, config=None, model=None, disable_complex=False):
            calls["model"] = {"repo_id": repo_id, "config": config, "model": model}

        def to(self, device):
            calls["device"] = device
            return self

        def eval(self):
            return self

    class KPipeline:
        def __init__(self, lang_code, repo_id=None, model=True, **kwargs):
            assert isinstance(model, KModel), "the engine must hand its model to the pipeline"
            calls["pipeline"] = {"lang_code": lang_code, "repo_id": repo_id}

        def __call__(self, text, voice=None, speed=1):
            calls["call"] = {"text": text, "voice": voice, "speed": speed}
            for n in (2400, 1200):  # two chunks: 0.1 s and 0.05 s at 24 kHz
                yield "g", "p", torch.full((n,), 0.25)

    module = types.ModuleType("kokoro")
    module.__spec__ = importlib.machinery.ModuleSpec("kokoro", None)
    module.KModel, module.KPipeline = KModel, KPipeline
    monkeypatch.setitem(sys.modules, "kokoro", module)
    return calls


def test_kokoro_engine_plumbing_with_local_files(tmp_path, fake_kokoro):
    for name in ("kokoro-v1_0.pth", "config.json", "ef_dora.pt"):
        (tmp_path / name).write_bytes(b"")
    engine = get_engine(
        "kokoro",
        model_path=tmp_path / "kokoro-v1_0.pth",
        config_path=tmp_path / "config.json",
        voice=str(tmp_path / "ef_dora.pt"),
        lang_code="e",  # Spanish goes through espeak G2P, so no spaCy model is needed
        speed=1.2,
    )
    assert isinstance(engine, TTSEngine) and engine.sample_rate == 24_000
    audio = engine.synthesize("hola")
    assert audio.dtype == np.float32 and audio.shape == (3600,)  # the chunks, concatenated
    np.testing.assert_allclose(audio, 0.25)
    assert fake_kokoro["model"]["model"] == str(tmp_path / "kokoro-v1_0.pth")
    assert fake_kokoro["model"]["config"] == str(tmp_path / "config.json")
    assert fake_kokoro["call"] == {"text": "hola", "voice": str(tmp_path / "ef_dora.pt"),
                                   "speed": 1.2}  # fmt: skip


def test_kokoro_engine_errors_with_package_present(tmp_path, fake_kokoro):
    (tmp_path / "m.pth").write_bytes(b"")
    (tmp_path / "c.json").write_bytes(b"")
    (tmp_path / "v.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="model_path must be an existing local file"):
        KokoroEngine(tmp_path / "nope.pth", tmp_path / "c.json", str(tmp_path / "v.pt"))
    with pytest.raises(FileNotFoundError, match="voice must be one or more existing local .pt"):
        KokoroEngine(tmp_path / "m.pth", tmp_path / "c.json", "af_heart")  # a hub name
    if importlib.util.find_spec("en_core_web_sm") is None:
        with pytest.raises(ImportError, match="en_core_web_sm"):
            KokoroEngine(tmp_path / "m.pth", tmp_path / "c.json", str(tmp_path / "v.pt"))
    assert "model" not in fake_kokoro  # nothing was built


# ---------------------------------------------------------------------------------------------
# Spoken-form math
# ---------------------------------------------------------------------------------------------

SPOKEN_CASES = [
    (r"What is $\frac{1}{2} + \frac{3}{4}$?", "What is one half plus three fourths?"),
    (r"$x^2 + 2x - 3 = 0$", "x squared plus two x minus three equals zero"),
    (r"\sqrt{16}", "the square root of sixteen"),
    (r"\sqrt[3]{27}", "the cube root of twenty-seven"),
    (r"\sqrt[4]{16}", "the fourth root of sixteen"),
    ("√16", "the square root of sixteen"),
    (r"3 \times 4", "three times four"),
    (r"a \cdot b", "a times b"),
    ("12 * 7", "twelve times seven"),
    ("2 x 3", "two times three"),
    ("What is 100 / 7?", "What is one hundred divided by seven?"),
    (r"6 \div 2", "six divided by two"),
    ("-5 + 3", "negative five plus three"),
    ("Solve 3x - 5 = -11.", "Solve three x minus five equals negative eleven."),
    ("What is 7 - 2?", "What is seven minus two?"),
    ("x-1", "x minus one"),
    ("3-4", "three minus four"),
    ("25%", "twenty-five percent"),
    (r"50\%", "fifty percent"),
    ("3.14", "three point one four"),
    (".5", "point five"),
    ("-0.75", "negative zero point seven five"),
    ("1,234,567", "one million two hundred thirty-four thousand five hundred sixty-seven"),
    ("3/4 of 12", "three fourths of twelve"),
    ("1/12", "one over twelve"),
    (r"\frac{x+1}{2}", "x plus one over two"),
    (r"\frac12", "one half"),
    (r"2^{10}", "two to the power of ten"),
    ("2^10", "two to the power of ten"),
    ("10^-3", "ten to the power of negative three"),
    ("x² + y³", "x squared plus y cubed"),
    ("x_1 + x_2", "x sub one plus x sub two"),
    (r"x \leq 5", "x is less than or equal to five"),
    ("x >= 5", "x is greater than or equal to five"),
    ("x ≠ 3", "x is not equal to three"),
    (r"$45^\circ$", "forty-five degrees"),
    (r"\pi r^2", "pi r squared"),
    ("5!", "five factorial"),
    (r"\binom{5}{2}", "five choose two"),
    (r"\sum_{i=1}^{n} i", "the sum from i equals one to n of i"),
    (r"\lim_{x \to 0} \frac{\sin x}{x}", "the limit as x approaches zero of sine x over x"),
    (r"\log_2 8", "log base two of eight"),
    ("|x - 3| < 2", "the absolute value of x minus three is less than two"),
    ("If f(x) = 2x + 1, find f(3).", "If f of x equals two x plus one, find f of three."),
    ("Find f'(2) and f''(x).", "Find f prime of two and f double prime of x."),
    ("It's 5 o'clock.", "It's five o'clock."),
    ("The 21st and 3rd", "The twenty-first and third"),
    (r"\sqrt{(31)(30)+1}", "the square root of thirty-one times thirty plus one"),
    (r"\lfloor 3.7 \rfloor", "the floor of three point seven"),
    (r"\lceil -2.1 \rceil", "the ceiling of negative two point one"),
    (
        r"Express $0.\overline{3}$ as a fraction.",
        "Express zero point three repeating as a fraction.",
    ),
    ("A car travels 60 km/h.", "A car travels sixty km per h."),
    ("$5.50 and \\$3", "five dollars and fifty cents and three dollars"),
    ("$1", "one dollar"),
    (r"\text{cm}^2", "cm squared"),
    ("007", "zero zero seven"),
    (
        "Which is largest?\n(A) 5\n(B) 6\n(C) 7\n(D) 8",
        "Which is largest? option A, five. option B, six. option C, seven. option D, eight",
    ),
]


@pytest.mark.parametrize("text, spoken", SPOKEN_CASES, ids=[c[0][:30] for c in SPOKEN_CASES])
def test_to_spoken_hand_cases(text, spoken):
    assert to_spoken(text) == spoken


@pytest.mark.parametrize(
    "text",
    ["Hello, world.", "A well-known result, e.g. this one.", "T-shirt and X-ray", "and/or"],
)
def test_to_spoken_leaves_plain_text_alone(text):
    assert to_spoken(text) == text


def test_to_spoken_math_output_has_no_symbols_or_digits():
    text = r"Compute $\frac{3}{8} \times 16 + \sqrt{81} - 2^{3} = ?$ and give 12.5% of 40."
    spoken = to_spoken(text)
    assert not any(c.isdigit() for c in spoken), spoken
    assert not set(spoken) & set("\\$^_{}+*/=%"), spoken
    assert to_spoken(text) == spoken  # deterministic


def test_to_spoken_rejects_non_text():
    with pytest.raises(TypeError):
        to_spoken(None)


@pytest.mark.parametrize(
    "n, words",
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (105, "one hundred five"),
        (1_000_001, "one million one"),
        (-42, "negative forty-two"),
        (2024, "two thousand twenty-four"),
    ],
)
def test_number_to_words(n, words):
    assert number_to_words(n) == words


def test_ordinals_and_fractions():
    assert [ordinal_words(n) for n in (1, 2, 3, 5, 12, 20, 21, 100)] == [
        "first", "second", "third", "fifth", "twelfth", "twentieth", "twenty-first",
        "one hundredth",
    ]  # fmt: skip
    assert fraction_words(1, 2) == "one half"
    assert fraction_words(3, 2) == "three halves"
    assert fraction_words(2, 3) == "two thirds"
    assert fraction_words(1, 4) == "one fourth"
    assert fraction_words(5, 16) == "five over sixteen"


# ---------------------------------------------------------------------------------------------
# cord synth
# ---------------------------------------------------------------------------------------------

RECORDS = [
    {"id": "q1", "text": "What is $3 + 4$?", "answer": "7"},
    {"id": "q2", "text": r"What is $\frac{1}{2}$ of 10?", "answer": "5"},
    {"id": "q/3", "text": "Which is larger, 9 or 12?", "answer": "12"},
]


def _write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def test_cord_synth_end_to_end_and_resume(tmp_path, capsys):
    from cord.cli import main
    from cord.data.paired import load_paired

    source = tmp_path / "questions.jsonl"
    _write_jsonl(source, RECORDS)
    out = tmp_path / "synth"
    assert main(["synth", str(source), "--output-dir", str(out), "--no-progress"]) == 0
    assert "3 written, 0 kept" in capsys.readouterr().out

    lines = [json.loads(line) for line in (out / "paired.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == ["q1", "q2", "q/3"]
    assert lines[0]["spoken_text"] == "What is three plus four?"
    assert lines[1]["spoken_text"] == "What is one half of ten?"
    wavs = sorted((out / "audio").glob("*.wav"))
    assert len(wavs) == 3
    for r in lines:
        assert r["answer"] in ("7", "5", "12")  # input columns pass through
        audio, sr = sf.read(out / r["audio"])
        assert sr == 22_050 and 0.3 < len(audio) / sr < 4.0
    assert lines[2]["audio"].startswith("audio/q_3-")  # a sanitised, hashed file name

    # Resume: nothing is re-synthesised, files are untouched; a deleted WAV is remade.
    mtimes = {w.name: w.stat().st_mtime_ns for w in wavs}
    (out / lines[1]["audio"]).unlink()
    assert main(["synth", str(source), "--output-dir", str(out), "--no-progress"]) == 0
    assert "1 written, 2 kept" in capsys.readouterr().out
    for w in sorted((out / "audio").glob("*.wav")):
        if w.name != os.path.basename(lines[1]["audio"]):
            assert w.stat().st_mtime_ns == mtimes[w.name]

    # A record whose text changed since the last run is re-synthesised, the others kept.
    _write_jsonl(source, [RECORDS[0], {**RECORDS[1], "text": "What is 2 + 2?"}, RECORDS[2]])
    assert main(["synth", str(source), "--output-dir", str(out), "--no-progress"]) == 0
    assert "1 written, 2 kept" in capsys.readouterr().out
    _write_jsonl(source, RECORDS)

    # The output is a paired dataset load_paired reads (relative audio paths included).
    ds = load_paired(out / "paired.jsonl", sampling_rate=16_000, require_answer=True)
    assert ds["id"] == ["q1", "q2", "q/3"]
    assert all(a["sampling_rate"] == 16_000 and len(a["array"]) > 4_000 for a in ds["audio"])


def test_synthesize_dataset_without_spoken_math_and_with_overwrite(tmp_path, espeak):
    from cord.data.speak import synthesize_dataset

    report = synthesize_dataset(RECORDS[:1], tmp_path, espeak, spoken_math=False, progress=False)
    assert report.written == 1 and report.skipped == 0 and report.audio_seconds > 0.3
    assert report.records[0]["spoken_text"] == RECORDS[0]["text"]
    again = synthesize_dataset(
        RECORDS[:1],
        tmp_path,
        espeak,
        spoken_math=False,
        overwrite=True,
        sample_rate=16_000,
        progress=False,
    )
    assert again.written == 1 and again.skipped == 0
    audio, sr = sf.read(tmp_path / again.records[0]["audio"])
    assert sr == 16_000
    assert len(audio) / sr == pytest.approx(report.audio_seconds, rel=0.01)


def test_synthesize_dataset_bad_records(tmp_path, espeak):
    from cord.data.speak import synthesize_dataset

    with pytest.raises(ValueError, match="record 'b'.*empty"):
        synthesize_dataset([{"id": "a", "text": "hi"}, {"id": "b", "text": "  "}], tmp_path, espeak)
    with pytest.raises(ValueError, match="'a' appears more than once"):
        synthesize_dataset([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], tmp_path, espeak)
    with pytest.raises(ValueError, match="record '0'.*'text' is missing"):
        synthesize_dataset([{"question": "no text column"}], tmp_path, espeak)
    assert not list((tmp_path / "audio").glob("*.wav"))  # validated before any work


def test_synth_reads_csv_and_honours_limit(tmp_path):
    import pandas as pd

    from cord.cli import main

    pd.DataFrame(RECORDS).to_csv(tmp_path / "q.csv", index=False)
    out = tmp_path / "out"
    assert main(["synth", str(tmp_path / "q.csv"), "-o", str(out), "--limit", "2",
                 "--no-spoken-math", "--no-progress"]) == 0  # fmt: skip
    lines = (out / "paired.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0])["spoken_text"] == RECORDS[0]["text"]


_MATH_PIECES = list("0123456789xyAB +-*/=^_{}()[]$\\%!.,<>|²√π") + [
    "\\frac", "\\sqrt", "\\times", "\\left(", "\\text{", "\n",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_MATH_PIECES), max_size=30).map("".join))
def test_to_spoken_never_fails_on_math_like_text(text):
    spoken = to_spoken(text)
    assert isinstance(spoken, str)
    assert spoken == spoken.strip() and "  " not in spoken
    assert to_spoken(text) == spoken
