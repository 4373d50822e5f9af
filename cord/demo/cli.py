"""``cord demo``'s options and entry point. Light at import (no torch): ``cord demo --help``
and option errors answer at once; the demo's modules are imported in :func:`run`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cord.demo.methods import DEFAULT_METHODS, METHODS

TASKS = ("claim", "operands")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=TASKS, default="claim",
                        help="claim (default): an imperfect text teacher, transfer to a task "
                             "no method post-trains on and retention of an audio skill, where "
                             "the paper makes its claim; operands: the earlier in-domain test "
                             "with a perfect teacher")
    parser.add_argument("--reevaluate", metavar="DIR", default=None,
                        help="re-score the saved models of a claim-demo run in DIR on fresh "
                             "held-out items drawn from --eval-seed, and print the tables")
    parser.add_argument("--eval-seed", type=int, default=1,
                        help="with --reevaluate: the seed of the fresh held-out items")
    parser.add_argument("--resume", metavar="DIR", default=None,
                        help="finish the claim-demo run in DIR that stopped (crash, kill, "
                             "timeout) with the options it was started with: jobs whose "
                             "results DIR/jobs/ holds are read back, not retrained")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="a smoke test of the whole pipeline on a tiny budget (small task, "
                           "4 steps, one seed; under a minute): its numbers are not a result "
                           "and it prints no verdict")
    size.add_argument("--full", action="store_true",
                      help="claim task (about 50 min on 2 cores, estimated): the default "
                           "comparison plus GRPO, GRPO + OPD, α = β = 3 and the text-side-"
                           "fixed variants at the shared rate, the declared secondary "
                           "analysis at the paper's rate 3e-5 (3 seeds) and every compared "
                           "method at the grid's other rates (the sensitivity analysis); "
                           "operands task: the learning-rate grid, 5 seeds, every method "
                           "again at 4x the steps")
    size.add_argument("--long", action="store_true",
                      help="operands task only: SFT, FKL, GRPO + OPD and CORD at 4x the steps, "
                           "learning rates chosen by the same rule at that budget, 3 seeds")
    parser.add_argument("--rates-only", action="store_true",
                        help="operands task, with --full or --long: run only the learning-rate "
                             "grid and write learning_rates.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="post-training seeds (default: 0 1 2; 0..4 with --task operands "
                             "--full; 0 with --quick)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None,
                        help="methods to compare (claim task default: sft fkl cord and the "
                             "controls sft_gold sft_gold_transfer; operands task default: "
                             f"{' '.join(DEFAULT_METHODS)})")
    parser.add_argument("--output-dir", default="cord_demo",
                        help="where results.json, README.md, the tables, plots and models go")
    parser.add_argument("--cache-dir", default=None,
                        help="speech clips and pre-trained bases (default $CORD_CACHE/demo, "
                             "else ~/.cache/cord/demo); printed once at the start")
    parser.add_argument("--refresh", action="store_true",
                        help="pre-train the base again even if it is cached")
    parser.add_argument("--no-save-models", action="store_true",
                        help="do not write the base and seed-0 models and the held-out set")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="post-training jobs in parallel, one process each (the tables do "
                             "not depend on it)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: the model is tiny, and one thread does not "
                             "stall when other processes share the cores)")


def check(args: argparse.Namespace) -> None:
    """Option combinations the demo cannot run and folders that lack what ``--resume`` or
    ``--reevaluate`` needs, refused before anything is imported or built: a ``ValueError`` or
    ``FileNotFoundError``, which ``cord`` prints as one ``error:`` line with exit status 2."""
    from cord.demo.claim.files import check_run_dir

    if args.task == "claim" and (args.long or args.rates_only):
        raise ValueError("--long and --rates-only apply to --task operands only (the claim "
                         "task fixes its shared rate inside every run)")
    if args.resume and (args.reevaluate or args.quick or args.full or args.long):
        raise ValueError("--resume DIR takes the mode and options of the run in DIR; give it "
                         "alone (with --workers or --cache-dir)")
    for flag, folder in (("--resume", args.resume), ("--reevaluate", args.reevaluate)):
        if folder:
            lacks = check_run_dir(folder, for_reevaluate=flag == "--reevaluate")
            if lacks:
                raise FileNotFoundError(f"{flag} {folder}: {lacks}")


def run(args: argparse.Namespace) -> int:
    check(args)
    if args.quick and args.task == "claim":  # the first line: what a quick run is
        from cord.demo.claim.files import QUICK_LINE

        print(QUICK_LINE, flush=True)
    import torch

    from cord.demo.claim import report as CR
    from cord.demo.claim import run as C
    from cord.demo.jobs import quiet_libraries
    from cord.demo.operands import report as R
    from cord.demo.operands.run import run_demo

    quiet_libraries()
    mode = ("quick" if args.quick else "full" if args.full else "long" if args.long
            else "default")
    command = "cord " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["demo"] else "cord demo"
    if args.resume:
        results = C.resume_claim_demo(args.resume, cache_dir=args.cache_dir,
                                      workers=args.workers)
        print()
        print(CR.console_summary(results))
        print(f"wrote {Path(args.resume)}/: README.md, results.json and the plots")
        return 0
    if args.reevaluate:
        result = C.reevaluate(args.reevaluate, args.eval_seed, cache_dir=args.cache_dir)
        print(f"verdict: {result['verdict']['a']}. {result['verdict_sentence']['a']}")
        print(f"reason: {result['verdict_reason']['a']}")
        print(CR.summary_table(result["summary"]["a"]))
        print(CR.paired_table(result["paired"]["a"]))
        print(f"wrote {Path(args.reevaluate) / f'reevaluate-{args.eval_seed}'}/")
        return 0
    if args.task == "claim":
        torch.set_num_threads(args.threads)
        results = C.run_claim_demo(
            mode=mode, seeds=args.seeds, methods=args.methods, output_dir=args.output_dir,
            cache_dir=args.cache_dir, refresh=args.refresh, save_models=not args.no_save_models,
            command=command, workers=args.workers)
        print()
        print(CR.console_summary(results))
        print(f"wrote {Path(args.output_dir)}/: README.md, results.json and the plots")
        return 0
    results = run_demo(
        mode=mode, seeds=args.seeds, methods=args.methods, output_dir=args.output_dir,
        cache_dir=args.cache_dir, refresh=args.refresh, save_models=not args.no_save_models,
        command="cord " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["demo"] else "cord demo",
        threads=args.threads, rates_only=args.rates_only, workers=args.workers,
    )
    print()
    if args.rates_only:
        print(json.dumps(results["learning_rate_grid"]["selected"], indent=1))
        print(f"wrote {Path(args.output_dir) / 'learning_rates.json'}")
        return 0
    print(R.console_summary(results))
    print(f"wrote {Path(args.output_dir)}/: README.md, results.json, the tables and the plots")
    return 0
