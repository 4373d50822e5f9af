"""``cord analyze``'s command line: its options and every check that needs no model.

Only light modules are imported here, so that ``cord analyze --help`` and a user error answer
at once; torch, transformers and matplotlib take seconds to import and come with
:mod:`cord.eval.analyze`, after the checks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cord.data.records import is_jsonl, read_jsonl
from cord.divergence import HIGH_KL_PERCENTILE, check_percentile
from cord.eval.evaluate_cli import add_model_arguments, check_generation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--rollouts", help="saved rollouts (JSON/JSONL with 'tokens' and 'kl')")
    add_model_arguments(parser, group=src, default=None,
                        help="model to roll out: a checkpoint directory or a cached hub id "
                             "(families: docs/models.md)")
    parser.add_argument("--data", help="paired dataset (with --model): JSONL/CSV/parquet/dir")
    parser.add_argument("--limit", type=int, default=64, help="items to roll out (with --model)")
    parser.add_argument("--max-new-tokens", type=int, default=200,
                        help="most tokens per rollout (with --model)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature of the rollouts (with --model)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="prompts per generate call (with --model)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rollout sampling")
    parser.add_argument("--percentile", type=float, default=HIGH_KL_PERCENTILE,
                        help="threshold between high- and low-KL tokens")
    parser.add_argument("--output-dir", default="cord_analysis", help="where the PNGs go")


def check_args(args: argparse.Namespace) -> None:
    """Every check of ``args`` that needs no model; raises naming the option."""
    check_percentile(args.percentile, "--percentile")
    if args.rollouts:
        if not Path(args.rollouts).is_file():
            raise FileNotFoundError(f"--rollouts {args.rollouts}: no such file; pass the "
                                    "rollouts.jsonl a previous `cord analyze --model` wrote")
        return
    if not args.data:
        raise ValueError("--model needs --data: add --data PAIRED.jsonl (a paired dataset)")
    if not Path(args.data).exists():
        raise FileNotFoundError(f"--data {args.data}: no such file or folder; pass an "
                                "existing JSONL/CSV/parquet file or saved dataset")
    check_generation(args)
    if is_jsonl(args.data):
        read_jsonl(args.data)


def run(args: argparse.Namespace) -> int:
    check_args(args)
    # Local import, for start-up cost: torch, transformers and matplotlib, after the checks.
    from cord.eval.analyze import run_checked

    return run_checked(args)
