"""``cord demo`` (the default task): CORD where the paper (arXiv 2601.16547) makes its claim.

1. Builds the claim task of :mod:`cord.demo.claim.data`: column arithmetic with an imperfect
   text teacher, a comparison task with its own modality gap (transfer) and beep counting
   (retention); neither of the last two is post-trained on by any method.
2. Loads the shipped pre-trained base (or pre-trains it) and measures the preconditions of the
   paper's regime on it, each printed with its bound.
3. Fixes ONE learning rate for every method, as the paper does, before any competitor runs:
   the smallest rate of a grid at which the positive control (gold SFT) beats the base on
   validation (:func:`choose_shared_rate`).
4. Post-trains every method from that base at that rate with the same data order, steps,
   prompts per step, rollout settings and live teacher (``--full``: more methods, the other
   rates of the grid as the sensitivity analysis).
5. Scores every model on held-out items and reports every metric with paired-bootstrap 95%
   CIs over items and seeds, the paired differences (with each method − base), the power of
   each comparison, and the verdict by a rule fixed in advance (:mod:`cord.demo.claim.verdict`).

Each job's result is saved the moment it ends (``DIR/jobs/``): ``cord demo --resume DIR``
finishes a run that stopped without retraining what is done. ``cord demo --reevaluate DIR
--eval-seed S`` re-scores the saved models of a run on new held-out items that nobody tuned
on.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cord.demo import jobs as J
from cord.demo import posttrain as P
from cord.demo.base import load_base
from cord.demo.claim import measure as CM
from cord.demo.claim import report as CR
from cord.demo.claim import verdict as CV
from cord.demo.claim.data import (
    CLAIM_QUICK,
    ClaimTaskConfig,
    fresh_eval_sets,
)
from cord.demo.claim.files import PRE_REGISTERED, RUN_FILE, check_run_dir
from cord.demo.claim.positions import LATE_TOKEN, position_histogram
from cord.demo.claim.task import ClaimTask
from cord.demo.claim.verdict import CONTROLS, DELTA, RETENTION_MARGIN, VERDICT_RULE
from cord.demo.format import say
from cord.demo.speech import SlottedSpeech
from cord.eval.analyze import save_rollouts
from cord.eval.stats import PairedItemBootstrap, ci95

MODES = ("quick", "default", "full")
COMPARED = ("sft", "fkl", "cord")
"""The claim's comparison: CORD against imitation of the text teacher (paper Table 1)."""
CLAIM_METHODS = COMPARED + tuple(CONTROLS.values())
"""The comparison and the positive controls (:data:`cord.demo.claim.verdict.CONTROLS`: gold SFT
in-domain; gold SFT on spoken comparisons, for transfer): the controls are never competitors;
they show how far each metric can move in the budget."""
FULL_EXTRA = ("grpo", "grpo_opd", "cord_ab3", "sft_audio", "fkl_audio", "cord_audio")
"""``--full`` adds the ablation ladder (GRPO, GRPO + OPD), the α = β sweep around CORD's 2 (the
paper's Figure 4: α = β = 3; α = β = 1 is GRPO + OPD itself, one objective, so it is not run
twice), and the three compared methods with the text side fixed (``trainable=audio``: encoder
and projector only, so the live teacher does not drift), at the shared rate."""
RATE_GRID = (1e-5, 3e-5, 1e-4)
"""The shared rate's grid: the paper's 3e-5 with one step each way."""
SECONDARY_RATE = 3e-5
"""``--full``'s declared secondary analysis (issue 38 D): the compared methods and both
controls at the paper's rate, 3 seeds, with a two-part verdict of its own."""
RATE_SEEDS = (0, 1)
RATE_CONTROL = "sft_gold"
TEACHER_ITEMS = 400

CLAIM_POST = P.PostTrainConfig(max_steps=200, max_completion_length=48, top_k=5, eval_every=40)
"""Every method's budget: 200 steps of 8 prompts (1600 prompts of the 2000-question pool, none
repeated), rollouts of at most 48 tokens, curves every 40 steps. K = 5 is the paper's K = 20 for
200-token rollouts scaled to this task's 48 (20 · 48 / 200 ≈ 5): about 15% of a 35-token worked
chain, as K = 20 is of the paper's answers."""


def settings(mode: str) -> dict[str, Any]:
    if mode == "quick":
        return {"task": CLAIM_QUICK, "post": replace(CLAIM_POST, max_steps=4, eval_every=4),
                "seeds": (0,), "rate_seeds": (0,), "methods": CLAIM_METHODS, "sensitivity": False}
    if mode == "default":
        return {"task": ClaimTaskConfig(), "post": CLAIM_POST, "seeds": (0, 1, 2),
                "rate_seeds": RATE_SEEDS, "methods": CLAIM_METHODS, "sensitivity": False}
    if mode == "full":
        return {"task": ClaimTaskConfig(), "post": CLAIM_POST, "seeds": (0, 1, 2),
                "rate_seeds": RATE_SEEDS, "methods": CLAIM_METHODS, "extra": FULL_EXTRA,
                "extra_seeds": (0, 1), "sensitivity": True, "secondary": SECONDARY_RATE}
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


# --------------------------------------------------------------------------------------------
# The shared learning rate
# --------------------------------------------------------------------------------------------


def choose_shared_rate(control_items: Mapping[float, Sequence[Sequence[int]]],
                       base_items: Sequence[int], *, resamples: int = 2000) -> dict[str, Any]:
    """The one rate every method trains at, fixed before any competitor runs.

    ``control_items``: rate -> per-seed validation in-domain audio verdicts (0/1 per item) of
    the positive control (gold SFT) trained at that rate; ``base_items``: the base's. The rate
    is the smallest at which the control beats the base significantly (the 95% paired-bootstrap
    CI of control − base audio accuracy above 0): the smallest step size at which the budget
    demonstrably moves the metric. No competitor's rate is tuned on its own result, and no rate
    is picked that only some methods survive. If no rate moves the control, the largest is
    taken and flagged (``controlled: False``): the comparison then has no power by construction.
    """
    if not control_items:
        raise ValueError("control_items must hold at least one rate")
    base = np.asarray(base_items, dtype=np.float64)
    grid = {}
    for rate in sorted(control_items):
        runs = np.asarray(control_items[rate], dtype=np.float64)
        boot = PairedItemBootstrap({"val": base.size}, runs.shape[0], resamples=resamples)
        point, reps = boot.accuracy("val", runs)
        base_point, base_reps = boot.accuracy("val", base)
        grid[rate] = {"control_audio": point, "base_audio": base_point,
                      "difference": point - base_point, "ci95": ci95(reps - base_reps)}
    moved = [r for r, g in grid.items() if g["ci95"][0] > 0]
    rate = min(moved) if moved else max(grid)
    return {
        "rule": (f"the smallest rate of {[float(r) for r in sorted(control_items)]} at which "
                 f"the positive control ({RATE_CONTROL}) beats the base on validation in-domain "
                 "audio accuracy with a 95% paired-bootstrap CI above 0, averaged over the "
                 "grid's seeds; every method then trains at that one rate"),
        "rate": float(rate), "controlled": bool(moved),
        "grid": {f"{r:g}": g for r, g in grid.items()},
    }


# --------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------


def base_measures(base, splits, task: ClaimTaskConfig, post: P.PostTrainConfig
                  ) -> dict[str, Any]:
    """The base's scores and the numbers behind the preconditions."""
    scores = CM.score_claim_model(base, splits, post)
    pool = P.accuracies(base, splits["pool"][:TEACHER_ITEMS], modalities=("text",),
                        max_new_tokens=post.max_completion_length)["text"]
    firsts = CM.first_error_positions(base, scores["audio_responses"], splits["eval"],
                                      scores["eval_audio_items"])
    at_error = CM.teacher_at_error(base, scores["audio_responses"], splits["eval"],
                                   scores["eval_audio_items"])
    values = {
        "teacher_accuracy": pool,
        "base_audio_over_text": scores["audio"] / scores["text"] if scores["text"] else None,
        "late_first_errors": (float(np.mean([k > LATE_TOKEN for k in firsts]))
                              if firsts else None),
        "teacher_at_error": at_error["value"],
        "retention_base": scores["retention"],
        "transfer_base_gap": scores["transfer_text"] - scores["transfer_audio"],
    }
    return {"scores": scores, "values": values, "first_error_positions": firsts,
            "teacher_at_error": at_error,
            "teacher_recovery": {"text": scores["recovery_text"],
                                 "audio": scores["recovery_audio"]}}


def _jobs(methods, seeds, rate, scratch: Path, out: Path | None, *, tag: str,
          save_models: bool, curve: bool = True) -> list[J.Job]:
    first = seeds[0]
    return [J.Job(m, s, rate, scratch / f"{tag}-{m}-{rate:g}-{s}", curve=curve and s == first,
                  kl_threshold=0.0 if s == first else None,
                  save_to=out / "models" / m if save_models and out and s == first else None)
            for s in seeds for m in methods]


def _collect(jobs, results) -> tuple[dict, dict, dict, dict]:
    scores, tokens, curves, kl_after = {}, {}, {}, {}
    for job, r in zip(jobs, results):
        scores.setdefault(job.method, []).append(r["scores"])
        tokens.setdefault(job.method, []).append(r["tokens"])
        if job.curve:
            curves[job.method] = r["curve"]
        if "kl_after" in r:
            kl_after[job.method] = r["kl_after"]
    return scores, tokens, curves, kl_after


def _announcer(table: str, total: int):
    """The line printed as each job ends (or is read back): its table, method, seed, rate and
    headline scores."""
    count = [0]

    def done(job, r) -> None:
        count[0] += 1
        s = r["scores"]
        say(f"[{count[0]}/{total}] table ({table}) {job.method} seed {job.seed} "
             f"(lr {job.learning_rate:g}): in-domain audio {100 * s['audio']:.1f}%, text "
             f"{100 * s['text']:.1f}%, transfer audio {100 * s['transfer_audio']:.1f}%, "
             f"retention {100 * s['retention']:.1f}%")

    return done


def _compact(scores: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Per-seed scores without the responses (the item verdicts stay: they are the CIs')."""
    return {m: [{k: v for k, v in s.items() if k != "audio_responses"} for s in runs]
            for m, runs in scores.items()}


def _cached(path: Path, ident: dict[str, Any], compute) -> dict[str, Any]:
    """``compute()``'s JSON-normal result, saved at ``path`` and read back on a resume."""
    saved = J.load_result(path, ident)
    if saved is not None:
        return saved
    result = json.loads(json.dumps(compute(), default=float))
    J.save_result(path, ident, result)
    return result




def preregistration(mode: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """What is fixed before any training (issue 38 B), written into ``results.json`` first:
    the rule, every precondition with its bound, the rate grid and the analysis plan."""
    plan = [
        "the base: every precondition measured on it, with its bound, before any comparison; "
        "the first-error positions (histogram, share after token 10) and the teacher at the "
        "student's first error, overall and by position band (0-1, 2-10, >10)",
        f"the shared rate: the smallest of {list(RATE_GRID)} at which gold SFT beats the base "
        f"on validation in-domain audio accuracy (paired-bootstrap CI above 0) over seeds "
        f"{list(cfg['rate_seeds'])}; every method trains at it",
        f"table (a), the primary analysis: {', '.join(cfg['methods'])} at the shared rate, "
        f"seeds {list(cfg['seeds'])}; paired-bootstrap 95% CIs over items and seeds of each "
        "gap reduction, retention and text accuracy, CORD − SFT, CORD − FKL, CORD − max(SFT, "
        "FKL) and each method − base; the headline by the rule",
    ]
    if cfg.get("secondary"):
        plan.append(f"secondary ({cfg['secondary']:g}): sft, fkl, cord and both controls at the "
                    f"paper's rate, seeds {list(cfg['seeds'])}, a two-part verdict of its own "
                    "labelled secondary")
    if cfg.get("extra"):
        plan.append(f"more methods at the shared rate, seeds {list(cfg['extra_seeds'])}: "
                    f"{', '.join(cfg['extra'])} (descriptive)")
    if cfg.get("sensitivity"):
        plan.append("sensitivity: the compared methods and controls at the grid's other rates, "
                    "one seed each (descriptive)")
    plan.append("anything else is exploratory and labelled so")
    return {"rule": VERDICT_RULE, "delta": DELTA, "retention_margin": RETENTION_MARGIN,
            "preconditions": {k: CV.preconditions({})[k]["bound"] for k in CV.BOUNDS},
            "rate_grid": list(RATE_GRID), "analysis_plan": plan, "mode": mode}


def _timings(jobs_dir: Path) -> tuple[Path, list[dict[str, float]]]:
    """This invocation's timings file and the earlier invocations' timings of this run."""
    earlier = [json.loads(p.read_text()) for p in sorted(jobs_dir.glob("timings-*.json"))]
    return jobs_dir / f"timings-{len(earlier):03d}.json", earlier


def run_claim_demo(*, mode: str = "default", seeds: Sequence[int] | None = None,
                   methods: Sequence[str] | None = None, output_dir: str | Path = "cord_demo",
                   cache_dir=None, refresh: bool = False, progress: bool = True,
                   command: str = "cord demo", save_models: bool = True,
                   workers: int = 1, resume: bool = False) -> dict[str, Any]:
    """The claim demo; returns (and writes to ``output_dir/results.json``) every number.

    Every job's result is saved in ``output_dir/jobs/`` the moment it ends; with ``resume``,
    the saved ones are read back instead of run again (see :func:`resume_claim_demo`)."""
    cfg = settings(mode)
    task, post = cfg["task"], cfg["post"]
    seeds, methods = J.run_options(cfg, seeds, methods)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs_dir, scratch = out / "jobs", out / ".scratch"
    if not resume and jobs_dir.exists():
        shutil.rmtree(jobs_dir)  # a new run: nothing of an earlier one is reused
    jobs_dir.mkdir(parents=True, exist_ok=True)
    timings_file, earlier = _timings(jobs_dir)
    (out / RUN_FILE).write_text(json.dumps(
        {"mode": mode, "seeds": list(seeds), "methods": list(methods),
         "save_models": save_models, "command": command}, indent=1))
    prereg = preregistration(mode, {**cfg, "seeds": seeds, "methods": methods})
    if not resume or not (out / "results.json").is_file():
        (out / "results.json").write_text(json.dumps(
            {"status": PRE_REGISTERED, "task_name": "claim", "mode": mode,
             "verdict_rule": VERDICT_RULE, "preregistration": prereg}, indent=1))
    timings: dict[str, float] = {}
    t0 = t = time.perf_counter()

    def phase(name: str, start: float) -> None:
        timings[name] = time.perf_counter() - start
        timings["total"] = time.perf_counter() - t0
        timings_file.write_text(json.dumps(timings))

    if mode != "quick":  # a quick run's first line says what it is (cord/demo/cli.py)
        say(f"verdict rule (fixed before any training): {VERDICT_RULE}")
    claim = ClaimTask(task)
    splits, base, base_path, source = J.open_task(claim, cache_dir, refresh=refresh,
                                                  progress=progress, timings=timings)
    ctx = J.Context(claim, post, base_path, cache_dir)
    ident = {"task": asdict(task), "post": asdict(post), "base": J.base_name(base_path)}

    # 1. The shared rate, from the positive control alone.
    t = time.perf_counter()
    base_val = _cached(jobs_dir / "base-val.json", ident,
                       lambda: CM.validation_scores(base, splits, post))
    grid_jobs = [J.Job(RATE_CONTROL, s, lr, scratch / f"grid-{RATE_CONTROL}-{lr:g}-{s}",
                       score=False) for lr in RATE_GRID for s in cfg["rate_seeds"]]

    def grid_done(job, r):
        v = r["val"]
        say(f"  [rate grid] {job.method} seed {job.seed} lr {job.learning_rate:g}: validation "
             f"audio {100 * v['audio']:.1f}% (base {100 * base_val['audio']:.1f}%), text "
             f"{100 * v['text']:.1f}%, retention {100 * v['retention']:.1f}%")

    grid_results = J.run_jobs(ctx, grid_jobs, workers=workers, on_done=grid_done,
                              results_dir=jobs_dir)
    control_items: dict[float, list] = {}
    for job, r in zip(grid_jobs, grid_results):
        control_items.setdefault(job.learning_rate, []).append(r["val"]["audio_items"])
    rate_choice = choose_shared_rate(control_items, base_val["audio_items"])
    rate = rate_choice["rate"]
    phase("rate_grid", t)
    say(f"shared learning rate: {rate:g}" + ("" if rate_choice["controlled"] else
         " (no rate of the grid moved the control" + (": expected at the smoke test's size)"
                                                     if mode == "quick" else
                                                     ": the comparison has no power)")))

    # 2. The base: its scores and the preconditions.
    t = time.perf_counter()

    def measure_base() -> dict[str, Any]:
        measured = base_measures(base, splits, task, post)
        rollouts, kl = CM.kl_by_correctness(base, splits["eval"][: CM.KL_ITEMS], post)
        save_rollouts(rollouts, out / "base_rollouts.jsonl")
        return {**measured, "kl": kl, "curves_base": CM.curve_scores(base, splits, post),
                "grad_norms": P.loss_gradient_norms(base, claim.training_records(splits, "sft"),
                                                    post)}

    measured = _cached(jobs_dir / "base.json", ident, measure_base)
    pre = CV.preconditions(measured["values"])
    phase("base_eval", t)
    for name, p in pre.items():
        v = "n/a" if p["value"] is None else f"{p['value']:.3f}"
        say(f"precondition {name}: {v} ({p['bound']}){'' if p['ok'] else '  not met'}")
    hist = position_histogram(measured["first_error_positions"])
    say("base's first wrong token by position band: " + ", ".join(
        f"{k}: {v}" for k, v in hist["by_band"].items()) + f" (of {hist['n']} wrong answers)")

    # 3. Every method at the shared rate; --full adds methods and the other rates.
    t = time.perf_counter()
    plan = {"a": (methods, seeds, rate)}
    if cfg.get("extra"):
        plan["extra"] = (tuple(cfg["extra"]) + COMPARED, tuple(cfg["extra_seeds"]), rate)
    if cfg.get("secondary") and cfg["secondary"] != rate:  # else table (a) is at that rate
        plan[CR.secondary_table(cfg["secondary"])] = (methods, seeds, cfg["secondary"])
    if cfg["sensitivity"]:
        for r in RATE_GRID:
            if r != rate and not (cfg.get("secondary") and r == cfg["secondary"]):
                plan[f"lr {r:g}"] = (methods, seeds[:1], r)
    summary, paired, verdicts, reasons, powers, scores_all, tokens_all = ({}, {}, {}, {}, {},
                                                                         {}, {})
    curves, kl_after, parts, sentences = {}, {}, {}, {}
    for table, (t_methods, t_seeds, t_rate) in plan.items():
        jobs = _jobs(t_methods, t_seeds, t_rate, scratch, out if table == "a" else None,
                     tag=table.replace(" ", ""), save_models=save_models, curve=table == "a")
        results = J.run_jobs(ctx, jobs, workers=workers, on_done=_announcer(table, len(jobs)),
                             results_dir=jobs_dir)
        scores, tokens, c, k = _collect(jobs, results)
        if table == "a":
            curves, kl_after = c, k
        scores["base"] = [measured["scores"]]
        s = CR.summarize(scores, tokens, {m: t_rate for m in t_methods}, preconditions=pre,
                         curves=c)
        summary[table], paired[table] = s["summary"], s["paired"]
        verdicts[table], reasons[table], powers[table] = s["verdict"], s["reason"], s["power"]
        parts[table], sentences[table] = s["parts"], s["sentence"]
        scores_all[table], tokens_all[table] = _compact(scores), tokens
    phase("post_train", t)

    t = time.perf_counter()
    if save_models:
        base.model.save_pretrained(out / "models" / "base")
        base.processor.save_pretrained(out / "models" / "base")
    phase("report", t)
    every = [*earlier, timings]
    run_timings = {k: sum(tm.get(k, 0.0) for tm in every) for k in timings}
    results = {
        "status": "complete", "preregistration": prereg,
        "task_name": "claim", "mode": mode, "seeds": list(seeds), "methods": list(methods),
        "task": asdict(task), "post_training": asdict(post), "base_source": source,
        "learning_rate": rate, "steps": post.max_steps, "learning_rate_rule": rate_choice,
        "preconditions": pre, "summary": summary, "paired": paired, "verdict": verdicts,
        "verdict_reason": reasons, "verdict_sentence": sentences, "verdict_parts": parts,
        "power": powers.get("a"), "power_by_table": powers, "verdict_rule": VERDICT_RULE,
        "first_error_positions": {
            **position_histogram(measured["first_error_positions"]),
            "positions": measured["first_error_positions"],
            "teacher_at_error_by_band": measured["teacher_at_error"].get("by_band")},
        "base_measures": {"values": measured["values"],
                          "first_error_positions": measured["first_error_positions"],
                          "teacher_at_error": measured["teacher_at_error"],
                          "teacher_recovery": measured["teacher_recovery"]},
        "kl": {"base": measured["kl"], "after": kl_after}, "curves": curves,
        "curves_base": measured["curves_base"], "loss_gradient_norms": measured["grad_norms"],
        "per_seed": scores_all, "timings_s": run_timings,
        "timings_s_resume": timings if earlier else None,
        "setting": setting_text(task, post, seeds, rate), "command": command,
        "environment": (f"Python {platform.python_version()}, torch {torch.__version__}, "
                        f"{platform.processor() or platform.machine()} ({cpu_name()}), "
                        f"{os.cpu_count()} core(s), {torch.get_num_threads()} thread(s), "
                        f"{workers} worker(s), base {source}"),
    }
    CR.write_report(results, out, command)
    shutil.rmtree(scratch, ignore_errors=True)
    return results


def resume_claim_demo(directory: str | Path, *, cache_dir=None, progress: bool = True,
                      workers: int = 1) -> dict[str, Any]:
    """Finishes the run in ``directory`` with the options it was started with: every job whose
    result is saved is read back, the rest run, then the report is written."""
    directory = Path(directory)
    run_file = directory / RUN_FILE
    if not run_file.is_file():
        raise FileNotFoundError(f"{directory} holds no {RUN_FILE}: not a claim-demo run "
                                "(cord demo --output-dir DIR starts one)")
    opts = json.loads(run_file.read_text())
    return run_claim_demo(mode=opts["mode"], seeds=opts["seeds"], methods=opts["methods"],
                          output_dir=directory, cache_dir=cache_dir, progress=progress,
                          command=opts["command"], save_models=opts["save_models"],
                          workers=workers, resume=True)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for the timings' record."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def setting_text(task: ClaimTaskConfig, post: P.PostTrainConfig, seeds, rate: float) -> str:
    return (
        f"Every method: one shared learning rate {rate:g} (AdamW), {post.max_steps} steps of "
        f"{post.batch_size} unlabelled prompts from the "
        f"same {task.pool_questions}-question pool in the same order, rollouts of at most "
        f"{post.max_completion_length} tokens (T = {post.temperature}; GRPO groups of "
        f"{post.num_generations} at T = {post.grpo_temperature}), K = {post.top_k} (the "
        f"paper's 20 scaled to the completion length), the live teacher; {len(seeds)} seed(s). "
        f"Gap reduction = 1 − Δ_method / Δ_base with Δ = Acc_text(base) − Acc_audio, on the "
        f"in-domain set and on the transfer (comparison) set; retention = beep-counting "
        f"accuracy; text after = in-domain text accuracy. Recovery: share answered right after "
        f"a forced wrong first step, text / audio side. 95% CIs: paired bootstrap over items "
        f"and seeds (2000 resamples). The gold-SFT controls are positive controls, not "
        f"competitors (the transfer control trains on {task.compare_pool} spoken comparisons "
        f"disjoint from the transfer set).")


# --------------------------------------------------------------------------------------------
# Re-evaluation on fresh items
# --------------------------------------------------------------------------------------------


def reevaluate(directory: str | Path, eval_seed: int, *, cache_dir=None,
               progress: bool = True) -> dict[str, Any]:
    """Re-scores the saved models of a claim-demo run on fresh in-domain, transfer and
    retention items drawn from ``eval_seed`` (nothing any model or rule saw), and writes
    ``DIR/reevaluate-<seed>/`` (results.json and README.md): the same tables, with item
    bootstrap CIs (one saved model per method)."""
    directory = Path(directory)
    lacks = check_run_dir(directory, for_reevaluate=True)
    if lacks:
        raise FileNotFoundError(f"{directory}: {lacks}")
    run = json.loads((directory / "results.json").read_text())
    task = ClaimTaskConfig(**run["task"])
    post = P.PostTrainConfig(**run["post_training"])
    models = directory / "models"
    methods = [m for m in run["methods"] if (models / m / "config.json").is_file()]
    fresh = fresh_eval_sets(task, eval_seed)
    speech = SlottedSpeech(slot_seconds=task.slot_seconds, rate=task.tts_rate,
                           cache_dir=cache_dir)
    speech.prepare([w for k in ("eval", "transfer") for r in fresh[k] for w in r["text"].split()])
    for k in ("eval", "transfer"):
        fresh[k] = [{**r, "audio": {"array": speech.speak(r["text"]),
                                    "sampling_rate": 16_000}} for r in fresh[k]]
    scores = {}
    base = load_base(models / "base")
    for m in ["base", *methods]:
        if progress:
            say(f"re-scoring {m} on eval seed {eval_seed}")
        scores[m] = [CM.score_claim_model(base if m == "base" else load_base(models / m), fresh,
                                          post)]
    rate = run["learning_rate"]
    # the tokens each method generated in post-training (the run's), not in this scoring
    tokens = {m: [run["summary"]["a"][m]["generated_tokens"]] for m in methods}
    s = CR.summarize(scores, tokens, {m: rate for m in methods},
                     preconditions=run["preconditions"])
    out = directory / f"reevaluate-{eval_seed}"
    out.mkdir(exist_ok=True)
    firsts = CM.first_error_positions(base, scores["base"][0]["audio_responses"], fresh["eval"],
                                      scores["base"][0]["eval_audio_items"])
    result = {"eval_seed": eval_seed, "methods": methods, "learning_rate": rate,
              "steps": run["steps"], "preconditions": run["preconditions"],
              "preconditions_source": "measured on the base in the run (not re-measured)",
              "summary": {"a": s["summary"]}, "paired": {"a": s["paired"]},
              "verdict": {"a": s["verdict"]}, "verdict_reason": {"a": s["reason"]},
              "verdict_sentence": {"a": s["sentence"]}, "verdict_parts": {"a": s["parts"]},
              "power": s["power"], "verdict_rule": VERDICT_RULE,
              "first_error_positions": {**position_histogram(firsts), "positions": firsts,
                                        "items": "the base's wrong answers on these items"},
              "items": {k: [r["id"] for r in v] for k, v in fresh.items()}}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=float))
    text = [f"# Re-evaluation of {directory} on fresh items (eval seed {eval_seed})", "",
            "The seed-0 model of every method, scored on new held-out items; CIs are item "
            "bootstrap only (one model per method). The preconditions are the run's, measured "
            "on its base.", "", CR.verdict_block(result),
            CR.summary_table(s["summary"]), CR.paired_table(s["paired"])]
    (out / "README.md").write_text("\n".join(text) + "\n")
    return result
