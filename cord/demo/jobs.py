"""One post-training job (method, seed, learning rate) and a pool that runs them in parallel.

A job is a pure function of its arguments: it reads the base from disk, rebuilds the task's
splits from the configuration (speech from the clip cache) and seeds everything itself, so the
same job gives the same numbers in the main process or in any worker, in any order. Workers use
one torch thread each: on a 2-core machine two workers finish the demo about twice as fast as
one process, and the tables do not change with the worker count.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from cord.demo import claim_measure as CM
from cord.demo import measure as M
from cord.demo.claim_task import ClaimTaskConfig, attach_claim_audio, make_claim_splits
from cord.demo.gap_task import GapTaskConfig, SlottedSpeech, attach_audio, load_base, make_splits
from cord.demo.posttrain import PostTrainConfig, accuracies, post_train


@dataclass(frozen=True)
class Job:
    method: str
    seed: int
    learning_rate: float
    scratch: Path
    """The trainer's checkpoints go here (the caller removes it)."""
    max_steps: int | None = None
    curve: bool = False
    """Validation accuracy during training (the training curves)."""
    eval_every: int | None = None
    score: bool = True
    """Score on the held-out, transfer and retention sets (False: validation accuracy only)."""
    kl_threshold: float | None = None
    """Measure the KL profile of the trained model against this (the base's) threshold."""
    save_to: Path | None = None


@dataclass(frozen=True)
class Context:
    task: GapTaskConfig | ClaimTaskConfig
    post: PostTrainConfig
    base_path: Path
    cache_dir: Path | None


_SPLITS: dict[GapTaskConfig, dict[str, list]] = {}
_BASES: dict[Path, Any] = {}


def task_splits(task: GapTaskConfig | ClaimTaskConfig, cache_dir) -> dict[str, list]:
    """The task's splits with audio (once per process)."""
    if task not in _SPLITS:
        speech = SlottedSpeech(slot_seconds=task.slot_seconds, rate=task.tts_rate,
                               cache_dir=cache_dir)
        if isinstance(task, ClaimTaskConfig):
            _SPLITS[task] = attach_claim_audio(make_claim_splits(task), task, speech)
        else:
            splits = make_splits(task)
            _SPLITS[task] = {k: v if k == "text_only" else attach_audio(v, speech)
                             for k, v in splits.items()}
    return _SPLITS[task]


def training_records(task, splits: dict[str, list]) -> list[dict]:
    """The unlabelled paired prompts every method post-trains on. The claim task's carry the
    gold worked chain as ``answer``, which only the gold-SFT diagnostic reads."""
    if isinstance(task, ClaimTaskConfig):
        return [{"id": r["id"], "text": r["text"], "audio": r["audio"], "answer": r["worked"]}
                for r in splits["pool"]]
    return [{k: r[k] for k in ("id", "text", "audio")} for r in splits["distill"]]


def _base(path: Path):
    if path not in _BASES:
        _BASES[path] = load_base(path)
    return _BASES[path]


def run_job(ctx: Context, job: Job) -> dict[str, Any]:
    """Post-trains a copy of the base and measures it; returns ``{method, seed, tokens,
    scores?, val?, curve?, kl_after?}``."""
    splits = task_splits(ctx.task, ctx.cache_dir)
    base = _base(ctx.base_path)
    post = ctx.post if job.eval_every is None else replace(ctx.post, eval_every=job.eval_every)
    claim = isinstance(ctx.task, ClaimTaskConfig)
    curve: list[dict[str, float]] = []
    hook = None
    if job.curve:
        hook = (CM.curve_hook(curve, splits, post, post.eval_every) if claim else
                M.curve_hook(curve, splits["val"][: M.CURVE_ITEMS], post, post.eval_every))
    # The trainer's own lines (its start line, the last step's metrics) would interleave
    # across workers without naming the job; the demo prints one line per job instead, and
    # the metrics stay in the job's scratch metrics.jsonl.
    with contextlib.redirect_stdout(io.StringIO()):
        adapter, tokens = post_train(base, job.method, training_records(ctx.task, splits),
                                     post, learning_rate=job.learning_rate, seed=job.seed,
                                     output_dir=job.scratch, max_steps=job.max_steps,
                                     on_step_end=hook)
    out: dict[str, Any] = {"method": job.method, "seed": job.seed, "tokens": tokens}
    if job.curve:
        out["curve"] = curve
    if job.score:
        out["scores"] = (CM.score_claim_model(adapter, splits, post) if claim
                         else M.score_model(adapter, splits, post))
    elif claim:
        out["val"] = CM.validation_scores(adapter, splits, post)
    else:
        out["val"] = accuracies(adapter, splits["val"], max_new_tokens=post.max_completion_length)
    if job.kl_threshold is not None:
        out["kl_after"] = (CM.kl_by_correctness(adapter, splits["eval"][: CM.KL_ITEMS], post)[1]
                           if claim else
                           M.kl_profile(adapter, splits["eval"][: M.KL_ITEMS], post,
                                        threshold=job.kl_threshold)[1])
    if job.save_to is not None:
        job.save_to.mkdir(parents=True, exist_ok=True)
        adapter.model.save_pretrained(job.save_to)
        adapter.processor.save_pretrained(job.save_to)
    return out


def quiet_libraries() -> None:
    """Library progress bars (transformers' "Loading weights" and "Writing model shards" per
    load and save) would interleave with the demo's own lines; the demo prints one line per
    finished job instead. Called in the main process and in every worker."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    disable_progress_bars()


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    quiet_libraries()


def run_jobs(ctx: Context, jobs: Iterable[Job], *, workers: int = 1,
             on_done: Callable[[Job, dict[str, Any]], None] | None = None) -> list[dict]:
    """Runs ``jobs`` (in order with ``workers=1``, else in a spawn pool of one-thread workers);
    returns their results in the order of ``jobs``."""
    jobs = list(jobs)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    if workers == 1 or len(jobs) == 1:
        for i, job in enumerate(jobs):
            results[i] = run_job(ctx, job)
            if on_done:
                on_done(job, results[i])
        return results
    # spawn: a forked child would inherit torch's thread pool and the parent's RNG state
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(1,),
                               mp_context=multiprocessing.get_context("spawn"))
    with pool:
        futures = {pool.submit(run_job, ctx, job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if on_done:
                on_done(jobs[i], results[i])
    return results

