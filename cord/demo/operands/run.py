"""``cord demo --task operands``: CORD against the paper's baselines on a tiny audio LM, on a CPU.

1. Builds the spoken arithmetic task of :mod:`cord.demo.operands.data` (eSpeak NG speech).
2. Pre-trains a tiny Qwen2-Audio-shaped model with much more text than spoken-QA supervision,
   which opens a gap in the paper's regime (audio at 40-85% of text accuracy). The base is
   cached per configuration and always read back from disk, so cold and warm runs agree.
3. Measures the preconditions of a fair test (base accuracies, completion length against K,
   the text side kept) and prints each with its bound.
4. From that same start, for every seed, post-trains with every method
   (:mod:`cord.demo.posttrain`: same prompts, steps, batch and rollout settings; learning rates
   chosen by one rule on a validation split) and scores each on held-out items: audio and text
   accuracy, retention (transcription, which post-training never targets) and transfer (a
   question form post-training never sees).
5. Reports the paper's Table 1 and Table 3 with paired-bootstrap 95% confidence intervals,
   training curves and the KL figures (:mod:`cord.demo.operands.report`).

Modes: ``--quick`` (the CI smoke test, one seed), the default (3 seeds), ``--full`` (the
learning-rate grid, 5 seeds, the α = β sweep, and seed 0 of every method at 4x the steps),
``--long`` (the Table 1 methods and GRPO + OPD at 4x the steps, the learning-rate rule applied
again at that budget, 3 seeds).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cord.data.paired import write_paired
from cord.demo import jobs as J
from cord.demo import posttrain as P
from cord.demo.format import say
from cord.demo.methods import DEFAULT_METHODS, METHODS
from cord.demo.operands import measure as M
from cord.demo.operands import rates as RT
from cord.demo.operands import report as R
from cord.demo.operands.data import QUICK, GapTaskConfig
from cord.demo.operands.task import OperandsTask
from cord.eval.analyze import analyze_rollouts, save_rollouts
from cord.eval.stats import paired_bootstrap

MODES = ("quick", "default", "full", "long")
BASE = "base"
RATES_FILE = Path(__file__).with_name("learning_rates.json")
"""The rates the full mode's grid chose (committed; the default and quick modes use them)."""
PAIRS = (("cord", "fkl"), ("cord", "sft"), ("cord", "grpo_opd"))
LONG = 4
"""The longer budget, in multiples of the default steps: the long mode's, and the full mode's
seed-0 check of every default method."""


def settings(mode: str) -> dict[str, Any]:
    """Task, post-training budget, seeds and methods of a mode."""
    if mode == "quick":
        return {"task": QUICK, "post": P.PostTrainConfig(max_steps=4, batch_size=8,
                                                         eval_every=2),
                "seeds": (0,), "methods": DEFAULT_METHODS, "grid": False}
    if mode == "default":
        return {"task": GapTaskConfig(), "post": P.PostTrainConfig(), "seeds": (0, 1, 2),
                "methods": DEFAULT_METHODS, "grid": False}
    if mode == "full":
        return {"task": GapTaskConfig(), "post": P.PostTrainConfig(), "seeds": (0, 1, 2, 3, 4),
                "methods": DEFAULT_METHODS + ("cord_ab3",), "grid": True}
    if mode == "long":
        # The default comparison at LONG times the steps, the rule applied again at that budget
        # (rates chosen for 40 steps say nothing about 160). Table 1 and GRPO + OPD; 1e-3 is
        # left out of the grid: at 40 steps it already cost every method 39-90 text points.
        return {"task": GapTaskConfig(),
                "post": P.PostTrainConfig(max_steps=LONG * P.PostTrainConfig.max_steps,
                                          eval_every=P.PostTrainConfig.max_steps),
                "seeds": (0, 1, 2), "methods": ("sft", "fkl", "grpo_opd", "cord"),
                "grid": True, "rates": RT.LEARNING_RATES[:3]}
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


# --------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------


def _bootstrap(base_scores: dict, audio_items: dict[str, list]) -> dict[str, dict]:
    """Paired-bootstrap gap reductions of ``{method: [per-seed item scores]}`` against the
    base, with the :data:`PAIRS` whose both sides ran."""
    return paired_bootstrap(
        np.asarray(base_scores["text_items"]), np.asarray(base_scores["audio_items"]),
        {m: np.asarray(items) for m, items in audio_items.items()},
        pairs=tuple(p for p in PAIRS if p[0] in audio_items and p[1] in audio_items))


def _rates(mode, ctx: J.Context, methods, scratch: Path, workers: int, base_val):
    """Learning rates per method: the grid in the full mode, else the committed choice."""
    if not settings(mode)["grid"]:
        if not RATES_FILE.is_file():
            raise FileNotFoundError(f"{RATES_FILE} is missing: run `cord demo --full --rates-only`"
                                    " to choose the learning rates")
        chosen = RT.load_rates(RATES_FILE)
        missing = [m for m in methods if m not in chosen]
        if missing:
            raise ValueError(f"{RATES_FILE} has no learning rate for {missing}: run "
                             "`cord demo --full --rates-only`")
        return {m: chosen[m] for m in methods}, None
    rates = settings(mode).get("rates", RT.LEARNING_RATES)
    jobs = [J.Job(m, 0, lr, scratch / f"grid-{m}-{lr:g}", score=False)
            for m in methods for lr in rates]

    def done(job, r):
        say(f"  grid {job.method} lr {job.learning_rate:g}: validation text "
             f"{100 * r['val']['text']:.1f}%, audio {100 * r['val']['audio']:.1f}%")

    results = J.run_jobs(ctx, jobs, workers=workers, on_done=done)
    grid: dict[str, dict[float, dict[str, float]]] = {m: {} for m in methods}
    for job, r in zip(jobs, results):
        grid[job.method][job.learning_rate] = r["val"]
    selected = {m: RT.select_rate(grid[m], base_val["text"]) for m in methods}
    record = RT.rates_record(grid, selected, base_val, ctx.post, rates)
    return {m: selected[m]["rate"] for m in methods}, record


def run_demo(*, mode: str = "default", seeds: Sequence[int] | None = None,
             methods: Sequence[str] | None = None, output_dir: str | Path = "cord_demo",
             cache_dir: str | Path | None = None, refresh: bool = False,
             progress: bool = True, command: str = "cord demo", threads: int | None = 1,
             save_models: bool = True, rates_only: bool = False, workers: int = 1
             ) -> dict[str, Any]:
    """The whole demo; returns (and writes to ``output_dir/results.json``) every number.

    Args:
        mode: "quick" (CI size, one seed), "default" (3 seeds), "full" (learning-rate grid,
            5 seeds, α = β sweep, every method at 4x the steps) or "long" (4x the steps for
            SFT, FKL, GRPO + OPD and CORD, the learning-rate rule applied at that budget,
            3 seeds).
        seeds, methods: override the mode's (methods from :data:`cord.demo.posttrain.METHODS`).
        cache_dir: word clips and pre-trained bases (default ``~/.cache/cord/demo``).
        threads: torch CPU threads while the demo runs (restored after); 1 by default: the
            model is tiny, and a single thread does not stall when other processes share the
            cores.
        save_models: write the base and every method's seed-0 model and the held-out set.
        workers: post-training jobs run in this many one-thread processes (the tables do not
            depend on it; 2 halves the time on a 2-core machine).
        rates_only: with ``mode="full"`` or ``"long"``, stop after the learning-rate grid
            (it writes ``learning_rates.json``; the full mode's, committed in the package, is
            what the default and quick modes read).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    cfg = settings(mode)
    seeds, methods = J.run_options(cfg, seeds, methods)
    if rates_only and not cfg["grid"]:
        raise ValueError("rates_only needs mode='full' or 'long' (the modes that run the grid)")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_demo(mode, cfg["task"], cfg["post"], seeds, methods, Path(output_dir),
                         cache_dir, refresh, progress, command, save_models, rates_only, workers)
    finally:
        torch.set_num_threads(previous)


def _run_demo(mode, task: GapTaskConfig, post: P.PostTrainConfig, seeds, methods, out: Path,
              cache_dir, refresh, progress, command, save_models, rates_only, workers
              ) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / ".scratch"  # the trainer's checkpoints; removed at the end
    timings: dict[str, float] = {}
    t_start = t = time.perf_counter()

    operands = OperandsTask(task)
    splits, base, base_path, source = J.open_task(operands, cache_dir, refresh=refresh,
                                                  progress=progress, timings=timings)
    ctx = J.Context(operands, post, base_path, cache_dir)

    t = time.perf_counter()
    base_val = P.accuracies(base, splits["val"], max_new_tokens=post.max_completion_length)
    rates, grid = _rates(mode, ctx, methods, scratch, workers, base_val)
    timings["rate_grid"] = time.perf_counter() - t
    if grid is not None:
        (out / "learning_rates.json").write_text(json.dumps(grid, indent=1))
        if rates_only:
            shutil.rmtree(scratch, ignore_errors=True)
            return {"mode": mode, "learning_rate_grid": grid, "learning_rates": rates,
                    "timings_s": {**timings, "total": time.perf_counter() - t_start}}

    t = time.perf_counter()
    scores = {BASE: [M.score_model(base, splits, post)]}
    base_rollouts, base_kl = M.kl_profile(base, splits["eval"][: M.KL_ITEMS], post)
    curves_base = P.accuracies(base, splits["val"][: M.CURVE_ITEMS],
                               max_new_tokens=post.max_completion_length)
    grad_norms = P.loss_gradient_norms(base, [{k: r[k] for k in ("id", "text", "audio")}
                                              for r in splits["distill"]], post)
    timings["base_eval"] = time.perf_counter() - t
    b = scores[BASE][0]
    say(f"base: text {100 * b['text']:.1f}%, audio {100 * b['audio']:.1f}%, mean audio rollout "
         f"{base_kl['mean_length']:.1f} tokens (K = {post.top_k})")

    t = time.perf_counter()
    first = seeds[0]
    jobs = [J.Job(m, s, rates[m], scratch / f"{m}-{s}", curve=s == first,
                  kl_threshold=base_kl["high_threshold"] if s == first else None,
                  save_to=out / "models" / m if save_models and s == first else None)
            for s in seeds for m in methods]
    if mode == "full":
        # Four times the budget, seed 0, scored like the main runs: does the ordering hold
        # when every method trains longer (the paper trains on 80k prompts, not 320), and does
        # GRPO alone collapse while OPD holds it?
        # (First in the queue: the longest jobs, so no worker is left alone with one at the end.)
        jobs = [J.Job(m, first, rates[m], scratch / f"long-{m}", max_steps=LONG * post.max_steps,
                      curve=True, eval_every=post.max_steps // 2)
                for m in DEFAULT_METHODS if m in methods] + jobs
    count = [0]

    def done(job, r):
        count[0] += 1
        head = f"[{count[0]}/{len(jobs)}] {METHODS[job.method].label[2:]}, seed {job.seed}"
        if job.max_steps is not None:
            head += f", {job.max_steps} steps"
        if "scores" in r:
            s = r["scores"]
            say(f"{head}: text {100 * s['text']:.1f}%, audio {100 * s['audio']:.1f}%, transfer "
                 f"{100 * s['transfer']:.1f}%, retention {100 * s['retention']:.1f}%")

    results = J.run_jobs(ctx, jobs, workers=workers, on_done=done)
    timings["post_train"] = time.perf_counter() - t
    curves, kl_after, long_runs = {}, {}, {}
    tokens: dict[str, list[int]] = {m: [] for m in methods}
    for job, r in zip(jobs, results):
        if job.max_steps is not None:
            long_runs[job.method] = {"steps": job.max_steps, "curve": r["curve"],
                                     "scores": r["scores"], "tokens": r["tokens"]}
            continue
        scores.setdefault(job.method, []).append(r["scores"])
        tokens[job.method].append(r["tokens"])
        if job.curve:
            curves[job.method] = r["curve"]
        if "kl_after" in r:
            kl_after[job.method] = r["kl_after"]

    t = time.perf_counter()
    kl_stats = analyze_rollouts(base_rollouts, out)
    save_rollouts(base_rollouts, out / "base_rollouts.jsonl")
    if save_models:
        R.save_model(base, out / "models" / BASE)
        # 16-bit: half the float size; cord eval on it matches up to that rounding
        write_paired(splits["eval"], out / "eval_set", subtype="PCM_16")
    results = R.assemble(
        mode=mode, task=asdict(task), post=asdict(post), seeds=list(seeds),
        methods=list(methods), rates=rates, scores=scores, tokens=tokens,
        bootstrap=_bootstrap(b, {m: [s["audio_items"] for s in scores[m]] for m in methods}),
        base_kl=base_kl, kl_after=kl_after, kl_stats=kl_stats, curves=curves,
        curves_base=curves_base, long_runs=long_runs or None, grid=grid, base_source=source,
        long_bootstrap=_bootstrap(b, {m: [r["scores"]["audio_items"]]
                                      for m, r in long_runs.items()}) if long_runs else None)
    results["loss_gradient_norms"] = grad_norms
    shutil.rmtree(scratch, ignore_errors=True)
    timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    results["timings_s"] = timings
    results["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "workers": workers,
                          "cpu": platform.processor() or platform.machine()}
    R.write_report(results, out, command)
    return results
