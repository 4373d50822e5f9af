"""cord demo: the task's splits, the learning-rate rule, the paired bootstrap, and the quick
mode end to end (preconditions measured, the report's structure, cold and warm runs equal).
Who wins is not asserted: that is what the demo measures."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cord.data.paired import load_paired, write_paired
from cord.demo import posttrain as P
from cord.demo.methods import DEFAULT_METHODS
from cord.demo.operands import rates as RT
from cord.demo.operands.data import QUICK, TEMPLATES, GapTaskConfig, all_questions, make_splits
from cord.demo.operands.run import run_demo
from cord.demo.speech import SlottedSpeech
from cord.eval.stats import gap_reduction, paired_bootstrap

WORDS = "zero one two three four five six seven eight nine".split()


def _chain(record):
    return record["id"].split("-", 1)[1]


def test_splits_are_disjoint_and_the_transfer_form_is_new():
    splits = make_splits(QUICK)
    roles = ("train", "val", "eval", "transfer")
    chains = {k: {_chain(r) for r in splits[k]} for k in roles}
    for i, a in enumerate(roles):
        for b in roles[i + 1 :]:
            assert not chains[a] & chains[b], (a, b)
    assert {r["id"] for r in splits["audio_qa"]} | {r["id"] for r in splits["distill"]} == {
        r["id"] for r in splits["train"]}
    transfer_form = TEMPLATES[-1].split("{")[0]
    assert all(r["text"].startswith(transfer_form) for r in splits["transfer"])
    for k in ("train", "val", "eval"):  # the transfer phrasing is never heard in those
        assert not any(r["text"].startswith(transfer_form) for r in splits[k]), k
    assert len(splits["eval"]) == QUICK.eval_questions


def test_worked_answers_restate_the_operands_and_are_right():
    for r in all_questions(GapTaskConfig(operations=2))[:300]:
        words = r["question"].split()
        value = WORDS.index(words[0])
        for op, w in zip(words[1::2], words[2::2]):
            value += WORDS.index(w) if op == "plus" else -WORDS.index(w)
            assert 0 <= value <= 9
        assert r["answer"] == str(value)
        steps = re.findall(r"(\d)([+-])(\d)=(\d)", r["worked"])
        # every step restates what was heard: the operation and its operand, in order
        assert [(op, b) for _, op, b, _ in steps] == [
            ("+" if op == "plus" else "-", str(WORDS.index(w)))
            for op, w in zip(words[1::2], words[2::2])]
        assert steps[0][0] == str(WORDS.index(words[0]))
        assert r["worked"].endswith(f"so the answer is {value}")


def test_slotted_speech_is_cached_and_deterministic(tmp_path):
    speech = SlottedSpeech(slot_seconds=0.3, cache_dir=tmp_path)
    wave = speech.speak("seven plus two")
    assert wave.shape == (3 * speech.slot,) and wave.dtype.name == "float32"
    assert abs(wave).max() > 0.01  # real speech, not silence
    again = SlottedSpeech(slot_seconds=0.3, cache_dir=tmp_path)  # read back from disk
    assert set(again.clips) == {"seven", "plus", "two"}
    assert (again.speak("seven plus two") == wave).all()


def test_learning_rate_rule():
    grid = {3e-5: {"text": 0.95, "audio": 0.50}, 1e-4: {"text": 0.93, "audio": 0.60},
            3e-4: {"text": 0.90, "audio": 0.80}, 1e-3: {"text": 0.60, "audio": 0.85}}
    # the smallest validation gap among the rates that keep text within 3 points of the base
    assert RT.select_rate(grid, 0.92) == {"rate": 3e-4, "admissible": True}
    assert RT.select_rate(grid, 0.95) == {"rate": 1e-4, "admissible": True}
    broken = {lr: {"text": 0.1, "audio": 0.9} for lr in RT.LEARNING_RATES}
    assert RT.select_rate(broken, 0.95) == {"rate": min(RT.LEARNING_RATES), "admissible": False}


def test_committed_rates_cover_the_default_methods():
    shipped = P.Path(__file__).parents[1] / "cord" / "demo" / "operands" / "learning_rates.json"
    rates = RT.load_rates(shipped)
    for m in DEFAULT_METHODS:
        assert rates[m] in RT.LEARNING_RATES


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    text = (rng.random(400) < 0.9).astype(float)
    audio = (rng.random(400) < 0.5).astype(float)
    better = np.stack([(rng.random(400) < 0.7).astype(float) for _ in range(3)])
    same = np.stack([audio, audio])
    out = paired_bootstrap(text, audio, {"better": better, "same": same},
                           pairs=(("better", "same"), ("same", "same")), resamples=500)
    m = out["methods"]
    assert m["same"]["mean"] == pytest.approx(0.0) and m["same"]["ci95"] == [0.0, 0.0]
    assert m["better"]["mean"] == pytest.approx(float(gap_reduction(text, audio, better.mean(0))))
    lo, hi = m["better"]["ci95"]
    assert lo < m["better"]["mean"] < hi and lo > 0
    assert out["paired"]["same - same"] == {"mean": 0.0, "ci95": [0.0, 0.0]}
    with pytest.raises(ValueError, match="methods\\['x'\\]"):
        paired_bootstrap(text, audio, {"x": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="not in methods"):
        paired_bootstrap(text, audio, {"same": same}, pairs=(("same", "cord"),))


def test_write_paired_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    records = [{"id": f"q/{i}", "text": f"t{i}", "answer": str(i),
                "audio": {"array": rng.standard_normal(800).astype(np.float32) * 0.1,
                          "sampling_rate": 16_000}} for i in range(3)]
    path = write_paired(records, tmp_path / "set")
    ds = load_paired(path, sampling_rate=16_000)
    for r, row in zip(records, ds):
        assert row["id"] == r["id"] and row["answer"] == r["answer"]
        np.testing.assert_array_equal(np.asarray(row["audio"]["array"], np.float32),
                                      r["audio"]["array"])


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cold = run_demo(mode="quick", output_dir=root / "cold", cache_dir=root / "cache",
                    progress=False)
    # the warm run reads the cached base and runs its jobs in two worker processes
    warm = run_demo(mode="quick", output_dir=root / "warm", cache_dir=root / "cache",
                    progress=False, save_models=False, workers=2)
    return root, cold, warm


def test_quick_demo_measures_every_precondition_and_writes_the_report(quick_runs):
    root, results, _ = quick_runs
    out = root / "cold"
    pre = results["preconditions"]
    for name in ("base_text_accuracy", "base_audio_over_text", "mean_completion_length",
                 "text_side_kept", "eval_items", "seeds", "kl_falls_with_position"):
        assert set(pre[name]) == {"value", "bound", "ok"}, name
    assert pre["eval_items"]["value"] == QUICK.eval_questions
    summary = results["summary"]
    keys = {"text", "audio", "gap_reduction", "gap_reduction_ci95", "text_after", "retention",
            "transfer", "generated_tokens"}
    for m in DEFAULT_METHODS:
        assert keys <= set(summary[m]), m
        lo, hi = summary[m]["gap_reduction_ci95"]
        assert lo <= summary[m]["gap_reduction"] <= hi or np.isnan(lo)
        assert summary[m]["generated_tokens"] > 0
    assert set(results["paired"]) == {"cord - fkl", "cord - sft", "cord - grpo_opd"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"].keys() == summary.keys()
    readme = (out / "README.md").read_text()
    for heading in ("Table 1", "Table 3", "Paired differences", "precondition"):
        assert heading in readme
    failed = [n for n, p in pre.items() if not p["ok"]]
    if failed:  # the report says so above the tables
        assert readme.index("Preconditions not met") < readme.index("Table 1")
    for png in ("kl_distribution.png", "kl_tokens.png", "kl_rollout.png", "curves.png",
                "gap_reduction.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
    for m in ("base", *DEFAULT_METHODS):
        assert (out / "models" / m / "config.json").is_file(), m
    assert (out / "eval_set" / "paired.jsonl").is_file()
    for m, curve in results["curves"].items():
        assert [c["step"] for c in curve][-1] == results["post_training"]["max_steps"], m


def test_cold_and_warm_runs_give_the_same_tables(quick_runs):
    """The same command and seeds give the same numbers whatever the cache holds and however
    many workers run the jobs."""
    _, cold, warm = quick_runs
    assert cold["base_source"] == "pre-trained" and warm["base_source"] == "cached"
    # compared as JSON: a gap reduction without a base gap is NaN, and NaN != NaN
    assert json.dumps(warm["summary"], sort_keys=True) == json.dumps(cold["summary"],
                                                                     sort_keys=True)
    assert warm["per_seed"] == cold["per_seed"]


def test_budget_runs_get_their_own_table_and_plot(quick_runs, tmp_path):
    """The full mode's longer runs: reported beside the same seed's default-budget run, with
    item-bootstrap CIs, in results.json, the report and long_runs.png. (Stand-in long runs
    here: the quick run's own seed-0 scores, so the gap reductions must equal the summary's.)"""
    from cord.demo.operands import report as R

    _, results, _ = quick_runs
    per_seed = results["per_seed"]
    b = per_seed["base"][0]
    steps = 4 * results["post_training"]["max_steps"]
    long_runs = {m: {"steps": steps, "scores": per_seed[m][0], "tokens": 7,
                     "curve": [{"step": steps, "text": 1.0, "audio": per_seed[m][0]["audio"]}]}
                 for m in ("sft", "cord")}
    boot = paired_bootstrap(np.asarray(b["text_items"]), np.asarray(b["audio_items"]),
                            {m: np.asarray([r["scores"]["audio_items"]])
                             for m, r in long_runs.items()}, pairs=(("cord", "sft"),))
    results = {**results, "long_runs": long_runs,
               "budget": R._budget(per_seed, long_runs, boot, results["learning_rates"])}
    budget = results["budget"]["methods"]
    for m in long_runs:
        assert budget[m]["audio"] == budget[m]["audio_default_budget"] == per_seed[m][0]["audio"]
        assert budget[m]["gap_reduction"] == pytest.approx(float(gap_reduction(
            np.asarray(b["text_items"], float), np.asarray(b["audio_items"], float),
            np.asarray(per_seed[m][0]["audio_items"], float))), nan_ok=True)
    R.write_report(results, tmp_path, "cord demo --full")
    readme = (tmp_path / "README.md").read_text()
    assert f"## Budget: {steps} steps instead of" in readme
    assert f"audio acc, {steps} steps" in readme and "+ CORD" in R.budget_table(results)
    assert "cord - sft" in json.loads((tmp_path / "results.json").read_text())["budget"]["paired"]
    assert (tmp_path / "long_runs.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_arguments():
    with pytest.raises(ValueError, match="methods"):
        run_demo(mode="quick", methods=("dpo",))
    with pytest.raises(ValueError, match="mode"):
        run_demo(mode="huge")
    with pytest.raises(ValueError, match="rates_only needs mode='full' or 'long'"):
        run_demo(mode="default", rates_only=True)


def test_long_mode_is_the_default_comparison_at_four_times_the_steps():
    """Same task, batch and rollouts as the default; only the budget and the rates differ,
    and the rates come from the same rule run at that budget."""
    from cord.demo.operands.run import LONG, settings

    default, long = settings("default"), settings("long")
    assert long["task"] == default["task"]
    assert long["post"].max_steps == LONG * default["post"].max_steps
    assert {k: v for k, v in vars(long["post"]).items() if k not in ("max_steps", "eval_every")} \
        == {k: v for k, v in vars(default["post"]).items() if k not in ("max_steps", "eval_every")}
    assert long["grid"] and set(long["rates"]) <= set(RT.LEARNING_RATES)
    assert {"sft", "fkl", "cord"} <= set(long["methods"]) and len(long["seeds"]) >= 3
