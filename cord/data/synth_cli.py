"""``cord synth``'s command line: speak the texts of a dataset (:mod:`cord.data.speak`).

    cord synth questions.jsonl --output-dir data/synth --engine espeak --voice en-us
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from cord.data.sources import read_records
from cord.data.speak import synthesize_dataset
from cord.data.tts import get_engine

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        help="paired records with a text column: .jsonl/.csv/.parquet or a saved dataset folder",
    )
    parser.add_argument("-o", "--output-dir", required=True, help="where audio/ and the JSONL go")
    parser.add_argument(
        "--output-jsonl", default=None, help="output records (default: OUTPUT_DIR/paired.jsonl)"
    )
    parser.add_argument("--engine", choices=("espeak", "kokoro"), default="espeak",
                        help="TTS engine: espeak (eSpeak NG, offline) or kokoro (local weights)")
    parser.add_argument(
        "--voice",
        default=None,
        help="espeak: a voice name (default en-us); kokoro: a local .pt voice file",
    )
    parser.add_argument("--rate", type=int, default=175, help="espeak words per minute")
    parser.add_argument("--kokoro-model", default=None, help="local kokoro-v1_0.pth")
    parser.add_argument("--kokoro-config", default=None, help="local Kokoro config.json")
    parser.add_argument("--kokoro-lang", default="a", help="Kokoro language code (a = US English)")
    parser.add_argument(
        "--spoken-math",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read LaTeX and math symbols aloud as words",
    )
    parser.add_argument(
        "--sample-rate",
        type=int,
        default=None,
        help="resample the WAVs to this rate, e.g. 16000 (default: the engine's own rate)",
    )
    parser.add_argument("--text-column", default="text", help="column holding the text to speak")
    parser.add_argument("--id-column", default="id",
                        help="column holding the record ids (WAV names); the row number if absent")
    parser.add_argument("--limit", type=int, default=None, help="only the first N records")
    parser.add_argument("--overwrite", action="store_true", help="re-synthesise existing WAVs")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _build_engine(args: argparse.Namespace) -> Any:
    if args.engine == "espeak":
        return get_engine("espeak", voice=args.voice or "en-us", rate=args.rate)
    return get_engine(
        "kokoro",
        model_path=args.kokoro_model,
        config_path=args.kokoro_config,
        voice=args.voice,
        lang_code=args.kokoro_lang,
    )


def run(args: argparse.Namespace) -> int:
    if not Path(args.input).exists():
        raise FileNotFoundError(
            f"input {args.input!r} does not exist: pass a .jsonl/.json/.csv/.parquet file or a "
            "saved dataset folder with a text column")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    records = read_records(args.input)
    if args.limit is not None:
        records = records[: args.limit]
    engine = _build_engine(args)
    output_jsonl = Path(args.output_jsonl).resolve() if args.output_jsonl else Path("paired.jsonl")
    start = time.perf_counter()
    report = synthesize_dataset(
        records,
        args.output_dir,
        engine,
        spoken_math=args.spoken_math,
        overwrite=args.overwrite,
        text_key=args.text_column,
        id_key=args.id_column,
        output_jsonl=output_jsonl,
        sample_rate=args.sample_rate,
        progress=not args.no_progress,
    )
    elapsed = time.perf_counter() - start
    print(
        f"synth: {report.written} written, {report.skipped} kept, "
        f"{report.audio_seconds:.1f} s of audio in {elapsed:.1f} s -> {report.jsonl_path}"
    )
    return 0
