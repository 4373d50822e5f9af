"""The ``cord`` command. Each subcommand lives in its own module, imported only when that
subcommand runs, which defines ``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "train": ("cord.train.cli", "train a model with CORD or one of the paper's baselines"),
    "synth": ("cord.data.synth", "synthesise the audio side of a paired dataset from its text"),
    "eval": ("cord.eval.evaluate", "audio vs text accuracy, the modality gap and its reduction"),
    "analyze": ("cord.eval.analyze", "the paper's KL analysis of audio rollouts, as plots"),
    "demo": ("cord.demo.demo", "CORD closing a real audio-text gap on a tiny model, on the CPU"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``command``'s module is imported (heavy imports stay lazy)."""
    parser = argparse.ArgumentParser(
        prog="cord", description="CORD: on-policy cross-modal self-distillation."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in SUBCOMMANDS else None).parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
