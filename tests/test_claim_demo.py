"""The claim demo: the verdict rule, the learning-rate rule, the gap arithmetic when the base
has no gap, the paired bootstrap, and the quick mode end to end with re-evaluation on fresh
items. Who wins is not asserted: that is what the demo measures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cord.demo import jobs as J
from cord.demo.claim import report as CR
from cord.demo.claim import run as C
from cord.demo.claim.report import BOUNDS, flags, preconditions, summarize
from cord.demo.claim.task import ClaimTask
from cord.demo.claim.verdict import BEST_IMITATION, METRICS, assess_power, verdict
from cord.eval.evaluate import gap_reduction as mean_gap_reduction
from cord.eval.stats import PairedItemBootstrap, gap_reduction


def _block(cis):
    return {m: {"mean": sum(cis[m]) / 2, "ci95": list(cis[m])} for m in (*METRICS,
                                                                          "text_after")}


ZERO = {m: (-0.1, 0.1) for m in (*METRICS, "text_after")}
MOVED = {**ZERO, "in_domain_gap_reduction": (0.3, 0.6), "transfer_gap_reduction": (0.2, 0.5)}
STILL = {m: (-0.05, 0.05) for m in ZERO}


def _paired(best=ZERO, sft=ZERO, fkl=ZERO, own=ZERO, control=MOVED, transfer_control=MOVED):
    """pair -> metric -> {mean, ci95} from {metric: (lo, hi)} per pair."""
    return {BEST_IMITATION: _block(best), "cord - sft": _block(sft), "cord - fkl": _block(fkl),
            "cord - base": _block(own), "sft_gold - base": _block(control),
            "sft_gold_transfer - base": _block(transfer_control),
            "sft - base": _block(ZERO), "fkl - base": _block(ZERO)}


def test_nothing_moved_is_never_refuted():
    """The committed 40-step run's situation: every CI covers 0 and the controls did not move.
    The old rule said "refuted"; without a moving control there is no verdict."""
    v, reason = verdict(_paired(control=STILL, transfer_control=STILL))
    assert v == "inconclusive" and reason.startswith("no power")
    assert "half-width" in reason and "in-domain" in reason and "transfer" in reason


def test_a_table_without_its_controls_says_so():
    """--full's extra table runs GRPO and the sweep beside SFT, FKL and CORD but no control:
    no power, and the reason names the missing run instead of printing a NaN interval."""
    paired = {k: v for k, v in _paired().items() if not k.startswith("sft_gold")}
    v, reason = verdict(paired)
    assert v == "inconclusive" and reason.startswith("no power")
    assert "nan" not in reason and "sft_gold) was not run" in reason
    assert "sft_gold_transfer) was not run" in reason


def test_a_wide_ci_is_no_power_even_when_the_control_moves():
    wide = {**ZERO, "in_domain_gap_reduction": (-0.3, 0.3), "transfer_gap_reduction": (-0.4, 0.2)}
    power = assess_power(_paired(best=wide))
    assert not power["in_domain"]["powered"] and not power["transfer"]["powered"]
    assert power["in_domain"]["halfwidth"] == pytest.approx(0.3)
    assert verdict(_paired(best=wide))[0] == "inconclusive"


def test_the_in_domain_control_must_move_by_delta():
    weak = {**MOVED, "in_domain_gap_reduction": (0.05, 0.4)}  # above 0, below δ
    power = assess_power(_paired(control=weak))
    assert not power["in_domain"]["powered"] and power["transfer"]["powered"]


def test_supported_needs_a_powered_win_over_imitation_and_a_gap_closed():
    win = {**ZERO, "transfer_gap_reduction": (0.05, 0.25)}
    closes = {**ZERO, "transfer_gap_reduction": (0.02, 0.3)}
    v, reason = verdict(_paired(best=win, own=closes))
    assert v == "supported" and "transfer" in reason
    # beats imitation but does not itself close the gap: the pilot
    v, reason = verdict(_paired(best=win, own=ZERO))
    assert v == "inconclusive"
    assert "beats imitation on transfer" in reason and "does not itself close the gap" in reason
    # a win on an unpowered X does not count
    v, _ = verdict(_paired(best=win, own=closes, transfer_control=STILL))
    assert v != "supported"


def test_refuted_when_every_powered_comparison_excludes_delta_or_retention_is_lost():
    v, reason = verdict(_paired(best=STILL))
    assert v == "refuted" and "15 points" in reason
    lost = {**ZERO, "retention": (-0.2, -0.05)}
    win = {**ZERO, "transfer_gap_reduction": (0.05, 0.25)}
    v, reason = verdict(_paired(best=win, own=win, sft=lost))
    assert v == "refuted" and "retention" in reason


def test_a_failing_precondition_is_inconclusive_and_named():
    pre = {"teacher_at_error": {"value": 0.3, "bound": ">= 0.5", "ok": False},
           "teacher_accuracy": {"value": 0.6, "bound": "in [0.4, 0.8]", "ok": True}}
    v, reason = verdict(_paired(best=STILL), pre)
    assert v == "inconclusive" and "teacher_at_error" in reason
    assert "teacher_accuracy" not in reason


def test_undefined_gaps_are_no_evidence():
    nan = {**ZERO, "in_domain_gap_reduction": (float("nan"), float("nan")),
           "transfer_gap_reduction": (float("nan"), float("nan"))}
    assert verdict(_paired(best=nan, own=nan, control=nan, transfer_control=nan))[0] == (
        "inconclusive")
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


def test_shared_rate_is_the_smallest_that_moves_the_control():
    rng = np.random.default_rng(0)
    base = (rng.random(200) < 0.4).astype(int)
    still = [base.tolist(), base.tolist()]
    better = [np.maximum(base, rng.random(200) < 0.3).astype(int).tolist() for _ in range(2)]
    chosen = C.choose_shared_rate({1e-5: still, 3e-5: better, 1e-4: better}, base,
                                  resamples=300)
    assert chosen["rate"] == 3e-5 and chosen["controlled"]
    assert chosen["grid"]["1e-05"]["ci95"] == [0.0, 0.0]
    assert chosen["grid"]["3e-05"]["ci95"][0] > 0
    none = C.choose_shared_rate({1e-5: still, 1e-4: still}, base, resamples=300)
    assert none == {**none, "rate": 1e-4, "controlled": False}


def test_preconditions_name_value_bound_and_ok():
    values = {"teacher_accuracy": 0.6, "base_audio_over_text": 0.9, "late_first_errors": 0.5,
              "teacher_at_error": 0.2, "retention_base": 0.8, "transfer_base_gap": 0.15}
    pre = preconditions(values)
    assert set(pre) == set(BOUNDS) and "late_first_errors" not in pre  # reported, not bounded
    assert [k for k, p in pre.items() if not p["ok"]] == [
        "base_audio_over_text", "teacher_at_error", "transfer_base_gap"]


def test_flags_name_a_collapsed_text_side_and_a_decaying_run():
    curve = [{"step": 40, "audio": 0.5}, {"step": 80, "audio": 0.6}, {"step": 120, "audio": 0.4}]
    out = flags({"text_after": 0.3}, 0.6, curve)
    assert out[0] == "text side lost 30 points" and "peaked at step 80" in out[1]
    assert flags({"text_after": 0.58}, 0.6, curve[:2]) == []


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
    base_pairs = {f"{m} - base" for m in scores if m != "base"}
    for m in ("sft", "cord"):
        for k in ("in_domain_gap_reduction", "transfer_gap_reduction", "retention",
                  "text_after"):
            lo, hi = out["summary"][m][f"{k}_ci95"]
            assert lo <= out["summary"][m][k] <= hi, (m, k)
        assert out["summary"][m]["generated_tokens"] == 10
    assert set(out["paired"]) == {"cord - sft", "cord - fkl", "cord - grpo_opd",
                                  "cord - max(sft, fkl)"} | base_pairs
    # a method's own gap reduction is its "- base" difference (the base's is 0)
    own = out["paired"]["cord - base"]["in_domain_gap_reduction"]
    assert own["mean"] == pytest.approx(out["summary"]["cord"]["in_domain_gap_reduction"])
    assert out["verdict"] == "inconclusive" and out["reason"].startswith("no power")
    assert set(out["power"]) == {"in_domain", "transfer"}  # no control in this table


# --------------------------------------------------------------------------------------------
# The quick mode end to end
# --------------------------------------------------------------------------------------------


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def quick_claim(tmp_path_factory):
    """The quick demo, crashed on purpose in its last step (the report, after every job), then
    finished with resume: the resumed run must retrain nothing."""
    root = tmp_path_factory.mktemp("claim")
    run = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        def crash(*args, **kwargs):
            raise Crash("injected after training")

        mp.setattr(CR, "write_report", crash)
        with pytest.raises(Crash):
            C.run_claim_demo(mode="quick", output_dir=run, cache_dir=root / "cache",
                             progress=False)
    saved = sorted(p.name for p in (run / "jobs").glob("*.json"))
    trained = []
    with pytest.MonkeyPatch.context() as mp:
        real = J.run_job

        def counting(ctx, job):
            trained.append(job.name)
            return real(ctx, job)

        mp.setattr(J, "run_job", counting)
        results = C.resume_claim_demo(run, cache_dir=root / "cache", progress=False)
    return root, results, saved, trained


def test_a_crash_after_training_loses_nothing_resume_finishes(quick_claim):
    root, results, saved, trained = quick_claim
    n_jobs = len(C.RATE_GRID) + len(C.CLAIM_METHODS)  # the quick mode's one seed
    assert len(saved) == n_jobs + 2  # every job, the base's validation and measures
    assert trained == []  # nothing retrained
    assert (root / "run" / "results.json").is_file()
    for m in C.CLAIM_METHODS:
        assert (root / "run" / "models" / m / "config.json").is_file(), m


def test_quick_claim_demo_reports_rule_power_preconditions_and_verdict(quick_claim):
    root, results, _, _ = quick_claim
    saved = json.loads((root / "run" / "results.json").read_text())
    for key in ("verdict_rule", "verdict", "verdict_reason", "power", "paired",
                "preconditions", "learning_rate", "steps", "summary"):
        assert key in saved, key
    assert saved["steps"] == 4 and saved["learning_rate"] in C.RATE_GRID
    assert set(saved["preconditions"]) == set(BOUNDS)
    for p in saved["preconditions"].values():
        assert set(p) == {"value", "bound", "ok"}
    assert set(saved["power"]) == {"in_domain", "transfer"}
    for p in saved["power"].values():
        assert set(p) == {"control", "control_minus_base", "halfwidth", "powered"}
        assert set(p["control_minus_base"]) == {"mean", "ci95"}
    for metric in ("in_domain_gap_reduction", "transfer_gap_reduction", "retention",
                   "text_after"):
        assert metric in saved["paired"]["a"]["cord - base"]
    summary = saved["summary"]["a"]
    for m in C.CLAIM_METHODS:
        for k in ("in_domain_gap_reduction", "transfer_gap_reduction", "retention",
                  "text_after"):
            assert k in summary[m] and len(summary[m][f"{k}_ci95"]) == 2, (m, k)
        assert summary[m]["generated_tokens"] > 0 and "flags" in summary[m]
    # the quick base is far outside the paper's regime: its verdict must say so, not "refuted"
    assert saved["verdict"]["a"] == "inconclusive"
    assert saved["verdict_reason"]["a"].startswith("precondition failed")
    assert "teacher_at_error" in saved["base_measures"]
    readme = (root / "run" / "README.md").read_text()
    assert readme.index("Verdict rule") < readme.index("**Verdict:") < readme.index(
        "## Table (a)")
    for png in ("curves.png", "kl_correct_wrong.png", "claim.png"):
        assert (root / "run" / png).read_bytes()[:4] == b"\x89PNG", png


def test_reevaluation_draws_new_items_and_is_reproducible(quick_claim):
    root, _, _, _ = quick_claim
    run = root / "run"
    one = C.reevaluate(run, 1, cache_dir=root / "cache", progress=False)
    two = C.reevaluate(run, 2, cache_dir=root / "cache", progress=False)
    assert set(one["items"]["eval"]) != set(two["items"]["eval"])
    again = C.reevaluate(run, 1, cache_dir=root / "cache", progress=False)
    assert json.dumps(again["summary"], default=float) == json.dumps(one["summary"],
                                                                     default=float)
    for key in ("verdict", "verdict_reason", "power", "learning_rate", "steps"):
        assert key in one, key
    assert (run / "reevaluate-1" / "README.md").read_text().startswith("# Re-evaluation")


def test_a_failed_job_keeps_every_other_result(tmp_path, monkeypatch):
    """One job raising (as the -1e-6 KL check once did after seven minutes) costs that job
    only: the others' results are saved, and the error names the job."""
    quick = C.settings("quick")
    ctx = J.Context(ClaimTask(quick["task"]), quick["post"], tmp_path / "base",
                    tmp_path / "cache")
    jobs = [J.Job(m, 0, 1e-4, tmp_path / "scratch" / f"a-{m}-0") for m in ("sft", "fkl")]

    def fake(ctx, job):
        if job.method == "fkl":
            raise ValueError("rollout kl must be finite and non-negative")
        return {"method": job.method, "seed": job.seed, "tokens": 1}

    monkeypatch.setattr(J, "run_job", fake)
    with pytest.raises(RuntimeError, match="a-fkl-0: ValueError"):
        J.run_jobs(ctx, jobs, results_dir=tmp_path / "jobs")
    assert [p.name for p in (tmp_path / "jobs").iterdir()] == ["a-sft-0.json"]
    # read back with the same identity; another identity reruns
    assert J.load_result(tmp_path / "jobs" / "a-sft-0.json", J.identity(ctx, jobs[0]))
    other = J.Context(ctx.task, C.CLAIM_POST, ctx.base_path, ctx.cache_dir)
    assert J.load_result(tmp_path / "jobs" / "a-sft-0.json", J.identity(other, jobs[0])) is None


def test_saved_results_resume_from_another_checkout(tmp_path):
    """A result names its base by folder (base-<key>), not by path: a results folder made in
    one checkout (or with the whole path, as results saved before this rule were) is read back
    by a run whose package, and so its shipped base, lives elsewhere."""
    quick = C.settings("quick")
    job = J.Job("sft", 0, 1e-4, tmp_path / "scratch" / "a-sft-0")
    here = J.Context(ClaimTask(quick["task"]), quick["post"],
                     tmp_path / "one" / "cord" / "demo" / "bases" / "base-abc", None)
    there = J.Context(here.task, here.post, tmp_path / "two" / "bases" / "base-abc", None)
    elsewhere = J.Context(here.task, here.post, tmp_path / "two" / "bases" / "base-def", None)
    path = tmp_path / "jobs" / "a-sft-0.json"
    J.save_result(path, J.identity(here, job), {"method": "sft"})
    assert J.identity(here, job)["base"] == "base-abc"
    assert J.load_result(path, J.identity(there, job)) == {"method": "sft"}
    assert J.load_result(path, J.identity(elsewhere, job)) is None  # another base: rerun
    old = {**J.identity(here, job), "base": str(here.base_path)}  # the earlier format
    J.save_result(path, old, {"method": "sft"})
    assert J.load_result(path, J.identity(there, job)) == {"method": "sft"}


def test_full_mode_adds_methods_and_the_rate_sensitivity(tmp_path, monkeypatch):
    """The full mode's code path at the quick size: two extra methods, one seed."""
    quick = C.settings("quick")

    def small(mode):
        return {**quick, "methods": ("sft", "fkl", "cord", "sft_gold"),
                "extra": ("grpo_opd",), "extra_seeds": (0,), "sensitivity": True}

    monkeypatch.setattr(C, "settings", small)
    monkeypatch.setattr(C, "RATE_GRID", (1e-4, 3e-4))
    results = C.run_claim_demo(mode="full", output_dir=tmp_path / "run",
                               cache_dir=tmp_path / "cache", progress=False, save_models=False)
    other = 3e-4 if results["learning_rate"] == 1e-4 else 1e-4
    assert set(results["verdict"]) == {"a", "extra", f"lr {other:g}"}
    assert set(results["summary"]["extra"]) == {"base", "grpo_opd", "sft", "fkl", "cord"}
    readme = (tmp_path / "run" / "README.md").read_text()
    assert "## Table (extra)" in readme and f"## Table (lr {other:g})" in readme
