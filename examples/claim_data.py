"""The claim demo's column arithmetic as paired files for ``cord train``.

Writes ``OUT/train.jsonl`` (questions of the demo's distillation pool) and ``OUT/eval.jsonl``
(its validation questions, disjoint from the pool), spoken as the shipped claim base
(``cord/demo/bases/base-dee61b9c235d``) learnt to hear them (eSpeak NG word slots,
``cord.demo.speech``), each clip a WAV file under ``OUT/audio/``. The answers are the final
numbers, so ``cord train``'s evaluation (``eval_dataset``) scores them like ``cord eval``.

    python examples/claim_data.py runs/claim_data          # about 10 s; then
    cord train --config examples/configs/collapse_guard.yaml
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import soundfile as sf

from cord.demo.claim.data import ClaimTaskConfig, make_claim_splits
from cord.demo.speech import SAMPLING_RATE, SlottedSpeech

#: The configuration key of the shipped base these questions are drawn for.
BASE_KEY = "dee61b9c235d"


def write_claim_data(out: str | Path, *, train: int = 400, eval: int = 100) -> dict[str, Path]:
    """Writes the two files (and their audio) into ``out``; returns ``{"train", "eval"}``."""
    config = ClaimTaskConfig()
    if config.key() != BASE_KEY:
        raise RuntimeError(f"the claim task's configuration changed (key {config.key()}, the "
                           f"shipped base is {BASE_KEY}): its questions no longer match the base")
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    splits = make_claim_splits(config)
    speech = SlottedSpeech(slot_seconds=config.slot_seconds, rate=config.tts_rate)
    paths = {}
    for name, records in (("train", splits["pool"][:train]), ("eval", splits["val"][:eval])):
        lines = []
        for r in records:
            clip = out / "audio" / f"{r['id']}.wav"
            if not clip.is_file():
                sf.write(clip, speech.speak(r["text"]), SAMPLING_RATE)
            lines.append(json.dumps({"id": r["id"], "text": r["text"],
                                     "audio": f"audio/{clip.name}", "answer": r["answer"]}))
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("\n".join(lines) + "\n")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="runs/claim_data", help="output folder")
    parser.add_argument("--train", type=int, default=400, help="training questions")
    parser.add_argument("--eval", type=int, default=100, help="evaluation questions")
    args = parser.parse_args(argv)
    for name, path in write_claim_data(args.out, train=args.train, eval=args.eval).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
