"""``cord train``: train a model with CORD or one of the paper's baselines.

    cord train --config examples/configs/cord_tiny.yaml max_steps=20 learning_rate=1e-4
    cord train objective=opd max_steps=5                # tiny model, synthesized arithmetic
    accelerate launch --config_file examples/accelerate/ddp.yaml -m cord.cli train --config x.yaml

Without ``--config`` every option has its default (``model=tiny``, ``dataset=arithmetic``), so
the command runs on the CPU as is. Options are the fields of :class:`cord.config.CordConfig`.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="YAML file of options (see examples/configs)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="option overrides, values parsed as YAML (max_steps=10)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from cord.config import CordConfig

    try:
        config = CordConfig.from_yaml(args.config, list(args.overrides))
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise SystemExit(f"cord train: {err}") from None
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    import torch

    if config.model == "tiny" and not torch.cuda.is_available():
        # A tiny model gains nothing from intra-op threads on a CPU; they only contend.
        torch.set_num_threads(1)
    from cord.train.trainer import train

    metrics = train(config)
    if int(os.environ.get("RANK", "0")) != 0:  # one summary line per run, not per process
        return 0
    shown = {k: v for k, v in metrics.items() if not isinstance(v, bool)}
    print("final: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in shown.items()))
    return 0
