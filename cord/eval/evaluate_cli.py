"""``cord eval``'s command line: its options and every check that needs no model.

Only light modules are imported here, so that ``cord eval --help`` and a user error (a missing
file, a bad value, a malformed JSONL line) answer at once; torch, transformers and datasets
take seconds to import and come with :mod:`cord.eval.evaluate`, after the checks.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cord.data.records import is_jsonl, read_jsonl
from cord.models import options
from cord.rewards.answers import ANSWER_KINDS


def parse_data_args(values: Sequence[str]) -> dict[str, str]:
    """``["mmsu=a.jsonl", "b.jsonl"]`` -> ``{"mmsu": "a.jsonl", "b": "b.jsonl"}``."""
    out: dict[str, str] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep:
            name, path = Path(v).stem, v
        if name in out:
            raise ValueError(f"--data: benchmark name {name!r} given twice")
        out[name] = path
    return out


def check_count(flag: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise ValueError(f"{flag} must be >= {minimum}, got {value}")


def add_model_arguments(parser: argparse.ArgumentParser, **model: object) -> None:
    """The model options ``cord eval`` and ``cord analyze`` share with ``cord train``
    (``cord.models.options``): ``--model`` (``model``: its ``add_argument`` keywords, or
    ``{"group": g}`` to add it to a group instead), ``--long-audio``, ``--system-prompt``,
    ``--device``."""
    group = model.pop("group", parser)
    options.add_argument(group, "model", **model)
    for name in ("long_audio", "system_prompt", "device"):
        options.add_argument(parser, name)


def check_generation(args: argparse.Namespace) -> None:
    """The options shared by ``cord eval`` and ``cord analyze --model``: the model, the
    device and how answers are generated."""
    options.check_model(args.model, "--model", "tiny")
    check_count("--limit", args.limit, 1)
    check_count("--batch-size", args.batch_size, 1)
    check_count("--max-new-tokens", args.max_new_tokens, 1)
    if not args.temperature >= 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    options.check_device(args.device, "--device")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, required=True)
    parser.add_argument("--data", nargs="+", required=True, metavar="[NAME=]PATH",
                        help="benchmark file(s): JSONL/JSON/CSV/parquet or a saved dataset with "
                             "text/prompt, audio and answer/reference")
    parser.add_argument("--kind", choices=ANSWER_KINDS, default="auto",
                        help="how answers are scored: auto (letter references are multiple "
                             "choice, others math), choice or math")
    parser.add_argument("--choices", default="ABCD", help="option letters of multiple choice")
    parser.add_argument("--instruction", default=None, help="appended to both prompts")
    parser.add_argument("--limit", type=int, default=None, help="first N items per benchmark")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="most tokens per answer")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--name", default=None, help="method name in the table (default: model)")
    parser.add_argument("--base", default=None,
                        help="results.json of the base model: adds Δ and the gap reduction")
    parser.add_argument("--output", default="eval_results.json", help="JSON results file")
    parser.add_argument("--markdown", default=None, help="also write the table here")


def check_args(args: argparse.Namespace) -> dict[str, str]:
    """The benchmarks of ``args`` (name -> path), once every check that needs no model has
    passed; JSONL files are parsed here, so a malformed line is reported before the model
    loads."""
    data = parse_data_args(args.data)
    for name, path in data.items():
        if not Path(path).exists():
            raise FileNotFoundError(f"--data {name}={path}: no such file or folder; pass an "
                                    "existing JSONL/JSON/CSV/parquet file or saved dataset")
    if args.base and not Path(args.base).is_file():
        raise FileNotFoundError(f"--base {args.base}: no such file; pass the results.json that "
                                "`cord eval` wrote for the base model")
    check_generation(args)
    for path in data.values():
        if is_jsonl(path):
            read_jsonl(path)
    return data


def run(args: argparse.Namespace) -> int:
    data = check_args(args)
    # Local import, for start-up cost: torch, transformers and datasets, after the checks.
    from cord.eval.evaluate import run_checked

    return run_checked(args, data)
