"""Pre-train a claim-task base for one answer format and measure every precondition of the
claim test on it, with no comparison run (issue 38 C: a task in the paper's regime is chosen on
the base alone, before any post-training).

    python -m scripts.claim_base_probe tens_first docs/claim_candidates/tens_first.json
    python -m scripts.claim_base_probe tens_first OUT.json --set audio_qa=250

Writes the configuration, its base key, the six precondition values with their pre-registered
bounds, the histogram of first-error positions and ``teacher_at_error`` by position band. The
base is cached like the demo's (``--cache-dir``), so a second call only measures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cord.demo import jobs as J
from cord.demo.base import pretrained_base
from cord.demo.claim.data import ClaimTaskConfig
from cord.demo.claim.positions import position_histogram
from cord.demo.claim.run import CLAIM_POST, base_measures
from cord.demo.claim.task import ClaimTask
from cord.demo.claim.verdict import preconditions


def overrides(pairs: list[str]) -> dict[str, int]:
    """``["audio_qa=250"]`` -> ``{"audio_qa": 250}``, checked against the config's int fields."""
    fields = vars(ClaimTaskConfig())
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in fields or type(fields[name]) is not int:
            ints = sorted(n for n, v in fields.items() if type(v) is int)
            raise SystemExit(f"--set expects FIELD=INT with FIELD one of {ints}, got {pair!r}")
        out[name] = int(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("answer_format", help="ClaimTaskConfig.answer_format (restate, tens_first)")
    parser.add_argument("out", type=Path, help="the JSON file to write")
    parser.add_argument("--cache-dir", default=None, help="where bases are cached")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a ClaimTaskConfig field (an int), e.g. audio_qa=250")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    changed = overrides(args.set)
    config = ClaimTaskConfig(answer_format=args.answer_format, **changed)
    task = ClaimTask(config)
    splits = J.task_splits(task, args.cache_dir)
    base, path, source = pretrained_base(task, splits, cache_dir=args.cache_dir, progress=True)
    measured = base_measures(base, splits, config, CLAIM_POST)
    result = {
        "answer_format": args.answer_format, "overrides": changed,
        "key": config.key(), "base": source,
        "preconditions": preconditions(measured["values"]),
        "first_error_positions": position_histogram(measured["first_error_positions"]),
        "teacher_at_error": measured["teacher_at_error"],
        "seconds": time.perf_counter() - t0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, p in result["preconditions"].items():
        print(f"{name:22s} {p['value']:.3f}  {p['bound']:14s} {'ok' if p['ok'] else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
