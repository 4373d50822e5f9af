"""Evaluation during training: the modality gap measured as a run goes, the best checkpoint,
and the collapse guard.

With ``eval_dataset`` (a paired file, or ``"holdout"``: ``eval_holdout`` of the training
records, kept back from training by a seeded draw) and ``eval_steps``, the trainer evaluates at
step 0, every ``eval_steps`` steps and at the last step. Each evaluation decodes greedily from
the audio and from the text prompt of every eval record (``cord.eval.evaluate.evaluate``, the
code of ``cord eval``; ``eval_max_samples`` scores a fixed seeded subset) and logs one row to
``metrics.jsonl`` and the trackers:

- ``eval_audio_accuracy``, ``eval_text_accuracy``: answers right against the reference;
- ``eval_modality_gap``: step 0's text accuracy minus this audio accuracy (the paper's Δ, with
  the base's text accuracy as the fixed target);
- ``eval_agreement``: the audio answer equals the text answer (both read with the reference's
  answer kind; an unreadable text answer is a disagreement);
- ``eval_kl_mean``: the mean per-token reverse KL(audio-conditioned || text-conditioned) of the
  current model along its greedy audio answers (the divergence CORD's L_tok minimises);
- ``eval_seconds``, ``eval_samples``.

Under several processes the evaluation is sharded: process r takes records r, r + N, ...
(padded with repeats of a record to the same count, so every process makes the same generate and
forward calls: FSDP2 gathers parameters collectively), and the per-record verdicts are gathered
to every process, which all compute the same row (so all agree on the guard). The evaluation
runs under a forked RNG: a run with evaluation trains exactly like one without.

The evaluation history (every row, the best step) is saved in each checkpoint's
``trainer_state.json``, so a resumed run continues it: rows up to the checkpoint's step stay in
``metrics.jsonl``, and the resumed run evaluates where the uninterrupted one would have.

The collapse guard (``collapse_guard``): a run has collapsed when text or audio accuracy is
more than ``collapse_text_drop`` points below step 0's. ``warn`` prints one line per collapsed
metric (the first evaluation that finds it); ``stop`` saves a checkpoint, prints the line and
ends the run, and ``cord train`` exits with :data:`EXIT_COLLAPSED`.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object

import cord_kernels
from cord.config import EVAL_METRICS, HOLDOUT, CordConfig
from cord.eval.evaluate import (
    evaluate,
    load_items,
    normalize_record,
    prompts_of,
    score_response,
)
from cord.rewards.answers import extract_choice, extract_math_answer

#: ``cord train`` stopped by ``collapse_guard=stop`` after saving a checkpoint (sysexits' 76 is
#: unused by the others; docs/long_runs.md lists it).
EXIT_COLLAPSED = 76
#: What usually helps a collapsing run (the guard's line says it).
COLLAPSE_ADVICE = "a lower learning_rate, teacher=ema or a larger cord_seq_weight usually helps"
GUARDED = ("eval_text_accuracy", "eval_audio_accuracy")


def _subset(records, indices: list[int]):
    return records.select(indices) if hasattr(records, "select") else [records[i]
                                                                        for i in indices]


def split_eval(config: CordConfig, train_records, *, sampling_rate: int, audio_limit=None):
    """``(train_records, eval_records)``: for ``eval_dataset="holdout"`` a seeded share
    ``eval_holdout`` of ``train_records`` (at least one) moves to the eval side, never trained
    on; for a file it is read like ``cord eval``'s benchmarks; then ``eval_max_samples`` keeps a
    fixed seeded subset. ``eval_records`` is None without ``eval_dataset`` and ``eval_steps``."""
    if config.eval_dataset is None or not config.eval_steps:
        return train_records, None
    if config.eval_dataset == HOLDOUT:
        n = len(train_records)
        held = max(1, round(config.eval_holdout * n))
        if held >= n:
            raise ValueError(f"eval_holdout={config.eval_holdout} of {n} training records "
                             "leaves none to train on")
        order = list(range(n))
        random.Random(config.seed).shuffle(order)
        eval_records = [dict(r) for r in _subset(train_records, sorted(order[:held]))]
        train_records = _subset(train_records, sorted(order[held:]))
    else:
        eval_records = load_items(config.eval_dataset, sampling_rate=sampling_rate,
                                  audio_limit=audio_limit)
    if config.eval_max_samples is not None and config.eval_max_samples < len(eval_records):
        keep = random.Random(config.seed + 1).sample(range(len(eval_records)),
                                                     config.eval_max_samples)
        eval_records = [eval_records[i] for i in sorted(keep)]
    if not eval_records:
        raise ValueError(f"eval_dataset {config.eval_dataset!r} holds no records")
    for i, record in enumerate(eval_records):  # scoring needs an answer: say so before step 1
        try:
            normalize_record(record, i)
        except (TypeError, ValueError) as err:
            raise ValueError(f"eval_dataset={config.eval_dataset}: {err}") from None
    return train_records, eval_records


def _answer(response: str | None, kind: str) -> str | None:
    return extract_choice(response) if kind == "choice" else extract_math_answer(response)


def agrees(item: dict[str, Any]) -> bool:
    """The audio answer of ``item`` (an ``evaluate`` item) equals its text answer."""
    text = _answer(item["text_response"], item["kind"])
    return text is not None and score_response(item["audio_response"], text, item["kind"])[0]


class Evaluator:
    """Runs the evaluations of one training run and keeps their history, the best step and
    the collapse verdicts (saved with the trainer state)."""

    def __init__(self, config: CordConfig, records: list[dict], accelerator):
        self.config, self.records, self.acc = config, records, accelerator
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None  # {"step", "metric", "value", "checkpoint"}
        self.warned: list[str] = []  # the metrics the guard has flagged
        sense = config.greater_is_better
        self.greater = EVAL_METRICS[config.metric_for_best_model] if sense is None else sense

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "best": self.best, "warned": self.warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        self.best = state.get("best")
        self.warned = list(state.get("warned", []))

    def due(self, step: int, max_steps: int) -> bool:
        """Whether the trainer evaluates after ``step`` (0: before the first step)."""
        every = self.config.eval_steps
        return bool(every) and (step % every == 0 or step == max_steps)

    # -- one evaluation ----------------------------------------------------------------------

    def _shard(self) -> list[tuple[int, dict]]:
        n, world, rank = len(self.records), self.acc.num_processes, self.acc.process_index
        mine = list(range(rank, n, world))
        mine += [-1] * (math.ceil(n / world) - len(mine))  # -1: a repeat, left out of the scores
        return [(i, self.records[max(i, 0)]) for i in mine]

    def _kl(self, adapter, records, ids) -> list[tuple[float, int]]:
        """Per record: (summed per-token reverse KL along its audio answer, tokens)."""
        cfg, out, size = self.config, [], self.config.per_device_eval_batch_size
        for b, (completion, mask) in enumerate(ids):
            batch = records[b * size : (b + 1) * size]
            if completion.shape[1] == 0:
                out += [(0.0, 0)] * len(batch)
                continue
            with torch.no_grad():
                x_a, x_t = (prompts_of(adapter, batch, m, _instr(cfg)).to(self.acc.device)
                            for m in ("audio", "text"))
                s = adapter.completion_logits(x_a, completion, mask)
                u = adapter.completion_logits(x_t, completion, mask)
                kl = cord_kernels.reverse_kl(s.float(), u.float(),
                                             temperature=cfg.cord_kl_temperature)
            kl = (kl * mask).sum(-1)
            out += [(float(k), int(m)) for k, m in zip(kl, mask.sum(-1))]
        return out

    def evaluate(self, adapter, step: int) -> dict[str, Any]:
        """Scores ``adapter`` on the eval records; returns (and keeps) the row of ``step``."""
        cfg, acc = self.config, self.acc
        start = time.perf_counter()
        shard = self._shard()
        records = [r for _, r in shard]
        devices = [acc.device] if acc.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            result = evaluate(
                adapter, records, name=f"eval step {step}",
                batch_size=cfg.per_device_eval_batch_size, temperature=0.0,
                max_new_tokens=cfg.max_completion_length, instruction=_instr(cfg),
                progress=acc.is_main_process and not cfg.disable_tqdm, keep_ids=True)
            kls = self._kl(adapter, records, result["ids"]["audio"])
        mine = [{"index": i, "text": it["text_correct"], "audio": it["audio_correct"],
                 "agree": agrees(it), "kl": kl, "tokens": n}
                for (i, _), it, (kl, n) in zip(shard, result["items"], kls) if i >= 0]
        scored = {v["index"]: v for v in gather_object(mine)}.values()
        n = len(scored)
        text = sum(v["text"] for v in scored) / n
        audio = sum(v["audio"] for v in scored) / n
        tokens = sum(v["tokens"] for v in scored)
        base_text = self.history[0]["eval_text_accuracy"] if self.history else text
        row = {"step": step, "eval_audio_accuracy": audio, "eval_text_accuracy": text,
               "eval_modality_gap": base_text - audio,
               "eval_agreement": sum(v["agree"] for v in scored) / n,
               "eval_kl_mean": sum(v["kl"] for v in scored) / tokens if tokens else math.nan,
               "eval_samples": n, "eval_seconds": time.perf_counter() - start}
        self.history.append(row)
        return row

    # -- the best step and the guard ------------------------------------------------------------

    def is_best(self, row: dict[str, Any]) -> bool:
        """Whether ``row`` beats the best so far on ``metric_for_best_model`` (a tie keeps the
        earlier step); records it as the best when it does."""
        metric = self.config.metric_for_best_model
        value = row[metric]
        if not math.isfinite(value):
            return False
        if self.best is not None:
            best = self.best["value"]
            if not (value > best if self.greater else value < best):
                return False
        self.best = {"step": row["step"], "metric": metric, "value": value, "checkpoint": None}
        return True

    def collapsed(self, row: dict[str, Any]) -> list[str]:
        """The guard's lines for the metrics ``row`` finds collapsed, each metric flagged once
        per run."""
        if not self.history or row is self.history[0]:
            return []
        base, margin = self.history[0], self.config.collapse_text_drop
        lines = []
        for metric in GUARDED:
            if base[metric] - row[metric] > margin / 100 and metric not in self.warned:
                self.warned.append(metric)
                lines.append(
                    f"cord: collapse at step {row['step']}: {metric} is {100 * row[metric]:.1f}%"
                    f", {100 * (base[metric] - row[metric]):.1f} points below step 0's "
                    f"{100 * base[metric]:.1f}% (collapse_text_drop={margin:g}); "
                    f"{COLLAPSE_ADVICE}")
        return lines

    def plot(self, path: Path) -> Path | None:
        """``eval_curve.png``: audio, text accuracy and agreement against the step, with the
        guard's thresholds and the best step (main process only)."""
        if not self.history or not self.acc.is_main_process:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.history]
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
        for key, label, color in (("eval_text_accuracy", "text (teacher)", "C0"),
                                  ("eval_audio_accuracy", "audio", "C1"),
                                  ("eval_agreement", "audio-text agreement", "C2")):
            ax.plot(steps, [100 * r[key] for r in self.history], marker="o", ms=3, c=color,
                    label=label)
            if key in GUARDED and self.config.guard != "off":  # the guard's thresholds
                ax.axhline(100 * self.history[0][key] - self.config.collapse_text_drop, ls=":",
                           c=color, lw=1, label=f"{label.split()[0]} collapse threshold")
        if self.best is not None:
            ax.axvline(self.best["step"], ls="--", c="k", lw=0.8,
                       label=f"best ({self.best['metric']})")
        ax.set(xlabel="step", ylabel="accuracy (%)", ylim=(-2, 102),
               title=f"{self.config.objective}, lr {self.config.learning_rate:g}")
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


def _instr(config: CordConfig) -> str | None:
    return config.instruction or None


# -- the trainer's side ------------------------------------------------------------------------


def evaluate_step(trainer, step: int, bar) -> bool:
    """One evaluation (``cord.train.evaluation``): its row logged, the best checkpoint
    saved (``load_best_model_at_end``), the guard's lines printed; True when
    ``collapse_guard=stop`` ends the run. ``trainer``: a ``CordTrainer``."""
    ev, cfg = trainer.evaluator, trainer.config
    trainer.model.eval()
    try:
        with trainer.accelerator.autocast():  # the precision the rollouts run at
            row = ev.evaluate(trainer.adapter, step)
    finally:
        trainer.model.train()
    best = ev.is_best(row)
    trainer._log(row, bar)
    lines = ev.collapsed(row) if cfg.guard != "off" else []
    for line in lines:
        (bar.write if bar is not None else trainer.accelerator.print)(line)
    if (best and cfg.load_best_model_at_end) or (lines and cfg.guard == "stop"):
        if best and cfg.load_best_model_at_end:
            ev.best["checkpoint"] = f"checkpoint-{step}"
        if trainer._last_saved_step != step:
            trainer.save_checkpoint()
    return bool(lines) and cfg.guard == "stop"


def load_best(trainer) -> None:
    """With ``load_best_model_at_end``: the best evaluated checkpoint's weights into the
    model (the trainer state keeps the run's own step count)."""
    best = trainer.evaluator.best if trainer.evaluator else None
    if not (trainer.config.load_best_model_at_end and best and best.get("checkpoint")):
        return
    state = trainer.state.state_dict()
    trainer.parallel.load(trainer.output_dir / best["checkpoint"], trainer.model,
                          trainer.optimizer)
    trainer.state.load_state_dict(state)
    trainer.loaded_best = True
    trainer.accelerator.print(f"cord: loaded the best model, {best['checkpoint']} "
                              f"({best['metric']}={best['value']:.4g})")
