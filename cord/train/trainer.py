"""``CordTrainer``: the CORD training loop on accelerate.

One optimizer step = ``gradient_accumulation_steps`` micro-batches per process; each micro-batch
runs the configured objective (``cord.train.objectives``): on-policy rollouts from the audio
prompts,
the no-grad teacher pass on the text prompts, the loss, ``backward``. Then: gradient clipping, a
NaN/Inf guard (a step whose loss or gradient norm is not finite is skipped, reported and leaves
the weights, the optimizer and the schedule untouched), the AdamW step, the EMA teacher update,
metrics and checkpoints.

Distributed: run under ``accelerate launch`` (DDP, FSDP, DeepSpeed; see
``examples/accelerate/``), or shard with FSDP2 here (``distributed=fsdp2``,
``cord.train.distributed``). Each process samples its own share of the global batch; losses are
per-sequence means, so averaged gradients equal those of one process with the global batch.

Metrics (console line + progress bar, ``output_dir/metrics.jsonl``, accelerate trackers), averaged
over the steps of a logging window: ``loss``; ``l_tok``, ``l_seq`` (cord/opd/grpo), ``l_sft``,
``l_fkl``; ``kl_mean``, ``kl_p80`` (per-token reverse KL D on the rollouts; for fkl ``fkl_mean``,
``fkl_p80``, its forward KL); ``reward`` and
``judged_fraction`` (GRPO groups); ``agreement`` and ``agreement_judged_fraction`` (audio answer
== the teacher's text answer, per the judge; see ``cord.train.metrics``); ``completion_length``;
``grad_norm``; ``weight_change`` (relative change ||w' - w|| / ||w|| of the trained weights per
step) and ``weights_changed`` (the fraction that changed at all; see ``cord.train.precision``);
``learning_rate``, ``skipped``, ``generated_tokens`` (cumulative over the run and
all processes: every rollout, GRPO group, judge reference and teacher rollout),
``tokens_per_second``, ``step_seconds``, ``step``, ``epoch``.

``trainable`` (all | audio | projector, default the objective's) freezes everything else:
frozen parameters get ``requires_grad=False`` and stay out of the optimizer; the counts go to
``training_info.json`` in the saved model folder.

Checkpoints (``output_dir/checkpoint-<step>``) hold the model, optimizer, scheduler, RNG states,
the EMA teacher and the trainer state (step, epoch, position in the epoch), so a resumed run
continues exactly where it stopped: data loading never draws from the global RNG, so the next
rollouts are the ones the uninterrupted run would have sampled. They are written atomically
(``cord.train.checkpoint``: a kill mid-save leaves the previous ones whole), and SIGTERM/SIGINT
stops the run after the current step with a checkpoint (``cord.train.preempt``). A judge that
raises never kills a step: its verdicts count as unjudged, and the failed calls are logged as
``judge_errors``.

Example:
    >>> from cord.config import CordConfig
    >>> metrics = train(CordConfig(objective="cord", max_steps=10, output_dir="runs/x"))
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import (
    DataLoaderConfiguration,
    GradientAccumulationPlugin,
    ProjectConfiguration,
    gather_object,
    set_seed,
)
from tqdm.auto import tqdm
from transformers import get_scheduler

from cord.config import SYNTHETIC_DATASETS, TRAINING_INFO_NAME, CordConfig, hparams
from cord.data.paired import AudioLimit, collate_paired
from cord.data.synthetic import synthetic_dataset
from cord.data.validate import load_paired_checked
from cord.models.adapter import ModelAdapter, train_only, unwrap_model
from cord.models.families import build_adapter
from cord.rewards.judge import GuardedJudge, build_judge
from cord.train.checkpoint import (
    complete_checkpoints,
    resolve_checkpoint,
    save_atomically,
    trim_metrics,
)
from cord.train.distributed import build_strategy, describe_processes
from cord.train.evaluation import Evaluator, evaluate_step, load_best, split_eval
from cord.train.metrics import is_finite, mean_metrics, tokens_per_second
from cord.train.objectives import OBJECTIVES, StepContext, compute_loss, trainable_group
from cord.train.precision import WeightChange, fp32_master_weights
from cord.train.preempt import GracefulStop
from cord.train.teacher import Teacher

TRAINER_STATE_NAME = "trainer_state.json"
#: ``stop_reason`` of a run ended by ``collapse_guard=stop`` (``cord train`` exits 76).
COLLAPSE = "collapse_guard=stop"


# -- building the pieces from a config ---------------------------------------------------------


def build_dataset(config: CordConfig, sampling_rate: int, *, report=print,
                  write_bad_records: bool = True, audio_limit: AudioLimit | None = None):
    """The training prompts: a synthesized task (audio by eSpeak NG, or tones with
    ``dataset_audio="tone"``) or the records of ``config.dataset``, every one checked first
    under ``config.on_bad_record`` / ``max_bad_records`` (``cord.data.validate``; the bad ones
    listed in ``output_dir/bad_records.jsonl`` when ``write_bad_records``), a clip longer than
    ``audio_limit`` (the model's, ``ChatAdapter.audio_limit``) included."""
    if config.dataset in SYNTHETIC_DATASETS:
        return synthetic_dataset(config.dataset, config.dataset_size, seed=config.seed,
                                 audio=config.dataset_audio, sampling_rate=sampling_rate,
                                 progress=not config.disable_tqdm)
    return load_paired_checked(
        config.dataset, sampling_rate=sampling_rate, on_bad_record=config.on_bad_record,
        max_bad_records=config.max_bad_records, report=report,
        output_dir=config.output_dir if write_bad_records else None, audio_limit=audio_limit)


def judge_of_config(config: CordConfig, adapter: ModelAdapter):
    """The judge named by ``config.judge`` (``cord.rewards.judge.build_judge`` with what the
    name needs of the run); None for ``judge="none"``."""
    if config.judge == "none":
        return None
    if config.judge == "model":  # the policy itself asked whether the answers agree
        return build_judge(config.judge, model=unwrap_model(adapter.model),
                           tokenizer=adapter.tokenizer)
    return build_judge(config.judge)


# -- trainer state -----------------------------------------------------------------------------


@dataclass
class TrainerState:
    """Where the run is: saved in every checkpoint (and as trainer_state.json)."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of this process consumed in the current epoch
    total_generated_tokens: int = 0
    skipped_steps: int = 0

    def state_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.__dict__.update({k: int(v) for k, v in state.items()})


# -- the trainer -------------------------------------------------------------------------------


class CordTrainer:
    """Trains ``adapter.model`` with ``config.objective``.

    Args:
        config: a :class:`CordConfig`.
        adapter: the model behind a :class:`cord.models.adapter.ModelAdapter`; built from
            ``config.model`` when None.
        train_dataset: anything indexable yielding paired records ``{id, text, audio={array,
            sampling_rate}, answer}`` (a ``datasets.Dataset`` from
            ``cord.data.paired.load_paired`` or a list); built from ``config.dataset`` when None.
        judge: an object with ``judge(questions, candidates, references) -> list[int]``; built
            from ``config.judge`` when None.
        on_step_end: called as ``on_step_end(step, trainer)`` after every optimizer step (and
            its log line), e.g. to measure validation accuracy for training curves; the model
            is put back in train mode afterwards. Its return value is ignored.
    """

    def __init__(self, config: CordConfig, adapter: ModelAdapter | None = None,
                 train_dataset=None, judge=None, on_step_end=None):
        if not isinstance(config, CordConfig):
            raise TypeError(f"config must be a CordConfig, got {type(config).__name__}")
        # User errors before any model is built.
        config.check_paths(model=adapter is None, dataset=train_dataset is None)
        if on_step_end is not None and not callable(on_step_end):
            raise TypeError(f"on_step_end must be callable as on_step_end(step, trainer), got "
                            f"{type(on_step_end).__name__}")
        self.config = config
        self.on_step_end = on_step_end
        cfg = config
        mixed = cfg.bf16 if cfg.bf16 is not None else (
            torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        report = [r for r in cfg.report_to if r != "none"]
        self.output_dir = Path(cfg.output_dir)
        self.accelerator = Accelerator(
            # A step may span an epoch boundary: sync on the micro-batch count only, never
            # early at the end of the dataloader (that would leave the next micro-batches
            # un-reduced under DDP).
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=cfg.gradient_accumulation_steps, sync_with_dataloader=False),
            mixed_precision="bf16" if mixed else "no",
            log_with=report or None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / "runs")),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True,
                                                      data_seed=cfg.seed),
            step_scheduler_with_optimizer=False,
        )
        acc = self.accelerator
        set_seed(cfg.seed, device_specific=True)  # different rollouts on each process

        self.adapter = adapter if adapter is not None else build_adapter(
            cfg.model, seed=cfg.seed, system_prompt=cfg.system_prompt, long_audio=cfg.long_audio)
        model = self.adapter.model
        if cfg.fp32_master_weights:  # before the teacher copies the model
            fp32_master_weights(model)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        self.teacher = Teacher(cfg.teacher, self.adapter, ema_decay=cfg.teacher_ema_decay)
        self.teacher.to(acc.device)
        self.judge = judge if judge is not None else judge_of_config(cfg, self.adapter)
        if self.judge is None and OBJECTIVES[cfg.objective].needs_judge(cfg):
            raise ValueError(f"objective={cfg.objective!r} needs a judge; set judge (not 'none')")
        if self.judge is not None and not isinstance(self.judge, GuardedJudge):
            # A judge's exception never kills a step: its verdicts become "undecided".
            self.judge = GuardedJudge(self.judge)
        sr = int(getattr(self.adapter, "sampling_rate", 16000))
        # Every clip is checked against the model's audio window in the data pass, before
        # step 1 (an adapter of the ModelAdapter protocol may not say it: then at its batch).
        limit = getattr(self.adapter, "audio_limit", lambda: None)()
        self.train_dataset = (train_dataset if train_dataset is not None else build_dataset(
            cfg, sr, report=acc.print, write_bad_records=acc.is_main_process, audio_limit=limit))
        if len(self.train_dataset) == 0:
            raise ValueError("train_dataset is empty")
        self.train_dataset, eval_records = split_eval(  # a holdout leaves the training set
            cfg, self.train_dataset, sampling_rate=sr, audio_limit=limit)
        self.evaluator = None if eval_records is None else Evaluator(cfg, eval_records, acc)

        self.trainable = trainable_group(cfg)
        self.trained_parameters, self.total_parameters = train_only(self.adapter, self.trainable)

        def make_optimizer(net):  # after sharding, where the strategy shards
            return torch.optim.AdamW([p for p in net.parameters() if p.requires_grad],
                                     lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                     eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)

        loader = torch.utils.data.DataLoader(
            self.train_dataset, batch_size=cfg.per_device_train_batch_size, shuffle=True,
            collate_fn=collate_paired, drop_last=False,
        )
        # DDP/FSDP/DeepSpeed through accelerate, or FSDP2 applied here (cord.train.distributed).
        self.parallel = build_strategy(cfg.distributed, acc, bf16=mixed)
        self.model, self.optimizer, self.dataloader = self.parallel.prepare(
            model, make_optimizer, loader)
        self.adapter = self.adapter.with_model(self.model)
        self.teacher.set_student(self.adapter)

        self.max_steps = self._total_steps()
        # Not prepared: accelerate would step it once per process.
        self.scheduler = get_scheduler(cfg.lr_scheduler_type, self.optimizer,
                                       num_warmup_steps=cfg.warmup_steps,
                                       num_training_steps=self.max_steps)
        self.state = TrainerState()
        acc.register_for_checkpointing(self.scheduler, self.state)
        if cfg.teacher == "ema":
            acc.register_for_checkpointing(self.teacher)
        self.ctx = StepContext(self.adapter, self.teacher, cfg, self.judge, acc.device)
        self.log_history: list[dict[str, Any]] = []
        self._last_saved_step = -1
        #: What stopped the run early (``"SIGTERM"``, :data:`COLLAPSE`); None: it ran to the end.
        self.stop_reason: str | None = None
        self.loaded_best = False  # output_dir/final holds the best checkpoint's weights

    # -- schedule ------------------------------------------------------------------------

    def _steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.dataloader) / self.config.gradient_accumulation_steps))

    def _total_steps(self) -> int:
        if self.config.max_steps > 0:
            return self.config.max_steps
        return max(1, math.ceil(self.config.num_train_epochs * self._steps_per_epoch()))

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """Complete checkpoint directories in ``output_dir``, oldest first."""
        return complete_checkpoints(self.output_dir)

    def save_checkpoint(self) -> Path:
        """Saves everything needed to resume exactly to ``output_dir/checkpoint-<step>``,
        atomically (``cord.train.checkpoint``); raises ``CheckpointSaveError`` on a failed
        write, leaving the previous checkpoints intact."""

        def write_extra(path: Path) -> None:
            evaluation = self.evaluator.state_dict() if self.evaluator else None
            (path / TRAINER_STATE_NAME).write_text(json.dumps(
                {**self.state.state_dict(), "max_steps": self.max_steps,
                 "log_history": self.log_history[-100:], "evaluation": evaluation}, indent=1))
            self.config.to_yaml(path / "cord_config.yaml")

        def write_state(path: Path) -> None:  # every process
            self.parallel.save(path, self.model, self.optimizer)

        best = self.evaluator.best if self.evaluator else None
        path = save_atomically(self.accelerator, self.output_dir, self.state.global_step,
                               write_state, write_extra,
                               save_total_limit=self.config.save_total_limit,
                               keep=(best or {}).get("checkpoint"))
        self._last_saved_step = self.state.global_step
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restores model, optimizer, scheduler, RNG, teacher and trainer state from ``path``
        or, for ``"latest"``, the newest complete checkpoint (partial ones are reported)."""
        path = resolve_checkpoint(self.output_dir, path, report=self.accelerator.print,
                                  remove_stale=self.accelerator.is_main_process)
        self.parallel.load(path, self.model, self.optimizer)
        self._last_saved_step = self.state.global_step
        saved = json.loads((path / TRAINER_STATE_NAME).read_text()).get("evaluation")
        if self.evaluator is not None and saved:  # the evaluation history goes on
            self.evaluator.load_state_dict(saved)
        self.accelerator.print(f"resumed from {path} at step {self.state.global_step}")

    def save_model(self, path: str | Path | None = None) -> Path:
        """``save_pretrained`` of the model and processor (for ``cord eval`` / inference), with
        ``training_info.json`` (what was trained; the best evaluation when there is one)."""
        acc = self.accelerator
        path = Path(path) if path is not None else self.output_dir / "final"
        acc.wait_for_everyone()
        self.parallel.save_pretrained(self.model, path)
        if acc.is_main_process and hasattr(self.adapter, "processor"):
            self.adapter.processor.save_pretrained(str(path))
        if acc.is_main_process:
            (path / TRAINING_INFO_NAME).write_text(json.dumps({
                "objective": self.config.objective, "trainable": self.trainable,
                "trained_parameters": self.trained_parameters,
                "total_parameters": self.total_parameters, "steps": self.state.global_step,
                "generated_tokens": self.state.total_generated_tokens,
                "best_model": self.evaluator.best if self.evaluator else None,
                "loaded_best_model": self.loaded_best}, indent=1))
        acc.wait_for_everyone()
        return path

    # -- the loop --------------------------------------------------------------------------

    def _batches(self):
        """Yields micro-batches forever (epoch after epoch), resuming mid-epoch if needed.

        Fetching runs under a forked RNG: the DataLoader draws a base seed from the global RNG
        when an iterator starts, and that must not shift the rollouts after a resume."""
        while True:
            self.dataloader.set_epoch(self.state.epoch)
            skip = self.state.batches_in_epoch
            loader = skip_first_batches(self.dataloader, skip) if skip else self.dataloader
            it = iter(loader)
            while True:
                with torch.random.fork_rng(devices=[]):
                    batch = next(it, None)
                if batch is None:
                    break
                self.state.batches_in_epoch += 1
                yield batch
            self.state.epoch += 1
            self.state.batches_in_epoch = 0

    def _log(self, metrics: dict[str, Any], bar) -> None:
        acc = self.accelerator
        self.log_history.append(metrics)
        if bar is not None:
            bar.set_postfix({k: f"{metrics[k]:.4g}" for k in ("loss", "kl_p80", "reward")
                             if isinstance(metrics.get(k), float) and math.isfinite(metrics[k])})
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with (self.output_dir / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps(_jsonable(metrics)) + "\n")
            line = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
            (bar.write if bar is not None else print)(line)
        acc.log({k: v for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)
                 and math.isfinite(v) and k != "step"}, step=metrics["step"])

    def train(self) -> dict[str, Any]:
        """Runs to ``max_steps``; returns the metrics of the last logged step.

        On SIGTERM/SIGINT it stops after the current optimizer step instead, saves a checkpoint
        and returns with ``stop_reason`` set (``cord.train.preempt``)."""
        with GracefulStop() as stop:
            return self._train(stop)

    def _judge_failures(self) -> dict[str, int]:
        """Judge calls that raised in the logging window, summed over processes."""
        if not isinstance(self.judge, GuardedJudge):
            return {}
        last = self.judge.last_error
        errors = sum(gather_object([self.judge.pop_counts()["judge_errors"]]))
        if errors:
            self.accelerator.print(f"the judge failed {errors} time(s) since the last log line "
                                   f"(latest: {last}); those verdicts count as unjudged")
        return {"judge_errors": errors}

    def _train(self, stop: GracefulStop) -> dict[str, Any]:
        cfg, acc = self.config, self.accelerator
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            cfg.to_yaml(self.output_dir / "cord_config.yaml")
        if acc.log_with:
            acc.init_trackers("cord", config=hparams(cfg))
        if cfg.resume_from_checkpoint:
            self.load_checkpoint(cfg.resume_from_checkpoint)
        if acc.is_main_process:  # the steps after the start are (re)done and (re)logged
            trim_metrics(self.output_dir / "metrics.jsonl", self.state.global_step)
        global_batch = (cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
                        * acc.num_processes)
        acc.print(f"cord: {cfg.objective} for {self.max_steps} steps on "
                  f"{describe_processes(acc, cfg.distributed)}, global batch {global_batch} "
                  f"prompts, {len(self.train_dataset)} in the dataset"
                  + (f", {len(self.evaluator.records)} evaluated every {cfg.eval_steps} steps"
                     if self.evaluator else ""))
        bar = None
        if acc.is_main_process and not cfg.disable_tqdm:
            bar = tqdm(total=self.max_steps, initial=self.state.global_step, desc=cfg.objective,
                       unit="step", dynamic_ncols=True)
        last: dict[str, Any] = {}
        batches = self._batches()
        params = [p for p in self.model.parameters() if p.requires_grad]
        moved = WeightChange(params)  # what each step really did to the weights
        # The logging window: metrics are averaged over the steps since the last log line.
        window: dict[str, Any] = {"parts": [], "tokens": 0, "seconds": 0.0, "grad_norms": [],
                                  "moves": []}
        if self.evaluator is not None and self.state.global_step == 0:
            evaluate_step(self, 0, bar)  # the base: the guard's reference
        while self.state.global_step < self.max_steps:
            t0 = time.perf_counter()
            parts, tokens, finite_loss = [], 0, True
            for _ in range(cfg.gradient_accumulation_steps):
                batch = next(batches)
                # autocast covers generation and the frozen teacher too (they run the bare model)
                with acc.accumulate(self.model), acc.autocast():
                    out = compute_loss(self.ctx, batch)
                    finite_loss &= is_finite(out.loss.detach())
                    acc.backward(out.loss)
                parts.append({"loss": float(out.loss.detach()), **out.metrics})
                tokens += out.num_generated_tokens
            # Every process has all-reduced gradients here: the norm (and the verdict) agree.
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
            grad_norm = self.parallel.clip_grad_norm_(params, max_norm)
            finite = _all_true(acc, finite_loss) and math.isfinite(grad_norm)
            if finite:
                moved.before()
                self.optimizer.step()
                window["moves"].append(moved.after())
                if not acc.optimizer_step_was_skipped:
                    self.scheduler.step()
                    self.teacher.update()
            else:
                self.state.skipped_steps += 1
                acc.print(f"step {self.state.global_step + 1}: non-finite "
                          f"{'loss' if not finite_loss else 'gradient norm'}; step skipped")
            self.optimizer.zero_grad(set_to_none=True)
            self.state.global_step += 1
            tokens = _sum_all(acc, tokens)  # every process's: generated_tokens is the run's
            self.state.total_generated_tokens += tokens
            elapsed = time.perf_counter() - t0
            if bar is not None:
                bar.update(1)

            step = self.state.global_step
            window["parts"] += parts
            window["tokens"] += tokens
            window["seconds"] += elapsed
            window["grad_norms"].append(grad_norm)
            # A log line averages the steps since the previous one (all processes, all
            # micro-batches); a skipped step is always logged on its own line.
            if step % cfg.logging_steps == 0 or step == self.max_steps or not finite:
                all_parts = gather_object(window["parts"])
                all_tokens = window["tokens"]
                metrics = mean_metrics(all_parts)
                metrics.update(mean_metrics(window["moves"]))
                metrics.update(self._judge_failures())
                # The loss of a skipped step is reported as it was (NaN/Inf), not averaged away.
                metrics["loss"] = float(np.mean([p["loss"] for p in all_parts]))
                metrics.update(
                    step=step, grad_norm=float(np.mean(window["grad_norms"])),
                    epoch=self.state.epoch + self.state.batches_in_epoch / len(self.dataloader),
                    learning_rate=self.scheduler.get_last_lr()[0], skipped=not finite,
                    generated_tokens=self.state.total_generated_tokens,
                    tokens_per_second=tokens_per_second(all_tokens, window["seconds"]),
                    step_seconds=window["seconds"] / len(window["grad_norms"]),
                )
                self._log(metrics, bar)
                last = metrics
                window = {"parts": [], "tokens": 0, "seconds": 0.0, "grad_norms": [],
                          "moves": []}
            if self.evaluator is not None and self.evaluator.due(step, self.max_steps) \
                    and evaluate_step(self, step, bar):
                self.stop_reason = COLLAPSE
                break
            if cfg.save_steps and step % cfg.save_steps == 0 and step < self.max_steps \
                    and self._last_saved_step != step:
                self.save_checkpoint()
            if self.on_step_end is not None:
                self.on_step_end(step, self)
                self.model.train()
            # Every process asks (one all-reduce), so all stop after this same step.
            if step < self.max_steps and stop.requested(acc):
                self.stop_reason = stop.reason or "a stop signal on another process"
                break
        if bar is not None:
            bar.close()
        if self._last_saved_step != self.state.global_step:
            self.save_checkpoint()
        if self.stop_reason == COLLAPSE:
            acc.print(f"cord: stopped by {COLLAPSE} after step {self.state.global_step} of "
                      f"{self.max_steps}; checkpoint-{self.state.global_step} is saved")
        elif self.stop_reason is not None:
            acc.print(f"cord: stopped by {self.stop_reason} after step {self.state.global_step} "
                      f"of {self.max_steps}; checkpoint-{self.state.global_step} is saved: "
                      "resume with resume_from_checkpoint=latest")
        else:
            load_best(self)
            self.save_model()
        if self.evaluator is not None:
            self.evaluator.plot(self.output_dir / "eval_curve.png")
        acc.end_training()
        self.parallel.close()
        return last


def train(config: CordConfig, *, adapter: ModelAdapter | None = None, train_dataset=None,
          judge=None, on_step_end=None) -> dict[str, Any]:
    """Builds a :class:`CordTrainer` from ``config`` and trains; returns the final metrics."""
    return CordTrainer(config, adapter=adapter, train_dataset=train_dataset, judge=judge,
                       on_step_end=on_step_end).train()


# -- helpers -----------------------------------------------------------------------------------


def _all_true(acc, flag: bool) -> bool:
    if acc.num_processes == 1:
        return bool(flag)
    t = torch.tensor([0.0 if flag else 1.0], device=acc.device)
    return bool(acc.reduce(t, reduction="sum").item() == 0)


def _sum_all(acc, n: int) -> int:
    if acc.num_processes == 1:
        return int(n)
    t = torch.tensor([float(n)], device=acc.device)
    return int(acc.reduce(t, reduction="sum").item())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in metrics.items()}
