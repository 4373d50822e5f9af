"""One post-training job (method, seed, learning rate) and a pool that runs them in parallel.

A job is a pure function of its arguments: it reads the base from disk, rebuilds the task's
splits from the configuration (speech from the clip cache) and seeds everything itself, so the
same job gives the same numbers in the main process or in any worker, in any order. Workers use
one torch thread each: on a 2-core machine two workers finish the demo about twice as fast as
one process, and the tables do not change with the worker count.

With ``results_dir``, :func:`run_jobs` writes each job's result the moment the job ends (after
its model is saved) and reads back, instead of running again, every job whose result is already
there with the same identity: nothing a run trained is lost to a later failure, and ``cord demo
--resume DIR`` finishes a run that stopped.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from cord.demo.base import load_base
from cord.demo.posttrain import PostTrainConfig, post_train
from cord.demo.task import Task


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

    @property
    def name(self) -> str:
        """The job's file name in a results folder (its scratch folder's, unique in a run)."""
        return self.scratch.name


@dataclass(frozen=True)
class Context:
    task: Task
    post: PostTrainConfig
    base_path: Path
    cache_dir: Path | None


_SPLITS: dict[Task, dict[str, list]] = {}
_BASES: dict[Path, Any] = {}


def task_splits(task: Task, cache_dir) -> dict[str, list]:
    """The task's splits with audio (once per process)."""
    if task not in _SPLITS:
        _SPLITS[task] = task.build_splits(cache_dir)
    return _SPLITS[task]


def run_options(cfg: dict[str, Any], seeds, methods) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """A run's seeds and methods: the mode's (``cfg``) unless given, checked (the prologue of
    both tasks' runs)."""
    from cord.demo.methods import METHODS

    seeds = tuple(cfg["seeds"] if seeds is None else seeds)
    methods = tuple(cfg["methods"] if methods is None else methods)
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty subset of {list(METHODS)}, got "
                         f"{list(methods)}")
    return seeds, methods


def open_task(task: Task, cache_dir, *, refresh: bool, progress: bool,
              timings: dict[str, float]):
    """Both tasks' run prologue: the cache line, the splits (speech synthesised or read back),
    the task's line (``task.describe(splits)``), the base (shipped, cached or pre-trained now)
    and its line. The "speech" and "pretrain" wall times go into ``timings``. Returns
    ``(splits, base, base_path, source)``."""
    import time

    from cord.demo.base import pretrained_base
    from cord.demo.format import say
    from cord.demo.speech import describe_cache

    say(describe_cache(cache_dir))
    t = time.perf_counter()
    splits = task_splits(task, cache_dir)
    timings["speech"] = time.perf_counter() - t
    say(task.describe(splits))
    t = time.perf_counter()
    base, base_path, source = pretrained_base(task, splits, cache_dir=cache_dir,
                                              progress=progress, refresh=refresh)
    timings["pretrain"] = time.perf_counter() - t
    say(f"base: {sum(p.numel() for p in base.model.parameters()) / 1e3:.0f}k parameters, "
        f"{source} ({base_path})")
    return splits, base, base_path, source


def _base(path: Path):
    if path not in _BASES:
        _BASES[path] = load_base(path)
    return _BASES[path]


def curve_hook(curve: list, every: int, measure: Callable[[Any], dict[str, float]]
               ) -> Callable[[int, Any], None]:
    """An ``on_step_end`` hook appending ``{"step", **measure(adapter)}`` to ``curve`` every
    ``every`` steps and at the last step (the model measured in eval mode, then put back)."""
    def hook(step: int, trainer) -> None:
        if step % every and step != trainer.max_steps:
            return
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.eval()
        scores = measure(trainer.adapter.with_model(model))
        model.train()
        curve.append({"step": step, **scores})

    return hook


def run_job(ctx: Context, job: Job) -> dict[str, Any]:
    """Post-trains a copy of the base and measures it; returns ``{method, seed, tokens,
    scores?, val?, curve?, kl_after?}``."""
    task = ctx.task
    splits = task_splits(task, ctx.cache_dir)
    base = _base(ctx.base_path)
    post = ctx.post if job.eval_every is None else replace(ctx.post, eval_every=job.eval_every)
    curve: list[dict[str, float]] = []
    hook = (curve_hook(curve, post.eval_every, lambda a: task.curve_scores(a, splits, post))
            if job.curve else None)
    # The trainer's own lines (its start line, the last step's metrics) would interleave
    # across workers without naming the job; the demo prints one line per job instead, and
    # the metrics stay in the job's scratch metrics.jsonl.
    with contextlib.redirect_stdout(io.StringIO()):
        adapter, tokens = post_train(base, job.method,
                                     task.training_records(splits, job.method),
                                     post, learning_rate=job.learning_rate, seed=job.seed,
                                     output_dir=job.scratch, max_steps=job.max_steps,
                                     on_step_end=hook)
    out: dict[str, Any] = {"method": job.method, "seed": job.seed, "tokens": tokens}
    if job.curve:
        out["curve"] = curve
    if job.score:
        out["scores"] = task.score(adapter, splits, post)
    else:
        out["val"] = task.validate(adapter, splits, post)
    if job.kl_threshold is not None:
        out["kl_after"] = task.kl_profile(adapter, splits, post, job.kl_threshold)
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


def identity(ctx: Context, job: Job) -> dict[str, Any]:
    """What makes a job's result: its settings, the task's and the budget's (JSON-normal).
    A saved result is reused only when this is identical."""
    fields = {k: v for k, v in asdict(job).items() if k not in ("scratch", "save_to")}
    config = ctx.task.config  # the task's configuration names it (not the wrapper class)
    blob = {"job": fields, "task": {"type": type(config).__name__, **asdict(config)},
            "post": asdict(ctx.post), "base": base_name(ctx.base_path)}
    return json.loads(json.dumps(blob, default=str))


def base_name(path: str | Path) -> str:
    """A base in an identity: its folder's name (``base-<key of the task configuration>``), not
    its path, so a results folder resumes from any checkout, install or cache location."""
    return Path(path).name


def _same(saved: dict[str, Any], ident: dict[str, Any]) -> bool:
    # results saved before identities named the base by its folder held its whole path
    if isinstance(saved.get("base"), str):
        saved = {**saved, "base": base_name(saved["base"])}
    return saved == ident


def save_result(path: Path, ident: dict[str, Any], result: dict[str, Any]) -> None:
    """Writes atomically (a temporary file, then a rename): a half-written file never stands."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"identity": ident, "result": result}, default=float))
    os.replace(tmp, path)


def load_result(path: Path, ident: dict[str, Any]) -> dict[str, Any] | None:
    """The saved result at ``path`` if it was made with identity ``ident``, else None."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return saved["result"] if _same(saved.get("identity") or {}, ident) else None


def run_jobs(ctx: Context, jobs: Iterable[Job], *, workers: int = 1,
             on_done: Callable[[Job, dict[str, Any]], None] | None = None,
             results_dir: Path | None = None) -> list[dict]:
    """Runs ``jobs`` (in order with ``workers=1``, else in a spawn pool of one-thread workers);
    returns their results in the order of ``jobs``.

    With ``results_dir``: a job whose result ``results_dir/<job.name>.json`` is there with the
    same :func:`identity` is read back, not run (``on_done`` is called for it too); every other
    job's result is written there as soon as it ends."""
    jobs = list(jobs)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    todo = []
    for i, job in enumerate(jobs):
        saved = (load_result(results_dir / f"{job.name}.json", identity(ctx, job))
                 if results_dir is not None else None)
        if saved is None:
            todo.append(i)
        else:
            results[i] = saved
            if on_done:
                on_done(job, saved)

    def finish(i: int, result: dict[str, Any]) -> None:
        # JSON-normal, as a result read back is: a resumed run reports what a fresh one does
        result = json.loads(json.dumps(result, default=float))
        results[i] = result
        if results_dir is not None:
            save_result(results_dir / f"{jobs[i].name}.json", identity(ctx, jobs[i]), result)
        if on_done:
            on_done(jobs[i], result)

    failures: list[tuple[Job, BaseException]] = []
    if workers == 1 or len(todo) <= 1:
        for i in todo:
            try:
                result = run_job(ctx, jobs[i])
            except Exception as e:  # the other jobs still run and keep their results
                failures.append((jobs[i], e))
                continue
            finish(i, result)
    else:
        # spawn: a forked child would inherit torch's thread pool and the parent's RNG state
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                   initargs=(1,), mp_context=multiprocessing.get_context("spawn"))
        with pool:
            futures = {pool.submit(run_job, ctx, jobs[i]): i for i in todo}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    result = future.result()
                except Exception as e:
                    failures.append((jobs[i], e))
                    continue
                finish(i, result)
    if failures:
        kept = "; every other job's result is saved" if results_dir is not None else ""
        listed = "; ".join(f"{job.name}: {type(e).__name__}: {e}" for job, e in failures)
        raise RuntimeError(f"{len(failures)} of {len(jobs)} job(s) failed ({listed}){kept}"
                           ) from failures[0][1]
    return results

