"""``cord demo``: CORD closing a real audio-text gap of a tiny audio LM, on the CPU, in minutes.

1. Builds the spoken/written arithmetic task of :mod:`cord.demo.gap_task` (eSpeak NG speech,
   cached).
2. Pre-trains a tiny Qwen2-Audio-shaped model with much more text than audio supervision, which
   opens a real modality gap (cached per configuration: a second run skips it).
3. Measures its text and audio accuracy on held-out questions.
4. From that same start, for every seed, post-trains it on the (unlabelled) paired training
   prompts with the paper's SFT and forward-KL baselines and with CORD, through
   :class:`cord.train.trainer.CordTrainer` with identical settings, and measures each again.
5. Prints the paper's Table 1 for it (accuracy per modality, Δ, gap reduction) and writes it as
   markdown and JSON, with the KL analysis of the base model's audio rollouts as PNGs.

``cord demo --quick`` runs the same pipeline at a much smaller size (the CI test).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cord.config import CordConfig
from cord.demo.gap_task import (
    QUICK,
    GapTaskConfig,
    SlottedSpeech,
    attach_audio,
    make_splits,
    pretrained_base,
)
from cord.eval.analyze import analyze_rollouts, rollout_kl, save_rollouts, summary_line
from cord.eval.evaluate import evaluate, gap_summary, gap_table
from cord.rewards.judge import build_judge
from cord.train.trainer import CordTrainer

METHODS = {"sft": "+ SFT", "fkl": "+ Forward KL", "cord": "+ CORD"}
BASE_NAME = "Tiny base"


@dataclass(frozen=True)
class PostTrainConfig:
    """Settings shared by every post-training method (only ``objective`` differs)."""

    max_steps: int = 150
    batch_size: int = 16
    learning_rate: float = 1e-3
    max_completion_length: int = 12
    num_generations: int = 4
    temperature: float = 1.0
    teacher: str = "base"
    """The text-conditioned teacher: "base" (frozen start) keeps a 100k-parameter model at this
    learning rate from drifting its own targets; "live" (the paper's) is an option."""


FULL_POST = PostTrainConfig()
QUICK_POST = PostTrainConfig(max_steps=6, batch_size=8)


def _sizes(size: str):
    if size == "full":
        return GapTaskConfig(), FULL_POST
    if size == "tiny":
        return QUICK, QUICK_POST
    raise ValueError(f"size must be 'full' or 'tiny', got {size!r}")


def _say(msg: str) -> None:
    tqdm.write(msg)


def post_train(base_adapter, method: str, train_records, post: PostTrainConfig, *, seed: int,
               output_dir: Path, progress: bool = True):
    """A copy of the base model trained with ``method`` by :class:`cord.train.trainer.CordTrainer`;
    returns its adapter and the trainer's last metrics."""
    adapter = base_adapter.with_model(copy.deepcopy(base_adapter.model))
    config = CordConfig(
        model="tiny",  # unused: the adapter is passed in
        objective=method,
        learning_rate=post.learning_rate,
        per_device_train_batch_size=post.batch_size,
        max_steps=post.max_steps,
        max_completion_length=post.max_completion_length,
        num_generations=post.num_generations,
        temperature=post.temperature,
        teacher=post.teacher,
        seed=seed,
        output_dir=str(output_dir),
        save_steps=0,
        logging_steps=post.max_steps,
        report_to=["none"],
        disable_tqdm=not progress,
    )
    trainer = CordTrainer(config, adapter=adapter, train_dataset=train_records,
                          judge=build_judge("match"))
    metrics = trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.eval()
    return base_adapter.with_model(model), metrics


def _evaluate(adapter, records, name: str, progress: bool):
    return evaluate(adapter, records, name=name, max_new_tokens=12, batch_size=60,
                    progress=progress)


def _verdict(summary: dict[str, Any], methods: list[str]) -> str:
    """One honest sentence on the paper's ordering CORD > FKL > SFT (in gap reduction)."""
    red = {m: summary[METHODS[m]]["reduction"] for m in methods}
    std = {m: summary[METHODS[m]]["reduction_std"] for m in methods}
    parts = [f"{METHODS[m][2:]} {100 * red[m]:.1f}% ± {100 * std[m]:.1f}" for m in methods]
    text = "gap reduction (mean ± std over seeds): " + ", ".join(parts) + "."
    if all(m in red for m in ("cord", "fkl", "sft")):
        order = red["cord"] > red["fkl"] > red["sft"]
        text += (" The paper's ordering (CORD > forward KL > SFT) "
                 + ("holds here." if order else "does NOT hold here."))
        if order:
            # Whether the differences exceed the spread between seeds.
            sep = (red["cord"] - std["cord"] > red["fkl"] + std["fkl"]
                   and red["fkl"] - std["fkl"] > red["sft"] + std["sft"])
            text += (" The differences are larger than one seed standard deviation."
                     if sep else " Some differences are within one seed standard deviation.")
    return text


def summary_markdown(results: dict[str, Any], command: str) -> str:
    """The demo's report as markdown: command, table, verdict, KL analysis, figures, timings."""
    t = results["timings_s"]
    post = results["post_training"]
    task = results["task"]
    lines = [
        "# `cord demo`: a tiny audio LM's modality gap, and how much of it each method closes",
        "",
        f"Command: `{command}`",
        "",
        f"Held-out spoken/written arithmetic questions ({task['eval_questions']}), "
        f"{len(results['seeds'])} post-training seed(s) {results['seeds']} from one pre-trained "
        f"start; {post['max_steps']} steps of {post['batch_size']} prompts per method, "
        f"learning rate {post['learning_rate']:g}, identical settings for every method. "
        "Accuracies in %, mean ± std over seeds; Δ = Acc_text(base) − Acc_audio(method); "
        "gap reduction = 1 − Δ_method / Δ_base.",
        "",
        results["table"].rstrip(),
        "",
        results["verdict"],
        "",
    ]
    stats = results.get("kl_analysis")
    if stats:
        lines += [
            "KL analysis of the base model's audio rollouts (the paper's Figures 2-3): "
            + summary_line(stats) + ".",
            "",
            "![KL distribution](kl_distribution.png) ![high vs low KL tokens](kl_tokens.png)",
            "",
            "![one rollout](kl_rollout.png)",
            "",
        ]
    m = results["machine"]
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in t.items() if k != "total")
    lines += [
        f"Wall time {t['total'] / 60:.1f} min ({phases}); Python {m['python']}, torch "
        f"{m['torch']}, {m['threads']} threads"
        + (", pre-trained base loaded from cache" if results["base_from_cache"] else "") + ".",
        "",
    ]
    return "\n".join(lines)


def run_demo(*, size: str = "full", seeds=(0, 1, 2), methods=("sft", "fkl", "cord"),
             output_dir: str | Path = "cord_demo", cache_dir: str | Path | None = None,
             refresh: bool = False, analysis: bool = True, progress: bool = True,
             post_overrides: dict[str, Any] | None = None,
             command: str = "cord demo", threads: int | None = 1) -> dict[str, Any]:
    """The whole demo; returns (and writes to ``output_dir/results.json``) every number.

    Args:
        size: "full" (the README's numbers) or "tiny" (the same pipeline in ~1-2 minutes).
        seeds: post-training seeds (rollout sampling and data order); the pre-trained start is
            the same for all of them.
        methods: any of "sft", "fkl", "cord".
        cache_dir: word clips and pre-trained bases (default ``~/.cache/cord/demo``).
        refresh: pre-train again even if a cached base exists.
        threads: torch CPU threads while the demo runs (restored after); 1 by default: the
            model is tiny, and a single thread does not stall when other processes share the
            cores (two spinning OpenMP threads on a busy 2-core machine ran 50x slower).
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_demo(size=size, seeds=seeds, methods=methods, output_dir=output_dir,
                         cache_dir=cache_dir, refresh=refresh, analysis=analysis,
                         progress=progress, post_overrides=post_overrides, command=command)
    finally:
        torch.set_num_threads(previous)


def _run_demo(*, size, seeds, methods, output_dir, cache_dir, refresh, analysis, progress,
              post_overrides, command) -> dict[str, Any]:
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty subset of {list(METHODS)}, got "
                         f"{list(methods)}")
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    task, post = _sizes(size)
    if post_overrides:
        post = replace(post, **post_overrides)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    # 1. Data.
    t = time.perf_counter()
    splits = make_splits(task)
    speech = SlottedSpeech(slot_seconds=task.slot_seconds, rate=task.tts_rate,
                           cache_dir=cache_dir)
    splits = {k: attach_audio(v, speech) for k, v in splits.items()}
    timings["speech"] = time.perf_counter() - t
    _say(f"task: {len(splits['train'])} training questions (text QA and audio transcription on "
         f"all, audio QA on {len(splits['audio_qa'])}; the other {len(splits['distill'])} are "
         f"the unlabelled pairs of post-training), {len(splits['eval'])} held-out questions; "
         "speech by eSpeak NG")

    # 2. The gap.
    t = time.perf_counter()
    base, cached = pretrained_base(task, splits, cache_dir=cache_dir, progress=progress,
                                   refresh=refresh)
    timings["pretrain"] = time.perf_counter() - t
    n_params = sum(p.numel() for p in base.model.parameters())
    _say(f"base model: {n_params / 1e3:.0f}k parameters, "
         + ("loaded from cache" if cached else f"pre-trained in {timings['pretrain']:.0f} s"))

    # 3. Base accuracy.
    t = time.perf_counter()
    base_run = {"method": BASE_NAME,
                "benchmarks": {"arith": _evaluate(base, splits["eval"], "arith", progress)}}
    timings["eval"] = time.perf_counter() - t
    b = base_run["benchmarks"]["arith"]
    _say(f"{BASE_NAME}: text {100 * b['text']['accuracy']:.1f}%, audio "
         f"{100 * b['audio']['accuracy']:.1f}% -> gap {100 * b['gap']:.1f} points")

    # 4. Post-training from the same start.
    # Post-training sees only unlabelled pairs: the answer column is dropped.
    train_records = [{k: r[k] for k in ("id", "text", "audio")} for r in splits["distill"]]
    runs: dict[str, list[dict[str, Any]]] = {METHODS[m]: [] for m in methods}
    train_metrics: dict[str, list[dict[str, Any]]] = {METHODS[m]: [] for m in methods}
    t = time.perf_counter()
    jobs = [(s, m) for s in seeds for m in methods]
    scratch = tempfile.TemporaryDirectory(prefix="cord-demo-")  # the trainer's checkpoints
    for i, (seed, method) in enumerate(jobs):
        _say(f"[{i + 1}/{len(jobs)}] {METHODS[method][2:]}, seed {seed}")
        adapter, metrics = post_train(base, method, train_records, post, seed=seed,
                                      output_dir=Path(scratch.name) / f"{method}-seed{seed}",
                                      progress=progress)
        r = _evaluate(adapter, splits["eval"], "arith", progress)
        runs[METHODS[method]].append({"method": METHODS[method], "seed": seed,
                                      "benchmarks": {"arith": r}})
        train_metrics[METHODS[method]].append(
            {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))})
        _say(f"    text {100 * r['text']['accuracy']:.1f}%, audio "
             f"{100 * r['audio']['accuracy']:.1f}%")
    timings["post_train"] = time.perf_counter() - t
    scratch.cleanup()
    torch.manual_seed(0)

    # 5. Table 1 and the analysis.
    table_runs = {BASE_NAME: base_run, **runs}
    summary = gap_summary(table_runs, BASE_NAME)
    table = gap_table(table_runs, BASE_NAME)
    stats = None
    if analysis:
        t = time.perf_counter()
        rollouts = rollout_kl(base, splits["eval"], max_new_tokens=post.max_completion_length,
                              temperature=1.0, batch_size=60, seed=0, progress=progress)
        save_rollouts(rollouts, out / "base_rollouts.jsonl")
        stats = analyze_rollouts(rollouts, out)
        timings["analysis"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    verdict = _verdict(summary, list(methods))

    results = {
        "size": size, "seeds": list(seeds), "methods": list(methods),
        "task": asdict(task), "post_training": asdict(post),
        "base": base_run, "runs": runs, "train_metrics": train_metrics,
        "summary": {k: {kk: vv for kk, vv in v.items() if kk != "per_run"}
                    for k, v in summary.items()},
        "table": table, "verdict": verdict, "kl_analysis": stats,
        "timings_s": timings, "base_from_cache": cached,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu": platform.processor() or
                    platform.machine()},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(table)
    (out / "README.md").write_text(summary_markdown(results, command))
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=("full", "tiny"), default="full",
                        help="full: the README's numbers (~15 min on 2 cores); tiny: ~1-2 min")
    parser.add_argument("--quick", action="store_true", help="same as --size tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="post-training seeds (one run of every method per seed)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS),
                        default=["sft", "fkl", "cord"], help="post-training methods to compare")
    parser.add_argument("--output-dir", default="cord_demo",
                        help="where results.json, table.md, README.md and the PNGs go")
    parser.add_argument("--cache-dir", default=None,
                        help="speech and pre-trained bases (default ~/.cache/cord/demo)")
    parser.add_argument("--refresh", action="store_true", help="pre-train even if cached")
    parser.add_argument("--steps", type=int, default=None,
                        help="post-training steps per run (default: 150, or 6 with --quick)")
    parser.add_argument("--no-analysis", action="store_true", help="skip the KL plots")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the model is tiny, and one thread "
                             "does not stall when other processes share the cores)")


def run(args: argparse.Namespace) -> int:
    overrides = {"max_steps": args.steps} if args.steps else None
    results = run_demo(
        size="tiny" if args.quick else args.size, seeds=args.seeds, methods=args.methods,
        output_dir=args.output_dir, cache_dir=args.cache_dir, refresh=args.refresh,
        analysis=not args.no_analysis, post_overrides=overrides,
        command="cord " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["demo"] else "cord demo",
        threads=args.threads,
    )
    print()
    print(results["table"])
    print(results["verdict"])
    if results["kl_analysis"]:
        print("KL analysis of the base model's audio rollouts: "
              + summary_line(results["kl_analysis"]))
    t = results["timings_s"]
    phases = ", ".join(f"{k} {v:.0f}s" for k, v in t.items() if k != "total")
    print(f"total {t['total'] / 60:.1f} min ({phases})")
    print(f"wrote {Path(args.output_dir)}/: README.md, results.json, table.md and the KL PNGs")
    return 0
