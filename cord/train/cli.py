"""``cord train``: train a model with CORD or one of the paper's baselines.

    cord train --config examples/configs/cord_tiny.yaml max_steps=20 learning_rate=1e-4
    cord train objective=opd --max_steps 5              # tiny model, synthesized arithmetic
    accelerate launch --config_file examples/accelerate/ddp.yaml -m cord.cli train --config x.yaml

Without ``--config`` every option has its default (``model=tiny``, ``dataset=arithmetic``), so
the command runs on the CPU as is. Options are the fields of :class:`cord.config.CordConfig`,
given as ``key=value``, ``--key value`` or ``--key=value`` (later ones win); ``--help`` lists
them with their type, default and meaning, from the fields' own metadata.

Exit statuses: 0 done; 1 a crash (traceback); 2 a user error, bad data included (one line);
74 a checkpoint could not be written (disk full, permissions; the previous one is intact);
75 stopped by SIGTERM/SIGINT after saving a checkpoint (resume with
``resume_from_checkpoint=latest``); 76 stopped by ``collapse_guard=stop`` after saving a
checkpoint; 128 + N on a second signal N (130, 143): exited at once. The last line of a run
names the folder that holds the final model.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

import yaml

from cord import settings
from cord.config import CordConfig, describe_options, parse_overrides
from cord.data.records import SKIP_MALFORMED_HINT, is_jsonl, malformed_error, scan_jsonl


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="YAML file of options (see examples/configs)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="option overrides, values parsed as YAML (max_steps=10)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit")
    group = parser.add_argument_group(
        "options", "every CordConfig field; also accepted as key=value. Values are parsed as "
        "YAML (report_to=[none], bf16=true)")
    hints = typing.get_type_hints(CordConfig)
    for name, type_name, default, help_text in describe_options():
        flags = [f"--{name}"]
        if "_" in name:  # the dashed spelling is a habit from other CLIs
            flags.append(f"--{name.replace('_', '-')}")
        # A bare boolean flag (``--disable_tqdm``) means true.
        const = "true" if hints[name] in (bool, bool | None) else None
        group.add_argument(*flags, dest=f"option:{name}", metavar=type_name.upper(),
                           nargs="?" if const else None, const=const,
                           default=argparse.SUPPRESS,
                           help=f"{help_text} [{type_name}, default {default}]")


def config_from_args(args: argparse.Namespace) -> CordConfig:
    """The config of ``args``: the YAML file, then ``key=value`` overrides, then ``--key``
    options. Raises ValueError/TypeError/FileNotFoundError naming the problem."""
    options = {k.split(":", 1)[1]: v for k, v in vars(args).items() if k.startswith("option:")}
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in options.items()]
    return CordConfig.from_yaml(args.config, overrides)


def check_dataset_lines(config: CordConfig) -> None:
    """A JSONL dataset that is empty or has a malformed line fails here, in a second, instead
    of after the model is built (the trainer's own check, ``cord.data.validate``, counts the
    lines again with on_bad_record=skip)."""
    if is_jsonl(config.dataset):
        _, malformed = scan_jsonl(config.dataset)
        if malformed and config.on_bad_record == "error":
            raise malformed_error(malformed, SKIP_MALFORMED_HINT)


#: A model folder whose weights are smaller than this runs on one CPU thread.
SMALL_MODEL_BYTES = 64 * 2**20


def small_model(model: str) -> bool:
    """``tiny``, or a model folder whose weight files hold less than
    :data:`SMALL_MODEL_BYTES` (the demo's bases: 1.6 MB)."""
    if model == "tiny":
        return True
    folder = Path(model)
    weights = [*folder.glob("*.safetensors"), *folder.glob("*.bin")] if folder.is_dir() else []
    return bool(weights) and sum(w.stat().st_size for w in weights) < SMALL_MODEL_BYTES


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    config.check_paths()  # before anything is built (the trainer also checks)
    check_dataset_lines(config)
    if config.resume_from_checkpoint:  # "latest" with no checkpoint, a missing folder
        from cord.train.checkpoint import resolve_checkpoint  # light: no torch

        resolve_checkpoint(config.output_dir, config.resume_from_checkpoint,
                           report=lambda _: None, remove_stale=False)
    # Local imports, for start-up cost: torch, transformers and accelerate take seconds, and
    # --print-config and every user error above answer without them.
    import torch

    from cord.train.checkpoint import EXIT_CHECKPOINT_FAILED, EXIT_PREEMPTED, CheckpointSaveError
    from cord.train.evaluation import EXIT_COLLAPSED
    from cord.train.trainer import COLLAPSE, CordTrainer

    if small_model(config.model) and not torch.cuda.is_available():
        # A tiny model gains nothing from intra-op threads on a CPU; they only contend (the
        # claim base's evaluation: 2.7 s on one thread, 31 s on two busy cores).
        torch.set_num_threads(1)
    trainer = CordTrainer(config)
    try:
        metrics = trainer.train()
    except CheckpointSaveError as err:
        print(f"cord train: error: {err}", file=sys.stderr)
        return EXIT_CHECKPOINT_FAILED
    if trainer.stop_reason is not None:
        return EXIT_COLLAPSED if trainer.stop_reason == COLLAPSE else EXIT_PREEMPTED
    if settings.get().rank != 0:  # one summary line per run, not per process
        return 0
    shown = {k: v for k, v in metrics.items() if not isinstance(v, bool)}
    print("final: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in shown.items()))
    best = trainer.evaluator.best if trainer.loaded_best else None
    what = (f"the best model (step {best['step']}, {best['metric']}={best['value']:.4g})"
            if best else "the final model")
    print(f"cord train: {what} is in {trainer.output_dir / 'final'}")
    return 0


__all__ = ["add_arguments", "config_from_args", "parse_overrides", "run"]
