"""cord demo at the quick size, end to end: speech, pre-training, base eval, SFT / forward KL /
CORD through the trainer, Table 1 and the KL plots (well under two minutes on 2 cores)."""

from __future__ import annotations

import json

import pytest

from cord.demo.demo import BASE_NAME, METHODS, run_demo
from cord.demo.gap_task import QUICK, SlottedSpeech, all_questions, make_splits


def test_splits_are_disjoint_and_held_out():
    splits = make_splits(QUICK)
    train = {r["id"] for r in splits["train"]}
    held_out = {r["id"] for r in splits["eval"]}
    assert not train & held_out
    audio_qa = {r["id"] for r in splits["audio_qa"]}
    distill = {r["id"] for r in splits["distill"]}
    # Post-training distils on questions never answered from audio in pre-training.
    assert audio_qa | distill == train and not audio_qa & distill
    assert len(held_out) == QUICK.eval_questions and len(splits["audio_qa"]) == QUICK.audio_qa
    for r in all_questions(QUICK):
        a, op, b = r["text"].split()[-3:]
        words = "zero one two three four five six seven eight nine".split()
        value = words.index(a) + (1 if op == "plus" else -1) * words.index(b)
        assert r["answer"] == str(value) and value >= 0


def test_slotted_speech_is_cached_and_deterministic(tmp_path):
    speech = SlottedSpeech(slot_seconds=0.3, cache_dir=tmp_path)
    wave = speech.speak("seven plus two")
    assert wave.shape == (3 * speech.slot,) and wave.dtype.name == "float32"
    assert abs(wave).max() > 0.01  # real speech, not silence
    again = SlottedSpeech(slot_seconds=0.3, cache_dir=tmp_path)  # read back from disk
    assert set(again.clips) == {"seven", "plus", "two"}
    assert (again.speak("seven plus two") == wave).all()


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    results = run_demo(size="tiny", seeds=(0,), output_dir=out / "out",
                       cache_dir=out / "cache", progress=False)
    return out, results


def test_quick_demo_end_to_end(quick_demo):
    out, results = quick_demo
    base = results["base"]["benchmarks"]["arith"]
    assert base["n"] == QUICK.eval_questions
    # The pre-training opens a real modality gap: the same questions are answered far better
    # from text than from speech (seeds are fixed and the demo runs on one thread).
    assert base["text"]["accuracy"] - base["audio"]["accuracy"] >= 0.2
    # Every method ran from the same base and was evaluated in both modalities.
    for name in METHODS.values():
        (run,) = results["runs"][name]
        r = run["benchmarks"]["arith"]
        assert 0.0 <= r["audio"]["accuracy"] <= 1.0 and 0.0 <= r["text"]["accuracy"] <= 1.0
        # Δ and the reduction follow the paper's definitions from the measured accuracies.
        delta_base = base["text"]["accuracy"] - base["audio"]["accuracy"]
        delta = base["text"]["accuracy"] - r["audio"]["accuracy"]
        s = results["summary"][name]
        assert s["delta"]["arith"] == pytest.approx(delta)
        if delta_base:
            assert s["reduction"] == pytest.approx(1 - delta / delta_base)
    table = (out / "out" / "table.md").read_text()
    for row in (BASE_NAME, *METHODS.values()):
        assert f"| {row} |" in table
    report = (out / "out" / "README.md").read_text()
    assert table.strip() in report and results["verdict"] in report
    saved = json.loads((out / "out" / "results.json").read_text())
    assert saved["verdict"] == results["verdict"] and "gap reduction" in saved["verdict"]
    for png in ("kl_distribution.png", "kl_tokens.png", "kl_rollout.png"):
        assert (out / "out" / png).read_bytes()[:4] == b"\x89PNG"
    stats = results["kl_analysis"]
    assert stats["n_rollouts"] == QUICK.eval_questions and stats["n_tokens"] > 0


def test_pretrained_base_is_cached(quick_demo):
    from cord.demo.gap_task import attach_audio, pretrained_base

    out, results = quick_demo
    splits = make_splits(QUICK)
    speech = SlottedSpeech(slot_seconds=QUICK.slot_seconds, cache_dir=out / "cache")
    splits = {k: attach_audio(v, speech) for k, v in splits.items()}
    assert results["base_from_cache"] is False
    _, cached = pretrained_base(QUICK, splits, cache_dir=out / "cache", progress=False)
    assert cached is True


def test_bad_arguments():
    with pytest.raises(ValueError, match="methods"):
        run_demo(size="tiny", methods=("dpo",))
    with pytest.raises(ValueError, match="size"):
        run_demo(size="huge")
