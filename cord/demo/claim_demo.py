"""``cord demo`` (the default task): CORD where the paper (arXiv 2601.16547) makes its claim.

1. Builds the claim task of :mod:`cord.demo.claim_task`: column arithmetic with an imperfect
   text teacher, a comparison task with its own modality gap (transfer) and beep counting
   (retention); neither of the last two is post-trained on by any method.
2. Loads the shipped pre-trained base (or pre-trains it) and measures the preconditions of the
   paper's regime on it, each printed with its bound.
3. Post-trains every method from that base with the same data order, steps, prompts per step,
   rollout settings and live teacher; learning rates by one rule (table (a): per method;
   table (b): one shared rate, ``--full``).
4. Scores every model on fresh held-out items and reports every metric with paired-bootstrap
   95% CIs over items and seeds, the paired differences, and the verdict by a rule fixed in
   advance (:mod:`cord.demo.verdict`).

``cord demo --reevaluate DIR --eval-seed S`` re-scores the saved models of a run on new held-out
items that nobody tuned on.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cord.demo import claim_measure as CM
from cord.demo import claim_report as CR
from cord.demo import jobs as J
from cord.demo import measure as M
from cord.demo import posttrain as P
from cord.demo.claim_task import (
    CLAIM_QUICK,
    ClaimTaskConfig,
    build_claim_model,
    fresh_eval_sets,
    pretrain_claim,
)
from cord.demo.gap_task import SlottedSpeech, default_cache_dir, load_base, pretrained_base
from cord.demo.verdict import VERDICT_RULE
from cord.eval.analyze import save_rollouts

MODES = ("quick", "default", "full")
METHODS = ("sft", "fkl", "grpo", "grpo_opd", "cord", "sft_gold")
"""The competitors and the gold-SFT diagnostic (which is never a competitor)."""
COMPETITORS = ("sft", "fkl", "grpo", "grpo_opd", "cord")
SWEEP = ("cord_ab1", "cord_ab3")
"""The full mode's α = β sweep around CORD's α = β = 2 (the paper's Figure 4)."""
ABLATION = {"methods": ("sft", "fkl", "cord"), "seeds": (0, 1, 2)}
"""The full mode's no-prior ablation: Table 1's methods from a base pre-trained without the
self-correction prior (same rates as table (a)), so the teacher cannot recover from a wrong
prefix: how much of CORD's result rests on that?"""
RATE_GRID = (3e-5, 1e-4, 3e-4)
RATE_SEEDS = (0, 1)
TOLERANCE = 0.03
"""The rate rule's guard: validation text accuracy and retention within 3 points of the base's."""
RATES_FILE = Path(__file__).with_name("claim_learning_rates.json")
"""The rates the full mode's grid chose (committed; the default and quick modes use them)."""
TEACHER_ITEMS = 400

CLAIM_POST = P.PostTrainConfig(max_completion_length=48, top_k=5)
"""Every method's budget: 40 steps of 8 prompts, rollouts of at most 48 tokens. K = 5 is the
paper's K = 20 for 200-token rollouts scaled to this task's 48 (20 · 48 / 200 ≈ 5): about 15% of
a 35-token worked chain, as K = 20 is of the paper's answers."""


def settings(mode: str) -> dict[str, Any]:
    if mode == "quick":
        return {"task": CLAIM_QUICK, "post": replace(CLAIM_POST, max_steps=4, eval_every=2),
                "seeds": (0,), "grid": False}
    if mode == "default":
        return {"task": ClaimTaskConfig(), "post": CLAIM_POST, "seeds": (0, 1, 2),
                "grid": False}
    if mode == "full":
        return {"task": ClaimTaskConfig(), "post": CLAIM_POST, "seeds": (0, 1, 2, 3, 4),
                "grid": True, "methods": METHODS + SWEEP, "ablation": ABLATION}
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _say(msg: str) -> None:
    tqdm.write(msg)


# --------------------------------------------------------------------------------------------
# The learning-rate rule
# --------------------------------------------------------------------------------------------


def select_rate(grid: Mapping[float, Mapping[str, float]], base_val: Mapping[str, float]
                ) -> dict[str, Any]:
    """The rule, the same for every method (and for the methods' average, table (b)).

    ``grid``: rate -> mean over :data:`RATE_SEEDS` of validation ``{text, audio, retention}``.
    Among the rates whose text accuracy and retention both stay within :data:`TOLERANCE` of the
    base's, the smallest validation in-domain gap Acc_text(base) − Acc_audio; ties go to the
    smaller rate. If no rate is admissible, the smallest is taken and flagged."""
    admissible = [r for r, v in grid.items()
                  if base_val["text"] - v["text"] <= TOLERANCE + 1e-9
                  and base_val["retention"] - v["retention"] <= TOLERANCE + 1e-9]
    if not admissible:
        return {"rate": min(grid), "admissible": False}
    best = min(admissible, key=lambda r: (base_val["text"] - grid[r]["audio"], r))
    return {"rate": best, "admissible": True}


def choose_rates(runs: Mapping[str, Mapping[float, Sequence[Mapping[str, float]]]],
                 base_val: Mapping[str, float]) -> dict[str, Any]:
    """Tables (a) and (b) from the grid's validation runs (method -> rate -> per-seed scores):
    ``{"rule", "base_val", "grid", "selected": {method: ...}, "shared": {...}}``."""
    mean = {m: {r: {k: float(np.mean([s[k] for s in seeds])) for k in ("text", "audio",
                                                                        "retention")}
                for r, seeds in by_rate.items()} for m, by_rate in runs.items()}
    selected = {m: select_rate(g, base_val) for m, g in mean.items()}
    competitors = [m for m in mean if m in COMPETITORS]
    rates = sorted(set.intersection(*(set(mean[m]) for m in competitors)))
    average = {r: {k: float(np.mean([mean[m][r][k] for m in competitors]))
                   for k in ("text", "audio", "retention")} for r in rates}
    return {
        "rule": (f"among {list(RATE_GRID)}, averaged over seeds {list(RATE_SEEDS)}: the smallest "
                 f"validation in-domain gap whose validation text accuracy and retention are "
                 f"both within {TOLERANCE:.0%} of the base's; (a) per method, (b) one rate for "
                 "every method, by the same rule on the competitors' average"),
        "base_val": dict(base_val),
        "grid": {m: {f"{r:g}": v for r, v in g.items()} for m, g in mean.items()},
        "selected": selected,
        "shared": {"average": {f"{r:g}": v for r, v in average.items()},
                   **select_rate(average, base_val)},
    }


def committed_rates() -> dict[str, Any]:
    if not RATES_FILE.is_file():
        raise FileNotFoundError(f"{RATES_FILE} is missing: run `cord demo --full --rates-only`")
    return json.loads(RATES_FILE.read_text())


# --------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------


def claim_base(task: ClaimTaskConfig, splits, *, cache_dir=None, progress=True,
               refresh=False):
    return pretrained_base(task, splits, cache_dir=cache_dir, progress=progress,
                           refresh=refresh, build=build_claim_model, train=pretrain_claim)


def base_measures(base, splits, task: ClaimTaskConfig, post: P.PostTrainConfig
                  ) -> dict[str, Any]:
    """The base's scores and the numbers behind the preconditions."""
    scores = CM.score_claim_model(base, splits, post)
    pool = P.accuracies(base, splits["pool"][:TEACHER_ITEMS], modalities=("text",),
                        max_new_tokens=post.max_completion_length)["text"]
    firsts = CM.first_error_positions(base, scores["audio_responses"], splits["eval"],
                                      scores["eval_audio_items"])
    values = {
        "teacher_accuracy": pool,
        "base_audio_over_text": scores["audio"] / scores["text"] if scores["text"] else None,
        "late_first_errors": (float(np.mean([k > CM.LATE_TOKEN for k in firsts]))
                              if firsts else None),
        "teacher_recovery": scores["recovery_text"],
        "retention_base": scores["retention"],
        "transfer_base_gap": scores["transfer_text"] - scores["transfer_audio"],
    }
    return {"scores": scores, "values": values, "first_error_positions": firsts}


def _jobs(methods, seeds, rates, scratch: Path, out: Path | None, *, tag: str,
          save_models: bool, curve: bool = True) -> list[J.Job]:
    first = seeds[0]
    return [J.Job(m, s, rates[m], scratch / f"{tag}-{m}-{s}", curve=curve and s == first,
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
    """The line printed as each job ends: its table, method, seed, rate and headline scores."""
    count = [0]

    def done(job, r) -> None:
        count[0] += 1
        s = r["scores"]
        _say(f"[{count[0]}/{total}] table ({table}) {job.method} seed {job.seed} "
             f"(lr {job.learning_rate:g}): in-domain audio {100 * s['audio']:.1f}%, text "
             f"{100 * s['text']:.1f}%, transfer audio {100 * s['transfer_audio']:.1f}%, "
             f"retention {100 * s['retention']:.1f}%")

    return done


def _compact(scores: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Per-seed scores without the responses (the item verdicts stay: they are the CIs')."""
    return {m: [{k: v for k, v in s.items() if k != "audio_responses"} for s in runs]
            for m, runs in scores.items()}


def run_claim_demo(*, mode: str = "default", seeds: Sequence[int] | None = None,
                   methods: Sequence[str] | None = None, output_dir: str | Path = "cord_demo",
                   cache_dir=None, refresh: bool = False, progress: bool = True,
                   command: str = "cord demo", save_models: bool = True,
                   rates_only: bool = False, workers: int = 1) -> dict[str, Any]:
    """The claim demo; returns (and writes to ``output_dir/results.json``) every number."""
    cfg = settings(mode)
    task, post = cfg["task"], cfg["post"]
    seeds = tuple(cfg["seeds"] if seeds is None else seeds)
    methods = tuple(cfg.get("methods", METHODS) if methods is None else methods)
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    bad = [m for m in methods if m not in P.METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty subset of {list(P.METHODS)}, got "
                         f"{list(methods)}")
    if rates_only and not cfg["grid"]:
        raise ValueError("rates_only needs mode='full' (the mode that runs the grid)")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / ".scratch"
    timings: dict[str, float] = {}
    t0 = t = time.perf_counter()
    _say(f"cache: {Path(cache_dir or default_cache_dir())} (word clips and pre-trained bases; "
         "--cache-dir or the CORD_CACHE variable moves it)")
    splits = J.task_splits(task, cache_dir)
    timings["speech"] = time.perf_counter() - t
    _say(f"task: the text side learns column arithmetic from {task.text_questions} worked "
         f"examples; {len(splits['pool'])} fresh questions form the distillation pool; "
         f"{len(splits['eval'])} in-domain, {len(splits['transfer'])} transfer (comparison) and "
         f"{len(splits['retention'])} retention (beep counting) held-out items")

    t = time.perf_counter()
    base, base_path, source = claim_base(task, splits, cache_dir=cache_dir, progress=progress,
                                         refresh=refresh)
    timings["pretrain"] = time.perf_counter() - t
    _say(f"base: {sum(p.numel() for p in base.model.parameters()) / 1e3:.0f}k parameters, "
         f"{source} ({base_path})")
    ctx = J.Context(task, post, base_path, cache_dir)

    t = time.perf_counter()
    base_val = CM.validation_scores(base, splits, post)
    if cfg["grid"]:
        grid_jobs = [J.Job(m, s, lr, scratch / f"grid-{m}-{lr:g}-{s}", score=False)
                     for m in methods for lr in RATE_GRID for s in RATE_SEEDS]

        def grid_done(job, r):
            v = r["val"]
            _say(f"  [grid] {job.method} seed {job.seed} lr {job.learning_rate:g}: validation "
                 f"text {100 * v['text']:.1f}%, audio {100 * v['audio']:.1f}%, retention "
                 f"{100 * v['retention']:.1f}%")

        grid_results = J.run_jobs(ctx, grid_jobs, workers=workers, on_done=grid_done)
        runs: dict[str, dict[float, list]] = {}
        for job, r in zip(grid_jobs, grid_results):
            runs.setdefault(job.method, {}).setdefault(job.learning_rate, []).append(r["val"])
        grid = choose_rates(runs, base_val)
        grid["post_training"] = asdict(post)
        (out / "learning_rates.json").write_text(json.dumps(grid, indent=1))
        if rates_only:
            shutil.rmtree(scratch, ignore_errors=True)
            return {"mode": mode, "learning_rate_grid": grid,
                    "timings_s": {**timings, "rate_grid": time.perf_counter() - t}}
    else:
        grid = committed_rates()
    missing = [m for m in methods if m not in grid["selected"]]
    if missing:
        raise ValueError(f"{RATES_FILE} has no learning rate for {missing}: run "
                         "`cord demo --full --rates-only`")
    rates = {"a": {m: float(grid["selected"][m]["rate"]) for m in methods}}
    if cfg["grid"]:
        rates["b"] = {m: float(grid["shared"]["rate"]) for m in methods}
    timings["rate_grid"] = time.perf_counter() - t

    t = time.perf_counter()
    measured = base_measures(base, splits, task, post)
    pre = CR.preconditions(measured["values"], self_correction=task.self_correction)
    base_rollouts, base_kl = CM.kl_by_correctness(base, splits["eval"][: CM.KL_ITEMS], post)
    curves_base = CM.curve_scores(base, splits, post)
    grad_norms = M.loss_gradient_norms(base, J.training_records(task, splits), post)
    timings["base_eval"] = time.perf_counter() - t
    for name, p in pre.items():
        v = "n/a" if p["value"] is None else f"{p['value']:.3f}"
        _say(f"precondition {name}: {v} ({p['bound']}){'' if p['ok'] else '  NOT MET'}")

    t = time.perf_counter()
    summary, paired, verdicts, scores_all, tokens_all = {}, {}, {}, {}, {}
    curves, kl_after = {}, {}
    for table, table_rates in rates.items():
        jobs = _jobs(methods, seeds, table_rates, scratch, out if table == "a" else None,
                     tag=table, save_models=save_models, curve=table == "a")
        done = _announcer(table, len(jobs))
        results = J.run_jobs(ctx, jobs, workers=workers, on_done=done)
        scores, tokens, c, k = _collect(jobs, results)
        if table == "a":
            curves, kl_after = c, k
        scores["base"] = [measured["scores"]]
        s = CR.summarize(scores, tokens, table_rates)
        summary[table], paired[table], verdicts[table] = s["summary"], s["paired"], s["verdict"]
        scores_all[table], tokens_all[table] = _compact(scores), tokens
    if cfg.get("ablation"):
        ablation = cfg["ablation"]
        ab_methods = tuple(m for m in ablation["methods"] if m in methods)
        ab = _no_prior_table(task, post, ab_methods, ablation["seeds"], rates["a"], scratch,
                             cache_dir=cache_dir, progress=progress, refresh=refresh,
                             workers=workers)
        summary["no_prior"], paired["no_prior"], verdicts["no_prior"] = (
            ab["summary"], ab["paired"], ab["verdict"])
        pre_no_prior = ab["preconditions"]
    else:
        pre_no_prior = None
    timings["post_train"] = time.perf_counter() - t

    t = time.perf_counter()
    save_rollouts(base_rollouts, out / "base_rollouts.jsonl")
    if save_models:
        base.model.save_pretrained(out / "models" / "base")
        base.processor.save_pretrained(out / "models" / "base")
    shutil.rmtree(scratch, ignore_errors=True)
    timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    results = {
        "task_name": "claim", "mode": mode, "seeds": list(seeds), "methods": list(methods),
        "task": asdict(task), "post_training": asdict(post), "base_source": source,
        "preconditions": pre, "preconditions_no_prior": pre_no_prior, "summary": summary,
        "paired": paired, "verdict": verdicts,
        "verdict_rule": VERDICT_RULE, "learning_rates": rates, "learning_rate_grid": grid,
        "base_measures": {"values": measured["values"],
                          "first_error_positions": measured["first_error_positions"]},
        "kl": {"base": base_kl, "after": kl_after}, "curves": curves,
        "curves_base": curves_base, "loss_gradient_norms": grad_norms,
        "per_seed": scores_all, "timings_s": timings,
        "setting": setting_text(task, post, seeds), "command": command,
        "environment": (f"Python {platform.python_version()}, torch {torch.__version__}, "
                        f"{torch.get_num_threads()} thread(s), {workers} worker(s), base "
                        f"{source}"),
    }
    CR.write_report(results, out, command)
    return results


def _no_prior_table(task: ClaimTaskConfig, post, methods, seeds, rates, scratch: Path, *,
                    cache_dir, progress, refresh, workers) -> dict[str, Any]:
    """The no-prior ablation: the same methods and rates from a base pre-trained without the
    self-correction prior; its own base scores and preconditions."""
    nop = replace(task, self_correction=False)
    splits = J.task_splits(nop, cache_dir)
    base, path, _ = claim_base(nop, splits, cache_dir=cache_dir, progress=progress,
                               refresh=refresh)
    measured = base_measures(base, splits, nop, post)
    jobs = _jobs(methods, seeds, rates, scratch, None, tag="noprior", save_models=False,
                 curve=False)
    results = J.run_jobs(J.Context(nop, post, path, cache_dir), jobs, workers=workers,
                         on_done=_announcer("no_prior", len(jobs)))
    scores, tokens, _, _ = _collect(jobs, results)
    scores["base"] = [measured["scores"]]
    out = CR.summarize(scores, tokens, rates)
    out["preconditions"] = CR.preconditions(measured["values"], self_correction=False)
    return out


def setting_text(task: ClaimTaskConfig, post: P.PostTrainConfig, seeds) -> str:
    return (
        f"Every method: {post.max_steps} steps of {post.batch_size} unlabelled prompts from the "
        f"same {task.pool_questions}-question pool in the same order, rollouts of at most "
        f"{post.max_completion_length} tokens (T = {post.temperature}; GRPO groups of "
        f"{post.num_generations} at T = {post.grpo_temperature}), K = {post.top_k} (the "
        f"paper's 20 scaled to the completion length), the live teacher; {len(seeds)} seed(s). "
        f"Gap reduction = 1 − Δ_method / Δ_base with Δ = Acc_text(base) − Acc_audio, on the "
        f"in-domain set and on the transfer (comparison) set; retention = beep-counting "
        f"accuracy; text after = in-domain text accuracy. Recovery: share answered right after "
        f"a forced wrong first step, text / audio side. 95% CIs: paired bootstrap over items "
        f"and seeds (2000 resamples). Gold SFT is a diagnostic, not a competitor.")


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
    run = json.loads((directory / "results.json").read_text())
    if run.get("task_name") != "claim":
        raise ValueError(f"{directory} is not a claim-demo run (cord demo --task claim)")
    task = ClaimTaskConfig(**run["task"])
    post = P.PostTrainConfig(**run["post_training"])
    models = directory / "models"
    methods = [m for m in run["methods"] if (models / m / "config.json").is_file()]
    if not (models / "base" / "config.json").is_file() or not methods:
        raise FileNotFoundError(f"{models} lacks the saved base or methods: run the demo "
                                "without --no-save-models")
    fresh = fresh_eval_sets(task, eval_seed)
    speech = SlottedSpeech(slot_seconds=task.slot_seconds, rate=task.tts_rate,
                           cache_dir=cache_dir)
    speech.prepare([w for k in ("eval", "transfer") for r in fresh[k] for w in r["text"].split()])
    for k in ("eval", "transfer"):
        fresh[k] = [{**r, "audio": {"array": speech.speak(r["text"]),
                                    "sampling_rate": 16_000}} for r in fresh[k]]
    scores = {}
    for m in ["base", *methods]:
        if progress:
            _say(f"re-scoring {m} on eval seed {eval_seed}")
        scores[m] = [CM.score_claim_model(load_base(models / m), fresh, post)]
    rates = run["learning_rates"]["a"]
    # the tokens each method generated in post-training (the run's), not in this scoring
    tokens = {m: [run["summary"]["a"][m]["generated_tokens"]] for m in methods}
    s = CR.summarize(scores, tokens, rates)
    out = directory / f"reevaluate-{eval_seed}"
    out.mkdir(exist_ok=True)
    result = {"eval_seed": eval_seed, "methods": methods, "summary": {"a": s["summary"]},
              "paired": {"a": s["paired"]}, "verdict": {"a": s["verdict"]},
              "verdict_rule": VERDICT_RULE,
              "items": {k: [r["id"] for r in v] for k, v in fresh.items()}}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=float))
    text = [f"# Re-evaluation of {directory} on fresh items (eval seed {eval_seed})", "",
            "The seed-0 model of every method, scored on new held-out items; CIs are item "
            "bootstrap only (one model per method).", "", CR.verdict_block(result),
            CR.summary_table(s["summary"]), CR.paired_table(s["paired"])]
    (out / "README.md").write_text("\n".join(text) + "\n")
    return result
