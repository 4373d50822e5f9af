"""The claim demo: the verdict rule, the learning-rate rule, the gap arithmetic when the base
has no gap, the paired bootstrap, and the quick mode end to end with re-evaluation on fresh
items. Who wins is not asserted: that is what the demo measures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cord.demo import claim_demo as C
from cord.demo.claim_report import BOUNDS, preconditions, summarize
from cord.demo.verdict import METRICS, verdict
from cord.eval.evaluate import gap_reduction as mean_gap_reduction
from cord.eval.stats import PairedItemBootstrap, gap_reduction


def _paired(best, sft, fkl):
    """pair -> metric -> ci95 from {metric: (lo, hi)} per pair."""
    def block(cis):
        return {m: {"mean": sum(cis[m]) / 2, "ci95": list(cis[m])} for m in METRICS}
    return {"cord - max(sft, fkl)": block(best), "cord - sft": block(sft),
            "cord - fkl": block(fkl)}


ZERO = {m: (-0.1, 0.1) for m in METRICS}


def test_verdict_supported_needs_a_win_and_no_retention_loss():
    win = {**ZERO, "transfer_gap_reduction": (0.05, 0.3)}
    assert verdict(_paired(win, ZERO, ZERO)) == "supported"
    in_domain = {**ZERO, "in_domain_gap_reduction": (0.01, 0.2)}
    assert verdict(_paired(in_domain, ZERO, ZERO)) == "supported"
    lost = {**ZERO, "retention": (-0.2, -0.05)}  # CORD retains clearly worse than SFT
    assert verdict(_paired(win, lost, ZERO)) != "supported"


def test_verdict_refuted_when_imitation_matches_cord_everywhere():
    assert verdict(_paired(ZERO, ZERO, ZERO)) == "refuted"
    below = {m: (-0.3, -0.1) for m in METRICS}
    assert verdict(_paired(ZERO, below, {**ZERO, "retention": (0.01, 0.1)})) == "refuted"
    # CORD beats each on something but not max(SFT, FKL) on a gap: inconclusive
    sft_loses = {**ZERO, "retention": (0.01, 0.1)}
    fkl_loses = {**ZERO, "transfer_gap_reduction": (0.01, 0.1)}
    assert verdict(_paired(ZERO, sft_loses, fkl_loses)) == "inconclusive"


def test_verdict_treats_undefined_gaps_as_no_evidence():
    nan = {**ZERO, "in_domain_gap_reduction": (float("nan"), float("nan")),
           "transfer_gap_reduction": (float("nan"), float("nan"))}
    assert verdict(_paired(nan, nan, nan)) == "inconclusive"
    with pytest.raises(ValueError, match="missing"):
        verdict({"cord - sft": {}})


@pytest.mark.parametrize("base_audio", [[1, 1, 1, 1], [1, 1, 1, 0, 1][:4]])
def test_gap_reduction_is_undefined_without_a_base_gap(base_audio):
    """Zero or negative base gap: not 100%, not a sign flip, but n/a (NaN)."""
    text = np.array([1, 1, 0, 1], float)  # 75% text
    audio = np.array(base_audio, float)  # 100% or 75% audio: gap -25 or 0 points
    assert np.isnan(gap_reduction(text, audio, np.zeros(4)))
    assert np.isnan(mean_gap_reduction(0.1, -0.05)) and np.isnan(mean_gap_reduction(0.1, 0.0))
    assert gap_reduction(text, np.array([1, 0, 0, 1.0]), np.array([1, 1, 0, 1.0])) == 1.0
    assert mean_gap_reduction(0.1, 0.2) == pytest.approx(0.5)


def test_paired_bootstrap_differences_are_paired_per_replicate():
    rng = np.random.default_rng(0)
    base_text, base_audio = np.ones(50), (rng.random(50) < 0.5).astype(float)
    a = np.vstack([base_audio] * 3)
    b = a.copy()
    b[:, :5] = 1  # b fixes 5 more items than a on every seed
    boot = PairedItemBootstrap({"eval": 50}, 3, resamples=500)
    pa, ra = boot.gap_reduction("eval", base_text, base_audio, a)
    pb, rb = boot.gap_reduction("eval", base_text, base_audio, b)
    assert pa == pytest.approx(0.0)
    assert pb > 0 and np.nanmin(rb - ra) >= 0  # paired: never negative on any replicate
    with pytest.raises(ValueError, match="items"):
        boot.accuracy("eval", np.ones((3, 49)))


def test_rate_rule_guards_text_and_retention_and_picks_the_smallest_gap():
    base = {"text": 0.7, "audio": 0.4, "retention": 0.85}
    grid = {1e-4: {"text": 0.70, "audio": 0.45, "retention": 0.85},
            3e-4: {"text": 0.69, "audio": 0.55, "retention": 0.80},   # retention lost 5
            1e-3: {"text": 0.68, "audio": 0.50, "retention": 0.84}}
    assert C.select_rate(grid, base) == {"rate": 1e-3, "admissible": True}
    bad = {r: {**v, "text": 0.3} for r, v in grid.items()}
    assert C.select_rate(bad, base) == {"rate": 1e-4, "admissible": False}
    runs = {m: {r: [v, v] for r, v in grid.items()} for m in ("sft", "cord", "sft_gold")}
    chosen = C.choose_rates(runs, base)
    assert chosen["selected"]["sft"]["rate"] == 1e-3 and chosen["shared"]["rate"] == 1e-3
    assert set(chosen["shared"]["average"]) == {"0.0001", "0.0003", "0.001"}


def test_preconditions_name_value_bound_and_ok():
    values = {"teacher_accuracy": 0.6, "base_audio_over_text": 0.9, "late_first_errors": 0.5,
              "teacher_recovery": 0.2, "retention_base": 0.8, "transfer_base_gap": 0.2}
    pre = preconditions(values, self_correction=True)
    assert set(pre) == set(BOUNDS)
    assert [k for k, p in pre.items() if not p["ok"]] == ["base_audio_over_text",
                                                          "teacher_recovery"]
    assert preconditions(values, self_correction=False)["teacher_recovery"]["ok"]


def _scores(rng, n=(40, 30, 20), p=0.5):
    def items(k):
        return (rng.random(k) < p).astype(int).tolist()
    s = {"eval_text_items": [1] * n[0], "eval_audio_items": items(n[0]),
         "transfer_text_items": [1] * n[1], "transfer_audio_items": items(n[1]),
         "retention_items": items(n[2])}
    s.update({"text": 1.0, "audio": np.mean(s["eval_audio_items"]), "transfer_text": 1.0,
              "transfer_audio": np.mean(s["transfer_audio_items"]),
              "retention": np.mean(s["retention_items"]), "recovery_text": 0.5,
              "recovery_audio": 0.3})
    return s


def test_summary_has_every_metric_with_a_ci_and_the_verdict():
    rng = np.random.default_rng(1)
    scores = {"base": [_scores(rng)], **{m: [_scores(rng, p=0.7) for _ in range(3)]
                                         for m in ("sft", "fkl", "grpo_opd", "cord")}}
    out = summarize(scores, {m: [10, 10, 10] for m in scores if m != "base"},
                    {m: 1e-4 for m in scores}, resamples=200)
    for m in ("sft", "cord"):
        for k in ("in_domain_gap_reduction", "transfer_gap_reduction", "retention",
                  "text_after"):
            lo, hi = out["summary"][m][f"{k}_ci95"]
            assert lo <= out["summary"][m][k] <= hi, (m, k)
        assert out["summary"][m]["generated_tokens"] == 10
    assert set(out["paired"]) == {"cord - sft", "cord - fkl", "cord - grpo_opd",
                                  "cord - max(sft, fkl)"}
    assert out["verdict"] in ("supported", "refuted", "inconclusive")


# --------------------------------------------------------------------------------------------
# The quick mode end to end
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_claim(tmp_path_factory):
    root = tmp_path_factory.mktemp("claim")
    results = C.run_claim_demo(mode="quick", output_dir=root / "run",
                               cache_dir=root / "cache", progress=False)
    return root, results


def test_quick_claim_demo_reports_preconditions_keys_and_verdict(quick_claim):
    root, results = quick_claim
    saved = json.loads((root / "run" / "results.json").read_text())
    for key in ("preconditions", "summary", "paired", "verdict", "verdict_rule"):
        assert key in saved, key
    assert set(saved["preconditions"]) == set(BOUNDS)
    for p in saved["preconditions"].values():
        assert set(p) == {"value", "bound", "ok"}
    summary = saved["summary"]["a"]
    for m in C.METHODS:
        for k in ("in_domain_gap_reduction", "transfer_gap_reduction", "retention",
                  "text_after"):
            assert k in summary[m] and len(summary[m][f"{k}_ci95"]) == 2, (m, k)
        assert summary[m]["generated_tokens"] > 0
    assert saved["verdict"]["a"] in ("supported", "refuted", "inconclusive")
    readme = (root / "run" / "README.md").read_text()
    assert readme.index("Verdict rule") < readme.index("## Table (a)")
    for png in ("curves.png", "kl_correct_wrong.png", "claim.png"):
        assert (root / "run" / png).read_bytes()[:4] == b"\x89PNG", png
    for m in ("base", *C.METHODS):
        assert (root / "run" / "models" / m / "config.json").is_file(), m


def test_reevaluation_draws_new_items_and_is_reproducible(quick_claim):
    root, _ = quick_claim
    run = root / "run"
    one = C.reevaluate(run, 1, cache_dir=root / "cache", progress=False)
    two = C.reevaluate(run, 2, cache_dir=root / "cache", progress=False)
    assert set(one["items"]["eval"]) != set(two["items"]["eval"])
    again = C.reevaluate(run, 1, cache_dir=root / "cache", progress=False)
    assert json.dumps(again["summary"], default=float) == json.dumps(one["summary"],
                                                                     default=float)
    assert (run / "reevaluate-1" / "README.md").read_text().startswith("# Re-evaluation")


def test_full_mode_runs_the_grid_both_tables_and_the_no_prior_ablation(tmp_path, monkeypatch):
    """The full mode's code path at the quick size: one rate, one grid seed, three methods."""
    quick = C.settings("quick")

    def small(mode):
        return {**quick, "grid": True, "methods": ("sft", "fkl", "cord"),
                "ablation": {"methods": ("sft", "fkl", "cord"), "seeds": (0,)}}

    monkeypatch.setattr(C, "settings", small)
    monkeypatch.setattr(C, "RATE_GRID", (3e-4,))
    monkeypatch.setattr(C, "RATE_SEEDS", (0,))
    results = C.run_claim_demo(mode="full", output_dir=tmp_path / "run",
                               cache_dir=tmp_path / "cache", progress=False, save_models=False)
    assert set(results["verdict"]) == {"a", "b", "no_prior"}
    assert results["learning_rates"]["b"] == {m: 3e-4 for m in ("sft", "fkl", "cord")}
    grid = json.loads((tmp_path / "run" / "learning_rates.json").read_text())
    assert set(grid["selected"]) == {"sft", "fkl", "cord"} and "shared" in grid
    assert results["preconditions_no_prior"]["teacher_recovery"]["bound"].startswith("n/a")
    readme = (tmp_path / "run" / "README.md").read_text()
    assert "## Table (b)" in readme and "## Table (no_prior)" in readme
