"""Side by side, in one process: fused_linear_distill_loss for each divergence against the
4-GEMM floor and TRL's ChunkedDivergenceFunction (and Liger's LigerFusedLinearJSDLoss) at
SPEC section 3's CPU shape. Prints a markdown table; fwd+bwd wall time, median of the rounds.

    python -m bench.distill_compare                      # N=1024, H=896, V=151936, fp32
    python -m bench.distill_compare --tokens 256 --rounds 3 --no-liger

Every provider builds its closure from the same seeded case (``bench.inputs``), and the
order is interleaved per round, so a machine whose load drifts affects all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.config import QWEN2_0_5B_HIDDEN, QWEN2_VOCAB
from bench.inputs import make_hidden_case
from bench.measure import run_once
from bench.providers import DISTILL_BETA, FUSED_PROVIDERS


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=QWEN2_0_5B_HIDDEN)
    ap.add_argument("--vocab", type=int, default=QWEN2_VOCAB)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-liger", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device("cpu")
    case = make_hidden_case(args.tokens, args.vocab, args.hidden, dtype=torch.float32,
                            device=device)
    leaves = case.leaves()
    runs: dict[tuple[str, str], list[float]] = {}
    jobs = []
    for div in DISTILL_BETA:
        for p in FUSED_PROVIDERS[f"fused_linear_distill_loss[{div}]"]:
            if p.role == "naive":
                continue  # materialised logits: pytest bench/ has it, this table is the peers
            if p.role == "floor" and div != "reverse_kl":
                continue  # the floor does not depend on the divergence
            if "liger" in p.name and args.no_liger:
                continue
            if p.unavailable(device):
                continue
            jobs.append((div if p.role != "floor" else "-", p.name, p.build(case)))
    for _ in range(args.rounds):
        for div, name, closure in jobs:
            t0 = time.perf_counter()
            run_once(closure, leaves, "fwd+bwd", device)
            runs.setdefault((div, name), []).append(time.perf_counter() - t0)
            for t in leaves:
                t.grad = None
    floor = statistics.median(next(v for (d, _), v in runs.items() if d == "-"))
    print(f"fwd+bwd, N={args.tokens} (valid {int(case.mask.sum())}), H={args.hidden}, "
          f"V={args.vocab}, fp32, {torch.get_num_threads()} threads, median of {args.rounds}")
    print("| divergence | provider | time (s) | x floor |")
    print("|---|---|---|---|")
    for (div, name), times in runs.items():
        t = statistics.median(times)
        print(f"| {div} | {name} | {t:.2f} | {t / floor:.2f} |")


if __name__ == "__main__":
    main()
