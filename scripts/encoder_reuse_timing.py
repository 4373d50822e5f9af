"""Step time of a GRPO step with and without the shared audio-encoder pass (issue 19).

    python scripts/encoder_reuse_timing.py                     # the tiny Qwen2-Audio
    python scripts/encoder_reuse_timing.py --real-encoder --encoder-layers 2

``--real-encoder`` gives the tiny model Qwen2-Audio-7B's encoder width (d_model 1280, 20 heads,
128 mel bins, 30 s windows = 1500 encoder frames); ``--encoder-layers`` sets its depth (the real
one has 32: on a CPU, time a few and scale). Each mode runs ``--steps`` GRPO steps of one prompt
with ``--generations`` copies and reports the median step time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-encoder", action="store_true")
    parser.add_argument("--encoder-layers", type=int, default=1)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the clip")
    args = parser.parse_args()

    from cord.config import CordConfig
    from cord.models.adapter import Qwen2AudioAdapter
    from cord.models.tiny import build_tiny_qwen2_audio
    from cord.train.trainer import train

    size = dict(audio_layers=args.encoder_layers)
    if args.real_encoder:
        size.update(audio_d_model=1280, audio_heads=20, num_mel_bins=128, hop_length=160,
                    chunk_seconds=30)
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(int(16000 * args.seconds))).astype(np.float32)
    data = [{"id": "q0", "text": "What is 1 + 2?", "answer": "3",
             "audio": {"array": wave, "sampling_rate": 16000}}]
    times = {}
    for share in (False, True):
        model, processor = build_tiny_qwen2_audio(seed=0, **size)
        adapter = Qwen2AudioAdapter(model, processor)
        adapter.share_audio_encoder = share
        with tempfile.TemporaryDirectory() as out:
            train(CordConfig(objective="grpo", num_generations=args.generations,
                             max_steps=args.steps, max_completion_length=4, report_to=["none"],
                             disable_tqdm=True, logging_steps=1, output_dir=out, save_steps=0),
                  adapter=adapter, train_dataset=data * args.steps)
            lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
            steps = [json.loads(x)["step_seconds"] for x in lines]  # the trainer's own timing
        times[share] = statistics.median(steps[1:] if len(steps) > 1 else steps)
        print(f"share_audio_encoder={share}: median step {times[share]:.3f} s "
              f"(steps {', '.join(f'{s:.3f}' for s in steps)})", flush=True)
    print(f"speed-up {times[False] / times[True]:.2f}x with {args.generations} copies")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
