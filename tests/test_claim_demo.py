"""The claim demo: the verdict rule, the learning-rate rule, the gap arithmetic when the base
has no gap, the paired bootstrap, and the quick mode end to end with re-evaluation on fresh
items. Who wins is not asserted: that is what the demo measures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from cord.demo import jobs as J
from cord.demo.claim import report as CR
from cord.demo.claim import run as C
from cord.demo.claim.files import QUICK_LINE, check_run_dir
from cord.demo.claim.report import flags, summarize
from cord.demo.claim.task import ClaimTask
from cord.demo.claim.verdict import (
    BEST_IMITATION,
    BOUNDS,
    METRICS,
    VERDICT_RULE,
    assess_power,
    preconditions,
    verdict,
)
from cord.eval.evaluate import gap_reduction as mean_gap_reduction
from cord.eval.stats import PairedItemBootstrap, gap_reduction

ROOT = Path(__file__).resolve().parents[1]


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


def _headline(paired, pre=None):
    return verdict(paired, pre)["headline"]


def test_nothing_moved_is_never_a_result():
    """Every CI covers 0 and the controls did not move: no power, never "not reproduced"."""
    v = verdict(_paired(control=STILL, transfer_control=STILL))
    assert v["headline"] == "inconclusive (no power)"
    assert v["reason"].startswith("no power") and "half-width" in v["reason"]
    assert "in-domain" in v["reason"] and "transfer" in v["reason"]
    assert v["parts"]["transfer"] == {"edge": "not powered", "margin": "not powered",
                                      "powered": False}


def test_a_table_without_its_controls_says_so():
    """--full's extra table runs GRPO and the sweep beside SFT, FKL and CORD but no control:
    no power, and the reason names the missing run instead of printing a NaN interval."""
    paired = {k: v for k, v in _paired().items() if not k.startswith("sft_gold")}
    v = verdict(paired)
    assert v["headline"] == "inconclusive (no power)"
    assert "nan" not in v["reason"] and "sft_gold) was not run" in v["reason"]
    assert "sft_gold_transfer) was not run" in v["reason"]


def test_a_wide_ci_is_no_power_even_when_the_control_moves():
    wide = {**ZERO, "in_domain_gap_reduction": (-0.3, 0.3), "transfer_gap_reduction": (-0.4, 0.2)}
    power = assess_power(_paired(best=wide))
    assert not power["in_domain"]["powered"] and not power["transfer"]["powered"]
    assert power["in_domain"]["halfwidth"] == pytest.approx(0.3)
    assert _headline(_paired(best=wide)) == "inconclusive (no power)"


def test_the_in_domain_control_must_move_by_delta():
    weak = {**MOVED, "in_domain_gap_reduction": (0.05, 0.4)}  # above 0, below δ
    power = assess_power(_paired(control=weak))
    assert not power["in_domain"]["powered"] and power["transfer"]["powered"]


EDGE = {**ZERO, "in_domain_gap_reduction": (0.02, 0.12), "transfer_gap_reduction": (0.02, 0.12)}
OWN = {**ZERO, "in_domain_gap_reduction": (0.1, 0.3), "transfer_gap_reduction": (0.1, 0.3)}
WIDE_EDGE = {**ZERO, "transfer_gap_reduction": (0.05, 0.25)}
BIG = {**ZERO, "transfer_gap_reduction": (0.16, 0.3)}


@pytest.mark.parametrize("best,own,headline,parts", [
    # an edge on both X, transfer CI below δ: an edge, smaller than the paper's margin
    (EDGE, OWN, "edge smaller than the paper's", {"in_domain": ("shown", "n/a"),
                                                  "transfer": ("shown", "excluded")}),
    # an edge whose CI still reaches δ on transfer: the margin is open
    (WIDE_EDGE, OWN, "edge shown, margin open", {"transfer": ("shown", "open")}),
    # the transfer margin reached, with CORD closing the gap itself: reproduced
    (BIG, OWN, "reproduced", {"transfer": ("shown", "reached")}),
    # beats imitation but does not itself close the gap: no edge; the margin excluded
    (EDGE, ZERO, "not reproduced", {"transfer": ("open", "excluded")}),
    # every D_X at or below 0 on its upper bound: the edge absent
    ({**ZERO, "in_domain_gap_reduction": (-0.1, 0.0), "transfer_gap_reduction": (-0.1, 0.0)},
     OWN, "not reproduced", {"in_domain": ("absent", "n/a"), "transfer": ("absent", "excluded")}),
])
def test_the_two_parts_and_the_headline(best, own, headline, parts):
    v = verdict(_paired(best=best, own=own))
    assert v["headline"] == headline
    for x, (edge, margin) in parts.items():
        assert v["parts"][x] == {"edge": edge, "margin": margin, "powered": True}, x
    assert v["sentence"] and v["sentence"][0].isupper() and v["sentence"].endswith(".")


def test_an_open_transfer_margin_without_an_edge_is_inconclusive_and_says_what_is_open():
    v = verdict(_paired(best={**ZERO, "transfer_gap_reduction": (-0.05, 0.2)}, own=OWN))
    assert v["headline"] == ("inconclusive (in-domain edge open, transfer edge open, transfer "
                             "margin open)")
    # an unpowered transfer: its margin is never "excluded", whatever its CI
    v = verdict(_paired(best=EDGE, own=OWN, transfer_control=STILL))
    assert v["headline"] == "edge shown, margin open"
    assert v["parts"]["transfer"]["powered"] is False


def test_the_headline_order_precondition_then_power_then_retention():
    lost = {**ZERO, "retention": (-0.2, -0.05)}
    pre = {"late_first_errors": {"value": 0.283, "bound": ">= 0.3", "ok": False},
           "teacher_accuracy": {"value": 0.6, "bound": "in [0.4, 0.8]", "ok": True}}
    # a failing precondition comes first, whatever the comparison shows
    v = verdict(_paired(best=BIG, own=OWN, sft=lost), pre)
    assert v["headline"] == "inconclusive (precondition late_first_errors failed: 0.283 vs >= 0.3)"
    assert "teacher_accuracy" not in v["reason"] and "reported, not judged" in v["reason"]
    assert v["parts"]["transfer"]["margin"] == "reached"  # the parts are still reported
    # then power, then retention (before any edge or margin)
    assert _headline(_paired(best=BIG, own=OWN, sft=lost, control=STILL,
                             transfer_control=STILL)) == "inconclusive (no power)"
    v = verdict(_paired(best=BIG, own=OWN, sft=lost))
    assert v["headline"] == "not reproduced (retention)" and "CORD − SFT" in v["reason"]


def test_undefined_gaps_are_no_evidence():
    nan = {**ZERO, "in_domain_gap_reduction": (float("nan"), float("nan")),
           "transfer_gap_reduction": (float("nan"), float("nan"))}
    assert _headline(_paired(best=nan, own=nan, control=nan, transfer_control=nan)) == (
        "inconclusive (no power)")
    with pytest.raises(ValueError, match="missing"):
        verdict({"cord - sft": {}})


def test_the_committed_run_re_derived_under_the_rule_as_it_stood():
    """docs/demo_claim_restate (the run on the restate base) measured late_first_errors =
    0.283 on its base; the bound 0.30 was part of the rule before the run, so the verdict is
    inconclusive (issue 38, point 1)."""
    saved = json.loads((ROOT / "docs" / "demo_claim_restate" / "results.json").read_text())
    again = CR.rederive(saved)
    assert again["verdict"]["a"] == saved["verdict"]["a"]  # re-deriving twice: the same
    assert again["verdict_before_rederivation"] == saved["verdict_before_rederivation"] == {
        "a": "refuted"}  # what the report said before; kept, not overwritten
    assert saved["verdict"]["a"] == (
        "inconclusive (precondition late_first_errors failed: 0.283 vs >= 0.3)")
    assert saved["preconditions"]["late_first_errors"] == {
        "value": pytest.approx(0.2826, abs=1e-4), "bound": ">= 0.3", "ok": False}
    assert saved["first_error_positions"]["n"] == 651
    assert saved["first_error_positions"]["by_band"] == {"0-1": 393, "2-10": 74, ">10": 184}
    assert saved["timings_s"]["total"] > 600 > saved["timings_s_resume"]["total"]
    for x, p in saved["verdict_parts"]["a"].items():
        assert set(p) == {"edge", "margin", "powered"}, x


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
    values = {"teacher_accuracy": 0.6, "base_audio_over_text": 0.9, "late_first_errors": 0.29,
              "teacher_at_error": 0.2, "retention_base": 0.8, "transfer_base_gap": 0.15}
    pre = preconditions(values)
    assert set(pre) == set(BOUNDS)
    assert [k for k, p in pre.items() if not p["ok"]] == [
        "base_audio_over_text", "teacher_at_error", "late_first_errors", "transfer_base_gap"]
    # the bounds, exactly
    assert {k: p["bound"] for k, p in pre.items()} == {
        "teacher_accuracy": "in [0.4, 0.8]", "base_audio_over_text": "in [0.5, 0.85]",
        "teacher_at_error": ">= 0.5", "late_first_errors": ">= 0.3",
        "retention_base": "in [0.7, 0.95]", "transfer_base_gap": ">= 0.2"}


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
    assert out["verdict"] == "inconclusive (no power)" and out["reason"].startswith("no power")
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
    before_training = []
    with pytest.MonkeyPatch.context() as mp:
        def crash(*args, **kwargs):
            raise Crash("injected after training")

        real_jobs = J.run_jobs

        def first_reads(*args, **kwargs):  # what results.json holds when training starts
            if not before_training:
                before_training.append(json.loads((run / "results.json").read_text()))
            return real_jobs(*args, **kwargs)

        mp.setattr(CR, "write_report", crash)
        mp.setattr(J, "run_jobs", first_reads)
        with pytest.raises(Crash):
            C.run_claim_demo(mode="quick", output_dir=run, cache_dir=root / "cache",
                             progress=False)
    root.joinpath("before_training.json").write_text(json.dumps(before_training[0]))
    root.joinpath("after_crash.json").write_text((run / "results.json").read_text())
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
    # every job, the base's validation and measures, and the crashed invocation's timings
    assert len(saved) == n_jobs + 3 and "timings-000.json" in saved
    # the run's wall times add both invocations; the resume's are kept apart
    assert results["timings_s"]["total"] > results["timings_s_resume"]["total"] > 0
    assert trained == []  # nothing retrained
    assert (root / "run" / "results.json").is_file()
    for m in C.CLAIM_METHODS:
        assert (root / "run" / "models" / m / "config.json").is_file(), m


def test_the_rule_is_pre_registered_before_any_training(quick_claim):
    """results.json holds the rule, every bound, the rate grid and the analysis plan before
    the first job trains; a run that stopped there is refused by --reevaluate, by name."""
    root, _, _, _ = quick_claim
    before = json.loads((root / "before_training.json").read_text())
    assert before["status"] == "pre-registered" and before["verdict_rule"] == VERDICT_RULE
    prereg = before["preregistration"]
    assert prereg["rule"] == VERDICT_RULE and prereg["rate_grid"] == list(C.RATE_GRID)
    assert prereg["preconditions"] == {k: p["bound"] for k, p in preconditions({}).items()}
    assert prereg["preconditions"]["late_first_errors"] == ">= 0.3"
    assert any("exploratory" in line for line in prereg["analysis_plan"])
    stopped = root / "stopped"
    stopped.mkdir()
    (stopped / "results.json").write_text((root / "after_crash.json").read_text())
    assert "only the pre-registration" in check_run_dir(stopped, for_reevaluate=True)
    saved = json.loads((root / "run" / "results.json").read_text())
    assert saved["preregistration"] == prereg  # unchanged by the run


def test_run_folder_errors_come_before_anything_is_loaded(tmp_path):
    """--resume / --reevaluate on a missing or incomplete folder: exit 2, one error: line
    naming the folder and what it lacks, and neither torch nor the demo's modules imported."""
    import subprocess
    import sys

    empty = tmp_path / "empty"
    empty.mkdir()
    probe = ("import sys\nfrom cord.cli import main\nrc = main(sys.argv[1:])\n"
             "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(rc)")
    for args, says in ((["--resume", str(tmp_path / "nope")], "the folder does not exist"),
                       (["--resume", str(empty)], "no run.json"),
                       (["--reevaluate", str(tmp_path / "nope")], "the folder does not exist"),
                       (["--reevaluate", str(empty)], "no results.json")):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", probe, "demo", *args], capture_output=True,
                           text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""})
        assert r.returncode == 2, (args, r.stderr)
        line = r.stderr.strip()
        assert line.startswith("cord demo: error: " + " ".join(args[:2])) and says in line
        assert "\n" not in line and time.perf_counter() - t < 30  # no model, no speech


def test_quick_claim_demo_reports_rule_power_preconditions_and_verdict(quick_claim):
    root, results, _, _ = quick_claim
    saved = json.loads((root / "run" / "results.json").read_text())
    for key in ("verdict_rule", "verdict", "verdict_parts", "verdict_reason", "power",
                "paired", "preconditions", "first_error_positions", "learning_rate", "steps",
                "summary"):
        assert key in saved, key
    assert saved["status"] == "complete" and saved["verdict_rule"] == VERDICT_RULE
    for x, p in saved["verdict_parts"]["a"].items():
        assert set(p) == {"edge", "margin", "powered"}, x
    hist = saved["first_error_positions"]
    assert sum(hist["by_band"].values()) == hist["n"] == len(hist["positions"])
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
    # the quick base is far outside the paper's regime: the rule says so in results.json...
    assert saved["verdict"]["a"].startswith("inconclusive (precondition ")
    assert "teacher_at_error" in saved["base_measures"]
    # ...but a smoke test prints no headline: it says first what it is
    console = CR.console_summary(saved)
    assert console.splitlines()[0] == QUICK_LINE and "verdict:" not in console
    readme = (root / "run" / "README.md").read_text()
    assert QUICK_LINE in readme.split("Command:")[0] and "**Verdict:" not in readme
    # a full run's README leads with the headline, then the rule, then the tables
    full = CR.verdict_block({**saved, "mode": "default"})
    assert full.startswith("**Verdict: inconclusive (precondition ")
    assert full.index("**Verdict:") < full.index("Verdict rule")
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
    for key in ("verdict_rule", "verdict", "verdict_parts", "verdict_reason", "power",
                "paired", "preconditions", "first_error_positions", "learning_rate", "steps",
                "summary"):
        assert key in one, key
    assert one["preconditions"]["late_first_errors"]["bound"] == ">= 0.3"
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
    """The full mode's code path at the quick size: two extra methods, one seed, the declared
    secondary analysis at its rate (3e-4 here) and the sensitivity at the grid's other rates."""
    quick = C.settings("quick")

    def small(mode):
        return {**quick, "methods": ("sft", "fkl", "cord", "sft_gold"),
                "extra": ("grpo_opd",), "extra_seeds": (0,), "sensitivity": True,
                "secondary": 3e-4}

    monkeypatch.setattr(C, "settings", small)
    monkeypatch.setattr(C, "RATE_GRID", (1e-4, 3e-4))
    results = C.run_claim_demo(mode="full", output_dir=tmp_path / "run",
                               cache_dir=tmp_path / "cache", progress=False, save_models=False)
    # at a shared rate of 3e-4 table (a) is the secondary analysis; else it has its own table
    extra = {"lr 0.0001"} if results["learning_rate"] == 3e-4 else {"secondary (3e-4)"}
    assert set(results["verdict"]) == {"a", "extra"} | extra
    assert set(results["verdict_parts"]) == set(results["verdict"])
    assert set(results["summary"]["extra"]) == {"base", "grpo_opd", "sft", "fkl", "cord"}
    assert "cord_ab1" not in C.FULL_EXTRA and "cord_ab3" in C.FULL_EXTRA  # α = β = 1 is GRPO+OPD
    assert any("secondary" in line for line in results["preregistration"]["analysis_plan"])
    readme = (tmp_path / "run" / "README.md").read_text()
    assert "## Table (extra)" in readme and f"## Table ({extra.pop()})" in readme
