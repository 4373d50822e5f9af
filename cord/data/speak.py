"""Speaking the texts of a dataset, making the audio side of a paired dataset (``cord synth``,
whose command line is :mod:`cord.data.synth_cli`).

Reads records with ``text`` (and ``id``) from JSONL/JSON/CSV/parquet or a saved dataset, speaks
each text (after spoken-form normalisation of math by default) and writes::

    OUT/audio/<id>.wav          one 16-bit WAV per record, at the engine's rate or --sample-rate
    OUT/paired.jsonl            the input records plus "audio": "audio/<id>.wav"
                                (relative to the JSONL, which is how load_paired resolves it)
                                and "spoken_text": what the engine was given

It is resumable: a WAV that already exists is kept unless the previous output JSONL shows it
was spoken from a different text (files are written to a temporary name and renamed, so an
interrupted run never leaves a truncated WAV behind). A change of engine or voice is not
detected: pass ``--overwrite`` then. Example::

    cord synth questions.jsonl --output-dir data/synth --engine espeak --voice en-us
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cord.data.spoken_math import to_spoken
from cord.data.tts import get_engine

__all__ = ["synthesize_dataset", "SynthReport", "audio_filename"]


@dataclass
class SynthReport:
    """What :func:`synthesize_dataset` did."""

    records: list[dict[str, Any]]  # the output records, in input order
    written: int  # WAVs synthesised in this call
    skipped: int  # WAVs that already existed and were kept
    audio_seconds: float  # duration of the WAVs written in this call
    jsonl_path: Path | None


def audio_filename(record_id: str) -> str:
    """A safe, unique file name for a record id: the id itself when it is made of
    ``[A-Za-z0-9._-]``, else a sanitised id plus a short hash so two ids never collide."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", record_id).strip(".") or "record"
    if safe != record_id:
        safe = f"{safe[:80]}-{hashlib.sha1(record_id.encode()).hexdigest()[:8]}"
    return f"{safe}.wav"


def _record_ids(records: Sequence[Mapping[str, Any]], id_key: str) -> list[str]:
    ids = [str(r[id_key]) if r.get(id_key) is not None else str(i) for i, r in enumerate(records)]
    seen: set[str] = set()
    for record_id in ids:
        if record_id in seen:
            raise ValueError(f"record ids must be unique, {record_id!r} appears more than once")
        seen.add(record_id)
    return ids


def _write_wav_atomic(path: Path, audio: Any, sample_rate: int) -> None:
    import soundfile as sf  # local imports, for start-up cost: `cord synth --help` skips them

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    sf.write(str(tmp), audio, sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def _previous_spoken_texts(jsonl_path: Path | None) -> dict[str, str]:
    """``id -> spoken_text`` from an earlier run's output JSONL (empty if there is none)."""
    if jsonl_path is None or not jsonl_path.is_file():
        return {}
    previous = {}
    with open(jsonl_path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # an unreadable line only means that record is not known
            if isinstance(record, dict) and "spoken_text" in record and "id" in record:
                previous[str(record["id"])] = record["spoken_text"]
    return previous


def synthesize_dataset(
    records: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    engine: Any = "espeak",
    *,
    spoken_math: bool = True,
    overwrite: bool = False,
    text_key: str = "text",
    id_key: str = "id",
    output_jsonl: str | os.PathLike | None = "paired.jsonl",
    sample_rate: int | None = None,
    progress: bool = True,
) -> SynthReport:
    """Speak every record's text into ``out_dir/audio/<id>.wav``.

    Args:
        records: dicts with ``text_key`` (and ``id_key``; the row number is the id otherwise).
        out_dir: output folder, created if needed.
        engine: a :class:`cord.data.tts.TTSEngine` or an engine name for
            :func:`cord.data.tts.get_engine`.
        spoken_math: normalise math to words first (:func:`cord.data.spoken_math.to_spoken`).
        overwrite: re-synthesise WAVs that exist (default: keep them, i.e. resume, unless the
            previous ``output_jsonl`` records a different spoken text for that id).
        output_jsonl: where to write the output records; relative paths are under ``out_dir``;
            None writes no file.
        sample_rate: write the WAVs at this rate (resampled); the engine's rate when None.
        progress: show a tqdm progress bar.

    Returns:
        a :class:`SynthReport`; each output record is the input record plus ``audio`` (the WAV
        path relative to the JSONL's folder, absolute when no JSONL is written) and
        ``spoken_text``.
    """
    if isinstance(engine, str):
        engine = get_engine(engine)
    if not hasattr(engine, "synthesize") or not hasattr(engine, "sample_rate"):
        raise TypeError(f"engine must be a TTSEngine or an engine name, got {engine!r}")
    if sample_rate is not None and (
        isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0
    ):
        raise ValueError(f"sample_rate must be a positive int or None, got {sample_rate!r}")
    out_rate = sample_rate or engine.sample_rate
    records = list(records)
    if not records:
        raise ValueError("records is empty: nothing to synthesise")
    out_dir = Path(out_dir)
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    jsonl_path = None if output_jsonl is None else out_dir / output_jsonl
    link_base = jsonl_path.parent if jsonl_path is not None else None

    ids = _record_ids(records, id_key)
    for record, record_id in zip(records, ids, strict=True):  # fail before any work on a bad record
        text = record.get(text_key)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"record {record_id!r}: {text_key!r} is missing or empty ({text!r})")

    from tqdm.auto import tqdm

    from cord.data.paired import resample  # datasets and scipy: slow to import, so local

    previous = _previous_spoken_texts(jsonl_path)
    written = skipped = 0
    seconds = 0.0
    outputs = []
    bar = tqdm(
        zip(records, ids, strict=True),
        total=len(records),
        desc="synth",
        unit="rec",
        disable=not progress,
    )
    for record, record_id in bar:
        spoken = to_spoken(record[text_key]) if spoken_math else record[text_key]
        wav_path = audio_dir / audio_filename(record_id)
        # Resume: keep a WAV unless asked to redo it or the text it was made from changed.
        stale = previous.get(record_id, spoken) != spoken
        if wav_path.exists() and not overwrite and not stale:
            skipped += 1
        else:
            audio = engine.synthesize(spoken)
            if len(audio) == 0:
                raise ValueError(f"record {record_id!r}: the TTS engine produced no audio")
            audio = resample(audio, engine.sample_rate, out_rate)
            _write_wav_atomic(wav_path, audio, out_rate)
            written += 1
            seconds += len(audio) / out_rate
        bar.set_postfix(written=written, skipped=skipped, refresh=False)
        audio_ref = (
            os.path.relpath(wav_path, link_base)
            if link_base is not None
            else str(wav_path.resolve())
        )
        outputs.append({**record, "audio": Path(audio_ref).as_posix(), "spoken_text": spoken})

    if jsonl_path is not None:
        jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = jsonl_path.with_name(f".{jsonl_path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for out in outputs:
                f.write(json.dumps(out, ensure_ascii=False, default=str) + "\n")
        os.replace(tmp, jsonl_path)
    return SynthReport(outputs, written, skipped, seconds, jsonl_path)
