"""``CordConfig``: every option of a CORD training run, loadable from YAML with overrides.

Names follow TRL's ``GRPOConfig``/``TrainingArguments`` where the meaning is the same
(``learning_rate``, ``per_device_train_batch_size``, ``num_generations``, ``temperature``,
``max_completion_length``, ...). CORD's own options carry a ``cord_`` prefix: the position
weight is ``cord_position_beta``, never ``beta``, which in TRL is the KL-penalty coefficient.

Example:
    >>> cfg = CordConfig.from_yaml("examples/configs/cord_tiny.yaml", ["max_steps=4"])
    >>> cfg = CordConfig(objective="opd", max_steps=2)
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cord.config_values import (
    check_data_path,
    choice_of,
    coerce,
    kernel_default,
    named_value,
    parse_overrides,
)
from cord.data.records import ON_BAD_RECORD
from cord.models.options import MODEL_OPTIONS, check_model

TEACHERS = ("live", "base", "ema")
#: The judges of ``cord.rewards.judge`` plus "none" (no judge: no L_seq, no agreement metric).
JUDGES = ("match", "model", "none")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
REPORT_TO = ("none", "tensorboard", "wandb", "all")
#: How the trainer spreads the model over processes (``cord.train.distributed``).
DISTRIBUTED = ("accelerate", "fsdp2")
#: Datasets ``cord train`` synthesizes itself; any other ``dataset`` is a path.
SYNTHETIC_DATASETS = ("arithmetic", "multiple_choice")
#: What a rollout the judge cannot score gets: reward 0 (the paper's binary reward) or no
#: advantage (left out of its group's mean).
UNJUDGED_REWARDS = ("zero", "skip")
#: Parameter groups ``trainable`` may name (``ModelAdapter.parameter_group``).
TRAINABLE = ("all", "audio", "projector")
#: Written by ``cord train`` next to the model it saves: what was trained (read by ``cord eval``).
TRAINING_INFO_NAME = "training_info.json"

#: ``eval_dataset`` that keeps back ``eval_holdout`` of the training records instead of a file.
HOLDOUT = "holdout"
#: ``collapse_guard``: what an evaluation does when the run has collapsed (cord.train.evaluation).
COLLAPSE_GUARDS = ("warn", "stop", "off")
#: The metrics an evaluation reports (cord.train.evaluation), and whether more is better: the
#: values ``metric_for_best_model`` may name and ``greater_is_better``'s inferred default.
EVAL_METRICS = {"eval_audio_accuracy": True, "eval_text_accuracy": True,
                "eval_modality_gap": False, "eval_agreement": True, "eval_kl_mean": False}


DEFAULT_REPHRASE_PROMPT = (
    "Rewrite the answer below so that it reads as an answer to a question that was heard, "
    "not read: remove any mention of reading, text or the written question, and keep the "
    "reasoning and the final answer exactly the same.\n\nAnswer:\n{answer}"
)


# -- what each objective needs of a config ------------------------------------------------------
# The half of the objective registry that validation reads, kept here so that a config error
# (``cord train objective=x``) answers before torch is imported; ``cord.train.objectives``
# pairs each entry with its loss.


def cord_has_seq(config: Any) -> bool:
    """The one rule for CORD's L_seq: it (with its GRPO groups and judge) runs only when its
    weight is positive."""
    return config.cord_seq_weight > 0


def _always(config: Any) -> bool:
    return True


def _never(config: Any) -> bool:
    return False


@dataclass(frozen=True)
class Needs:
    """``needs_judge(config)``: the loss itself needs judge verdicts (a judge may still be used
    for the agreement metric when it is not needed); ``needs_groups(config)``: the loss compares
    a group of ``num_generations`` rollouts per prompt (GRPO), so ``num_generations >= 2``;
    ``trainable``: the parameter group trained when the config's ``trainable`` is None."""

    needs_judge: Callable[[Any], bool]
    needs_groups: Callable[[Any], bool]
    trainable: str = "all"


#: The objectives (``objective``) and what each needs.
NEEDS: dict[str, Needs] = {
    # the paper's Table 3 ladder: (ii), (iii), (iv)
    "grpo": Needs(_always, _always),
    "grpo_opd": Needs(_always, _always),
    "cord": Needs(cord_has_seq, cord_has_seq),
    "opd": Needs(_never, _never),
    "sft": Needs(_never, _never),
    "fkl": Needs(_never, _never),
    "sft_gold": Needs(_never, _never),
    # ALARM freezes the LLM and trains the audio side
    "alarm": Needs(_never, _never, trainable="audio"),
}


def option(default: Any = dataclasses.MISSING, help: str = "", *, hparam: bool = True,
           default_factory: Any = dataclasses.MISSING,
           choices: tuple[str, ...] | None = None) -> Any:
    """A config field with its one-line ``help`` (shown by ``cord train --help`` and
    docs/trainer.md); ``hparam=False`` keeps it out of the TensorBoard hparams (long free text);
    ``choices``: the values it may take (each item, for a list; None is allowed where the type
    allows it), checked by ``CordConfig`` for every field that declares them."""
    if not help:
        raise ValueError("every CordConfig option needs a help text")
    return field(default=default, default_factory=default_factory,
                 metadata={"help": help, "hparam": hparam, "choices": choices})


def model_option(name: str) -> Any:
    """The field of a model option, declared once in ``cord.models.options.MODEL_OPTIONS``
    (``cord eval`` and ``cord analyze`` take the same options)."""
    declared = MODEL_OPTIONS[name]
    return option(declared.default, declared.help, choices=declared.choices)


@dataclass
class CordConfig:
    """Options of ``cord train`` (see ``examples/configs`` for annotated files)."""

    # One field per option with its help text, TRL-style: same-shaped fields on purpose.
    # -- what to train ---------------------------------------------------------------------
    model: str = model_option("model")
    long_audio: str = model_option("long_audio")
    dataset: str = option("arithmetic", '"arithmetic" / "multiple_choice" (synthesized) or a '
                          "paired JSONL/CSV/parquet file or saved dataset folder")
    dataset_size: int = option(64, "number of examples of a synthesized dataset")
    dataset_audio: str = option("tts", 'audio of a synthesized dataset: "tts" (eSpeak NG) or '
                                '"tone" (one tone per character)', choices=("tts", "tone"))
    objective: str = option("cord", "the paper's Table 3: grpo (L_seq) | grpo_opd (uniform L_tok + "
                            "L_seq) | cord (weighted L_tok + L_seq); also opd (uniform L_tok) | "
                            "sft | fkl | alarm | sft_gold (SFT on the dataset's answers, a "
                            "diagnostic)", choices=tuple(NEEDS))
    trainable: str | None = option(None, "parameters trained: all | audio (audio encoder + "
                                   "projector) | projector; None = the objective's default "
                                   "(alarm: audio, the others: all)", choices=TRAINABLE)
    teacher: str = option("live", "live (current weights, the paper) | base (frozen initial "
                          "weights) | ema", choices=TEACHERS)
    teacher_ema_decay: float = option(0.99, "decay d of the EMA teacher, in [0, 1)")
    judge: str = option("match", '"match" (final-answer matching), "model" (the policy asked '
                        'yes/no) or "none"; rewards of L_seq and the agreement metric',
                        choices=JUDGES)
    unjudged_reward: str = option("zero", 'a rollout the judge cannot score: "zero" (reward 0, '
                                  'the paper\'s binary reward) or "skip" (advantage 0, left out '
                                  "of its group's mean)", choices=UNJUDGED_REWARDS)
    instruction: str = option("", "text appended to the user turn of both the audio and the "
                              "text prompt")
    system_prompt: str | None = model_option("system_prompt")

    # -- CORD token loss (paper eqs. 4-7) ----------------------------------------------------
    cord_top_k: int = option(kernel_default("TOP_K"), "number of highest-divergence tokens "
                             "that get the extra weight alpha (0: none; cord_kernels' TOP_K by "
                             "default)")
    cord_alpha: float = option(2.0, "weight of the top-K highest-divergence tokens (the "
                               "paper's alpha)")
    cord_position_beta: float = option(2.0, "weight of the first token, decaying linearly to 1 "
                                       "(the paper's beta; not TRL's beta)")
    cord_kl_temperature: float = option(1.0, "tau of the KL (softmax(logits / tau)); "
                                        "independent of the sampling temperature")
    cord_seq_weight: float = option(1.0, "weight w of L_seq in L_cord = L_tok + w * L_seq "
                                    "(0 skips the GRPO rollouts and the judge)")
    use_fused_linear: bool = option(False, "hidden states in, logits never materialised "
                                    "(cord_kernels' fused-linear losses)")

    # -- rollouts ----------------------------------------------------------------------------
    num_generations: int = option(4, "GRPO group size: audio rollouts per prompt for L_seq")
    temperature: float = option(1.0, "sampling temperature of the token-loss and teacher "
                                "rollouts (0 = greedy)")
    grpo_temperature: float = option(1.5, "sampling temperature of the GRPO rollouts")
    reference_temperature: float = option(1.0, "temperature of the judge's references, the "
                                          "teacher's answers to the text prompts (0 = greedy)")
    max_completion_length: int = option(200, "most tokens generated per rollout")
    alarm_rephrase_prompt: str = option(DEFAULT_REPHRASE_PROMPT, "ALARM's rephrasing request; "
                                        "must contain {answer}", hparam=False)

    # -- optimisation (TRL/transformers names) -------------------------------------------
    learning_rate: float = option(3e-5, "AdamW learning rate")
    weight_decay: float = option(0.0, "AdamW weight decay")
    adam_beta1: float = option(0.9, "AdamW beta1")
    adam_beta2: float = option(0.999, "AdamW beta2")
    adam_epsilon: float = option(1e-8, "AdamW epsilon")
    lr_scheduler_type: str = option("constant", "learning-rate schedule: " + " | ".join(SCHEDULERS),
                                    choices=SCHEDULERS)
    warmup_steps: int = option(0, "steps of linear learning-rate warm-up")
    per_device_train_batch_size: int = option(1, "prompts per micro-batch on each process")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    num_train_epochs: float = option(1.0, "epochs to run when max_steps is -1")
    max_steps: int = option(-1, "optimizer steps to run; -1 derives it from num_train_epochs")
    max_grad_norm: float = option(1.0, "clip the global gradient norm (0 disables clipping; the "
                                  "norm is still logged)")
    bf16: bool | None = option(None, "bf16 autocast; None = on when a CUDA device supports it")
    fp32_master_weights: bool = option(True, "train float32 weights even when the model was "
                                       "loaded in bf16/fp16 (bf16 compute comes from autocast); "
                                       "false updates the low-precision weights directly")
    distributed: str = option("accelerate", "accelerate (whatever `accelerate launch` set up: "
                              "DDP, FSDP, DeepSpeed) | fsdp2 (the trainer shards the model "
                              "with torch's fully_shard itself; also on the CPU)",
                              choices=DISTRIBUTED)
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass "
                                          "(less memory, more time)")
    seed: int = option(42, "seed of the weights of model=tiny, the data order and the rollouts")

    # -- logging and checkpoints ----------------------------------------------------------
    output_dir: str = option("cord-output", "where checkpoints, metrics.jsonl and the final "
                             "model go")
    logging_steps: int = option(10, "print and record the metrics averaged over this many "
                                "steps")
    save_steps: int = option(500, "save a resumable checkpoint every this many steps (0 = only "
                             "at the end)")
    save_total_limit: int | None = option(None, "keep only the newest this many checkpoints "
                                          "(None = all)")
    resume_from_checkpoint: str | None = option(None, 'a checkpoint directory, or "latest" for '
                                                "the newest complete one in output_dir")
    on_bad_record: str = option("error", '"error": a bad record of a dataset file stops the run '
                                "before step 1; \"skip\": train on the rest (listed in "
                                "output_dir/bad_records.jsonl)", choices=ON_BAD_RECORD)
    max_bad_records: float | None = option(None, "with on_bad_record=skip, stop when more "
                                           "records are bad: a count (>= 1), a fraction (< 1) "
                                           "or None (no limit)")
    # -- evaluation during training (TRL's names) --------------------------------------------
    eval_dataset: str | None = option(None, 'held-out records scored during training: a paired '
                                      'file or saved dataset folder like dataset, or "holdout" '
                                      "(eval_holdout of the training records, never trained "
                                      "on); None = no evaluation")
    eval_holdout: float = option(0.1, 'share of the training records eval_dataset="holdout" '
                                 "keeps back (seeded), in (0, 1)")
    eval_steps: int = option(0, "evaluate every this many steps, and at step 0 and at the end "
                             "(0 = off; needs eval_dataset)")
    eval_max_samples: int | None = option(None, "score a fixed, seeded subset of this many "
                                          "eval records at every evaluation (None = all)")
    per_device_eval_batch_size: int = option(16, "eval prompts per generate call on each "
                                             "process")
    metric_for_best_model: str = option("eval_modality_gap", "the evaluation metric that picks "
                                        "the best checkpoint: " + " | ".join(EVAL_METRICS),
                                        choices=tuple(EVAL_METRICS))
    greater_is_better: bool | None = option(None, "whether a larger metric_for_best_model is "
                                            "better; None = the metric's own sense (gap and KL: "
                                            "smaller, accuracies and agreement: larger)")
    load_best_model_at_end: bool = option(False, "output_dir/final holds the best evaluated "
                                          "weights (its training_info.json names the step), "
                                          "not the last; needs eval_steps")
    collapse_guard: str | None = option(None, 'when an evaluation finds the run collapsed: '
                                        '"warn" (one line), "stop" (checkpoint, exit 76) or '
                                        '"off"; None = warn when evaluation is on',
                                        choices=COLLAPSE_GUARDS)
    collapse_text_drop: float = option(10.0, "collapsed: text or audio accuracy more than this "
                                       "many points below step 0's")

    report_to: list[str] = option(help="trackers: " + " | ".join(REPORT_TO),
                                  default_factory=lambda: ["tensorboard"], choices=REPORT_TO)
    disable_tqdm: bool = option(False, "hide the progress bar")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), hints[f.name]))
        self._validate()

    # -- validation ---------------------------------------------------------------------------

    def _validate(self) -> None:
        self.model = named_value(self.model, ("tiny",))
        self.dataset = named_value(self.dataset, SYNTHETIC_DATASETS)
        self.eval_dataset = named_value(self.eval_dataset, (HOLDOUT,))
        for f in dataclasses.fields(self):  # the choices declared with each option
            choices, value = f.metadata["choices"], getattr(self, f.name)
            if choices is None or value is None:
                continue
            items = [choice_of(f.name, item, choices)
                     for item in (value if isinstance(value, list) else [value])]
            setattr(self, f.name, items if isinstance(value, list) else items[0])
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps",
                     "num_generations", "max_completion_length", "logging_steps",
                     "dataset_size", "per_device_eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cord_top_k < 0:  # LossOptions' rule (cord_kernels.core.options.check_top_k)
            raise ValueError(f"cord_top_k must be >= 0, got {self.cord_top_k}")
        for name in ("save_steps", "warmup_steps", "weight_decay", "max_grad_norm",
                     "eval_steps", "collapse_text_drop",
                     "temperature", "reference_temperature", "cord_seq_weight", "num_train_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("learning_rate", "cord_kl_temperature", "grpo_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("cord_alpha", "cord_position_beta"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.teacher_ema_decay < 1.0:
            raise ValueError(f"teacher_ema_decay must be in [0, 1), got {self.teacher_ema_decay}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be -1 (use num_train_epochs) or >= 1, "
                             f"got {self.max_steps}")
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            raise ValueError("num_train_epochs must be > 0 when max_steps is -1")
        if NEEDS[self.objective].needs_groups(self) and self.num_generations < 2:
            raise ValueError(
                f"num_generations must be >= 2 for objective={self.objective!r} (GRPO compares "
                f"rollouts within a group), got {self.num_generations}"
            )
        if self.objective == "grpo_opd" and self.cord_seq_weight == 0:
            raise ValueError("cord_seq_weight must be > 0 for objective='grpo_opd' (L_tok + w * "
                             "L_seq); without L_seq use objective='opd'")
        if not 0.0 < self.eval_holdout < 1.0:
            raise ValueError(f"eval_holdout must be in (0, 1), got {self.eval_holdout}")
        if self.eval_max_samples is not None and self.eval_max_samples < 1:
            raise ValueError(f"eval_max_samples must be >= 1 or None, got "
                             f"{self.eval_max_samples}")
        if self.eval_steps and self.eval_dataset is None:
            raise ValueError('eval_steps needs eval_dataset (a paired file or "holdout")')
        if self.load_best_model_at_end and not self.eval_steps:
            raise ValueError("load_best_model_at_end needs eval_steps (and eval_dataset)")
        if self.collapse_guard in ("warn", "stop") and not self.eval_steps:
            raise ValueError(f"collapse_guard={self.collapse_guard!r} needs eval_steps (the "
                             "guard reads the evaluations)")
        if "{answer}" not in self.alarm_rephrase_prompt:
            raise ValueError("alarm_rephrase_prompt must contain the placeholder {answer}")
        if not self.model:
            raise ValueError("model must be 'tiny' or a local model directory, got ''")
        if self.max_bad_records is not None and not (
                self.max_bad_records >= 0
                and (self.max_bad_records < 1 or float(self.max_bad_records).is_integer())):
            raise ValueError("max_bad_records must be a whole count >= 1, a fraction in [0, 1) "
                             f"or None, got {self.max_bad_records}")

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CordConfig:
        """Builds a config; unknown keys raise a ValueError naming them (with a suggestion)."""
        if not isinstance(values, dict):
            raise TypeError(f"a config must be a mapping of option -> value, got "
                            f"{type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(str(key), sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown config key {key!r}{hint}; `cord train --help` lists "
                                 "the options")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, overrides: list[str] = ()) -> CordConfig:
        """Reads a YAML mapping (or starts from defaults) and applies ``key=value`` overrides;
        values are parsed as YAML (``max_steps=4``, ``report_to=[none]``, ``bf16=true``)."""
        values: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"config file not found: {path}")
            with path.open() as fh:
                loaded = yaml.safe_load(fh)
            if loaded is not None and not isinstance(loaded, dict):
                raise ValueError(f"{path}: the top level must be a mapping of option: value")
            values.update(loaded or {})
        values.update(parse_overrides(overrides))
        return cls.from_dict(values)

    def check_paths(self, *, model: bool = True, dataset: bool = True) -> None:
        """Raises ValueError, naming the fix, when ``model`` or ``dataset`` names a path
        that does not exist (checked before anything is built, not in ``__post_init__``: a
        saved config stays loadable on another machine)."""
        if model:
            if self.model != "tiny" and not Path(self.model).exists() and difflib.get_close_matches(
                    self.model.lower(), ["tiny"], n=1):
                raise ValueError(f"model {self.model!r} does not exist (did you mean 'tiny'?)")
            check_model(self.model)
            folder = Path(self.model)
            if self.model != "tiny" and folder.is_dir() and not (folder / "config.json").is_file():
                raise ValueError(f"model {self.model!r} holds no config.json: pass a saved "
                                 "model folder (save_pretrained), model=tiny or a hub id")
        if dataset and self.dataset not in SYNTHETIC_DATASETS:
            check_data_path("dataset", self.dataset, SYNTHETIC_DATASETS)
        if dataset and self.eval_dataset not in (None, HOLDOUT):
            check_data_path("eval_dataset", self.eval_dataset)

    @property
    def guard(self) -> str:
        """The collapse guard in force: ``collapse_guard``, or for None "warn" when evaluation
        is on and "off" when it is not."""
        if self.collapse_guard is not None:
            return self.collapse_guard
        return "warn" if self.eval_steps else "off"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **changes: Any) -> CordConfig:
        return dataclasses.replace(self, **changes)


def hparams(config: CordConfig) -> dict[str, Any]:
    """The config as TensorBoard hparams: scalars and strings, without the options marked
    ``hparam=False`` (long free text)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not f.metadata.get("hparam", True):
            continue
        if isinstance(value, (bool, int, float, str)):
            out[f.name] = value
        elif value is not None:
            out[f.name] = str(value)
    return out


def type_name(hint: Any) -> str:
    """``int``, ``str | None``, ``list[str]``: a field's type as a reader writes it."""
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def describe_options() -> list[tuple[str, str, str, str]]:
    """``(name, type, default, help)`` of every CordConfig option, in declaration order: the
    one source of ``cord train --help`` and of docs/trainer.md's option list."""
    hints = typing.get_type_hints(CordConfig)
    rows = []
    for f in dataclasses.fields(CordConfig):
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        shown = repr(default)
        if len(shown) > 40:  # a long text default: its start is enough to recognise it
            shown = shown[:36] + "...'"
        rows.append((f.name, type_name(hints[f.name]), shown, f.metadata["help"]))
    return rows


def options_markdown() -> str:
    """docs/trainer.md's option list of ``cord train``, generated from :func:`describe_options`."""
    lines = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for name, hint, default, help_text in describe_options():
        cells = [f"`{name}`", f"`{hint}`", f"`{default}`", help_text]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


