"""The ``cord`` command. Each subcommand lives in its own module, imported only when that
subcommand runs, which defines ``add_arguments(parser)`` and ``run(args) -> int``. That module
imports nothing heavy at its top (torch, transformers, datasets come inside ``run``, after the
checks), so ``--help`` and a user error answer at once (tests/test_cli_start.py).

A user error (a bad option, a missing file) prints one line naming the problem and its fix and
exits with status 2; ``--debug`` shows the traceback instead. So does a module of the
``[train]`` extra that is not installed (after ``pip install .``): the line says what to
install.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys

from cord import __version__

SUBCOMMANDS = {
    "train": ("cord.train.cli", "train a model with CORD or one of the paper's baselines"),
    "synth": ("cord.data.synth_cli", "synthesise the audio side of a paired dataset from its text"),
    "eval": ("cord.eval.evaluate_cli",
             "audio vs text accuracy, the modality gap and its reduction"),
    "analyze": ("cord.eval.analyze_cli", "the paper's KL analysis of audio rollouts, as plots"),
    "demo": ("cord.demo.cli", "CORD closing a real audio-text gap on a tiny model, on the CPU"),
}

#: Top-level modules of the ``[train]`` extra (and what it pulls in): without them a
#: subcommand cannot run, which is an install to do, not a bug (tests/test_cli_start.py checks
#: the list against pyproject.toml).
TRAIN_EXTRA_MODULES = frozenset({
    "transformers", "accelerate", "datasets", "tokenizers", "math_verify", "espeakng_loader",
    "soundfile", "matplotlib", "yaml", "tqdm", "tensorboard", "scipy", "rich", "numpy",
    "pyarrow", "huggingface_hub", "safetensors",
})
TRAIN_EXTRA_HINT = 'pip install "cord-kernels[train]"'

#: What a user can get wrong; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError)
_KEY_VALUE = re.compile(r"^[A-Za-z_][\w.-]*=")
_DEBUG_HELP = "show the full traceback of an error"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after every option whose help does not already say it, except
    where there is nothing to show (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``command``'s module is imported (heavy imports stay lazy)."""
    parser = argparse.ArgumentParser(
        prog="cord", description="CORD: on-policy cross-modal self-distillation.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    parser.add_argument("--version", action="version", version=f"cord {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=HelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=_DEBUG_HELP)
        p.set_defaults(_module=module)
        if name == command:
            # Local import, for start-up cost: only the chosen subcommand's module loads.
            importlib.import_module(module).add_arguments(p)
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[command]


def _closest(flag: str, choices: set[str]) -> str | None:
    close = difflib.get_close_matches(flag, sorted(choices), n=1)
    return close[0] if close else None


def _did_you_mean(flag: str, choices: set[str]) -> str:
    close = _closest(flag, choices)
    return f" (did you mean {close}?)" if close else ""


def _normalize(argv: list[str], known: set[str], own: set[str], command: str) -> list[str]:
    """For a command that takes ``key=value`` overrides: ``--key value`` and ``--key=value``
    of an option the parser does not define become ``key=value`` too, so all three spellings
    work and an unknown key is reported by the config, by name, with a suggestion. A typo of
    one of the command's ``own`` flags (``--confg``) is reported here: the config cannot
    suggest a flag that is not one of its keys."""
    out, i = [], 0
    while i < len(argv):
        item = argv[i]
        if item.startswith("--") and item != "--" and item.split("=", 1)[0] not in known:
            flag = item.split("=", 1)[0]
            if _closest(flag, known) in own:
                raise ValueError(f"unknown option {flag}{_did_you_mean(flag, known)}; "
                                 f"`cord {command} --help` lists the options")
            key, sep, value = item[2:].partition("=")
            if not sep:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise ValueError(f"option --{key} needs a value: --{key} VALUE or "
                                     f"{key}=VALUE")
                value, i = argv[i + 1], i + 1
            item = f"{key.replace('-', '_')}={value}"
        out.append(item)
        i += 1
    return out


def _check_flags(argv: list[str], known: set[str], command: str) -> None:
    """Unknown ``--flags`` of a command without overrides, with the closest flag it has
    (argparse says only "unrecognized arguments", after its other checks)."""
    for item in argv:
        flag = item.split("=", 1)[0]
        if flag == "--":  # positionals only from here on
            return
        if not flag.startswith("--") or flag in known:
            continue
        if any(k.startswith(flag) for k in known):  # argparse's unique-prefix abbreviation
            continue
        raise ValueError(f"unknown option {flag}{_did_you_mean(flag, known)}; "
                         f"`cord {command} --help` lists the options")


def _missing_extra(err: ModuleNotFoundError) -> bool:
    return (err.name or "").split(".")[0] in TRAIN_EXTRA_MODULES


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    debug = "--debug" in argv
    if command is not None and command not in SUBCOMMANDS and not debug:
        # argparse's "invalid choice" lists the commands but suggests none
        print(f"cord: error: unknown command {command!r}{_did_you_mean(command, set(SUBCOMMANDS))}"
              f"; `cord --help` lists the commands", file=sys.stderr)
        return 2
    try:
        parser = build_parser(command if command in SUBCOMMANDS else None)
        if command in SUBCOMMANDS:
            sub = _subparser(parser, command)
            known = {s for a in sub._actions for s in a.option_strings}
            if any(a.dest == "overrides" for a in sub._actions):
                own = {s for a in sub._actions if not a.dest.startswith("option:")
                       for s in a.option_strings}
                argv = _normalize(argv, known, own, command)
            else:
                _check_flags(argv[argv.index(command) + 1:], known, command)
        args, extras = parser.parse_known_args(argv)
        if extras:  # key=value after an option: argparse fills a positional only once
            bad = [e for e in extras if not _KEY_VALUE.match(e)]
            if bad or not hasattr(args, "overrides"):
                parser.error(f"unrecognized arguments: {' '.join(bad or extras)}")
            args.overrides = list(args.overrides or []) + extras
        return int(importlib.import_module(args._module).run(args) or 0)
    except ModuleNotFoundError as err:
        if debug or not _missing_extra(err):
            raise
        print(f"cord: error: {err}: the cord command needs the training extras: "
              f"{TRAIN_EXTRA_HINT}", file=sys.stderr)
        return 2
    except USER_ERRORS as err:
        if debug:
            raise
        message = " ".join(str(err).split())  # one line, whatever the exception held
        print(f"cord {command}: error: {message} (--debug shows the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
