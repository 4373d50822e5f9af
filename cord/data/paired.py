"""Paired audio/text data: the prompts CORD trains on.

A paired record says the same thing twice, once as text and once as speech::

    {"id": "q1", "text": "What is 7 + 5?", "audio": "audio/q1.wav", "answer": "12"}

``audio`` is a file path (read with soundfile; relative paths are resolved against the data
file's folder, then the working directory) or ``{"array": [...], "sampling_rate": 22050}``
(or a datasets ``Audio`` value, ``{"path": ..., "bytes": ...}``). ``answer`` is optional: the
paper's reward compares the audio answer with the model's own text answer, not a gold one.

:func:`load_paired` reads JSONL/JSON, CSV, parquet, a folder written by
``Dataset.save_to_disk``, a ``datasets.Dataset`` or a list of dicts, and returns a
``datasets.Dataset`` whose ``audio`` column is mono float32 at the model's sampling rate::

    ds = load_paired("paired.jsonl", sampling_rate=16_000)
    loader = DataLoader(ds, batch_size=4, collate_fn=collate_paired)
    batch = next(iter(loader))             # a PairedBatch: ids, texts, audios, sampling_rate

Small synthetic tasks are in :mod:`cord.data.synthetic`; ``cord synth`` adds audio to any set.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import soundfile as sf
from datasets import Features, List, Value
from scipy.signal import resample_poly
from tqdm.auto import tqdm

from cord.data.records import MalformedLine
from cord.data.sources import from_records, is_record_list, open_dataset, read_records

__all__ = [
    "AudioLimit",
    "load_paired",
    "read_records",
    "load_audio",
    "resample",
    "PairedExample",
    "PairedBatch",
    "collate_paired",
    "audio_of",
    "wav_truncation",
    "write_paired",
]

# ---------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """``(num_samples,)`` float32 audio from ``orig_sr`` to ``target_sr`` Hz (polyphase filter,
    ``scipy.signal.resample_poly``; a copy-free no-op when the rates match)."""
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sampling rates must be > 0, got {orig_sr} -> {target_sr}")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be a 1-D waveform, got shape {audio.shape}")
    if orig_sr == target_sr:
        return audio
    g = gcd(int(orig_sr), int(target_sr))
    return resample_poly(audio, target_sr // g, orig_sr // g).astype(np.float32)


def _to_mono(audio: np.ndarray, record_id: str) -> np.ndarray:
    if audio.ndim == 1:
        return audio
    if audio.ndim == 2:  # channels on the shorter axis: (frames, channels) or (channels, frames)
        return audio.mean(axis=int(np.argmin(audio.shape)))
    raise ValueError(
        f"record {record_id!r}: audio array must be 1-D (samples) or 2-D (samples x channels), "
        f"got shape {audio.shape}"
    )


def _resolve(path: str, base_dir: Path | None) -> Path:
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and base_dir is not None and (base_dir / candidate).exists():
        return base_dir / candidate
    return candidate


def wav_truncation(source: Any) -> str | None:
    """Why a RIFF/WAVE file (a path or a binary file object) is truncated, or None.

    libsndfile reads a WAV whose data chunk was cut short without complaint, returning the
    samples that are there; the header still says how many bytes there should be."""
    own = isinstance(source, (str, os.PathLike))
    fh = open(source, "rb") if own else source
    try:
        start = fh.tell()
        size = fh.seek(0, io.SEEK_END) - start
        fh.seek(start)
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            chunk = fh.read(8)
            declared = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                # 0 and 0xFFFFFFFF are what streaming writers leave when the size is unknown
                if declared not in (0, 0xFFFFFFFF) and pos + 8 + declared > size:
                    return (f"truncated: the header declares {declared} bytes of samples, the "
                            f"file holds {size - pos - 8}")
                return None
            pos += 8 + declared + (declared & 1)  # chunks are padded to an even size
            fh.seek(start + pos)
        return None
    finally:
        if own:
            fh.close()
        else:
            fh.seek(start)


def _read_file(source: Any, record_id: str, what: str) -> tuple[np.ndarray, int]:
    try:
        audio, sr = sf.read(source, dtype="float32", always_2d=True)
        truncated = wav_truncation(source)
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError or OSError
        raise ValueError(f"record {record_id!r}: cannot read audio {what}: {e}") from e
    if truncated:
        raise ValueError(f"record {record_id!r}: audio {what} is {truncated}")
    return audio.mean(axis=1), int(sr)


def load_audio(
    value: Any, *, record_id: str = "?", base_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, int]:
    """Decode one record's ``audio`` value into ``((num_samples,) float32 mono, sampling_rate)``.

    ``value`` is a path, ``{"array", "sampling_rate"}`` or ``{"path", "bytes"}``; errors name
    ``record_id``.
    """
    base = Path(base_dir) if base_dir is not None else None
    if isinstance(value, (str, os.PathLike)):
        path = _resolve(os.fspath(value), base)
        if not path.is_file():
            raise ValueError(f"record {record_id!r}: audio file {str(path)!r} does not exist")
        audio, sr = _read_file(str(path), record_id, f"file {str(path)!r}")
    elif isinstance(value, Mapping) and value.get("array") is not None:
        sr = value.get("sampling_rate")
        if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
            raise ValueError(
                f"record {record_id!r}: audio dict needs a positive int 'sampling_rate', got {sr!r}"
            )
        array = np.asarray(value["array"])
        if not (np.issubdtype(array.dtype, np.number) and array.size):
            raise ValueError(
                f"record {record_id!r}: audio 'array' must be a non-empty number array"
            )
        if np.issubdtype(array.dtype, np.integer) and isinstance(value["array"], np.ndarray):
            array = array / float(np.iinfo(array.dtype).max + 1)  # PCM to [-1, 1)
        audio, sr = _to_mono(array.astype(np.float32), record_id), int(sr)
    elif isinstance(value, Mapping) and (value.get("bytes") or value.get("path")):
        if value.get("bytes"):
            audio, sr = _read_file(io.BytesIO(value["bytes"]), record_id, "bytes")
        else:
            return load_audio(value["path"], record_id=record_id, base_dir=base_dir)
    elif value is None:
        raise ValueError(f"record {record_id!r}: audio is missing")
    else:
        raise ValueError(
            f"record {record_id!r}: audio must be a file path or a dict with 'array' and "
            f"'sampling_rate', got {type(value).__name__}"
        )
    if audio.size == 0:
        raise ValueError(f"record {record_id!r}: audio is empty (0 samples)")
    if not np.isfinite(audio).all():
        raise ValueError(f"record {record_id!r}: audio contains NaN or Inf samples")
    return audio, sr


# ---------------------------------------------------------------------------------------------
# load_paired
# ---------------------------------------------------------------------------------------------


def output_features(dataset: datasets.Dataset, has_answer: bool) -> datasets.Features:
    features = dict(dataset.features)
    features["id"] = Value("string")
    features["text"] = Value("string")
    features["audio"] = {"array": List(Value("float32")), "sampling_rate": Value("int32")}
    if has_answer:
        features["answer"] = Value("string")
    return Features(features)


def open_encoded(source: Any, sampling_rate: int, require_answer: bool,
                 malformed: list[MalformedLine] | None = None,
                 audio_limit: AudioLimit | None = None
                 ) -> tuple[datasets.Dataset, RecordDecoder, bool]:
    """A file or saved dataset with its audio still encoded, checked for columns and records,
    and the decoder of its rows: ``(dataset, decoder, has_answer)``. ``malformed``: as for
    :func:`cord.data.sources.open_dataset` (malformed JSONL lines are skipped into it);
    ``audio_limit``: as for :class:`RecordDecoder`."""
    dataset, base_dir = open_dataset(source, malformed)
    check_columns(dataset.column_names, require_answer)
    if len(dataset) == 0:
        raise ValueError("paired data has no records")
    if isinstance(dataset.features.get("audio"), datasets.Audio):
        # Keep the encoded bytes: decoding is done here with soundfile at the model's rate.
        dataset = dataset.cast_column("audio", datasets.Audio(decode=False))
    has_answer = "answer" in dataset.column_names
    decoder = RecordDecoder(sampling_rate, base_dir, "id" in dataset.column_names, has_answer,
                            require_answer, audio_limit)
    return dataset, decoder, has_answer


def load_paired(
    source: Any,
    *,
    sampling_rate: int = 16_000,
    require_answer: bool = False,
    num_proc: int | None = None,
    audio_limit: AudioLimit | None = None,
) -> datasets.Dataset:
    """Read paired records and decode their audio at ``sampling_rate`` Hz.

    Args:
        source: a ``.jsonl``/``.json``/``.csv``/``.parquet`` file, a ``save_to_disk`` folder,
            a ``datasets.Dataset`` or a list of dicts with columns ``text`` and ``audio``
            (and optionally ``id``, ``answer``; other columns pass through unchanged).
        sampling_rate: the model's rate (Whisper-style encoders: 16 kHz); audio is resampled.
        require_answer: every record must then have a non-empty ``answer``.
        num_proc: worker processes for decoding (``datasets.Dataset.map``).
        audio_limit: the longest clip the model takes (``ChatAdapter.audio_limit``); a longer
            one raises naming its record. None: any length.

    Returns:
        a ``datasets.Dataset`` with ``id`` (str; the row number when the source has no ids),
        ``text`` (str), ``audio`` = ``{"array": float32 list, "sampling_rate": sampling_rate}``
        (mono) and ``answer`` (str or None) when the source has answers.

    Raises:
        ValueError: naming the column for a missing column, or the record id for empty text,
        a missing or empty answer (with ``require_answer``), duplicate ids, or audio that is
        missing or cannot be read.
    """
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, int) or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive int, got {sampling_rate!r}")
    if is_record_list(source):
        # Decode in Python before anything becomes arrow: a list may mix paths, 1-D and
        # (samples, channels) arrays, which arrow cannot hold in one column.
        columns = list(dict.fromkeys(key for record in source for key in record))
        check_columns(columns, require_answer)
        decode = RecordDecoder(
            sampling_rate, None, "id" in columns, "answer" in columns, require_answer, audio_limit
        )
        rows = [
            {**record, **decode(record, i)}
            for i, record in enumerate(tqdm(source, desc=f"decoding audio at {sampling_rate} Hz"))
        ]
        dataset = from_records(rows)
        dataset = dataset.cast(output_features(dataset, "answer" in columns))
    else:
        dataset, decode, has_answer = open_encoded(source, sampling_rate, require_answer,
                                                   audio_limit=audio_limit)
        dataset = dataset.map(
            decode,
            with_indices=True,
            features=output_features(dataset, has_answer),
            num_proc=num_proc,
            desc=f"decoding audio at {sampling_rate} Hz",
        )
    ids = dataset["id"]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"record ids must be unique, {duplicate!r} appears more than once")
    return dataset


def check_columns(columns: Sequence[str], require_answer: bool) -> None:
    missing = [c for c in ("text", "audio") if c not in columns]
    if require_answer and "answer" not in columns:
        missing.append("answer")
    if missing:
        raise ValueError(
            f"paired data is missing column(s) {missing}; it has {list(columns)} "
            "(each record needs 'text' and 'audio', and 'answer' when require_answer=True)"
        )


@dataclass(frozen=True)
class AudioLimit:
    """The longest clip a model takes: ``max_samples`` at the decoding rate, and ``why`` a
    longer one is refused (the end of its error line). The model adapter says it
    (``ChatAdapter.audio_limit``); plain data, so that ``datasets.map`` pickles and hashes it
    cheaply."""

    max_samples: int
    why: str

    def check(self, audio: np.ndarray, sampling_rate: int, name: str) -> None:
        """Raises a one-line ValueError naming ``name`` when ``audio`` is longer."""
        if audio.size > self.max_samples:
            raise ValueError(f"{name}: its audio is {audio.size / sampling_rate:.1f} s long, "
                             f"{self.why}")


@dataclass(frozen=True)
class RecordDecoder:
    """Turns one raw record into ``{id, text, audio, answer?}``; raises naming the record.
    ``audio_limit``: refuse a clip longer than the model takes (None: any length)."""

    sampling_rate: int
    base_dir: Path | None
    has_ids: bool
    has_answer: bool
    require_answer: bool
    audio_limit: AudioLimit | None = None

    def __call__(self, example: Mapping[str, Any], index: int) -> dict[str, Any]:
        raw_id = example.get("id") if self.has_ids else None
        record_id = str(index) if raw_id is None else str(raw_id)
        text = example.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"record {record_id!r}: text is empty or not a string ({text!r})")
        audio, sr = load_audio(example.get("audio"), record_id=record_id, base_dir=self.base_dir)
        audio = resample(audio, sr, self.sampling_rate)
        if self.audio_limit is not None:
            self.audio_limit.check(audio, self.sampling_rate, f"record {record_id!r}")
        out = {
            "id": record_id,
            "text": text,
            "audio": {"array": audio, "sampling_rate": self.sampling_rate},
        }
        if self.has_answer:
            answer = example.get("answer")
            answer = None if answer is None else str(answer)
            if self.require_answer and (answer is None or not answer.strip()):
                raise ValueError(f"record {record_id!r}: answer is empty (require_answer=True)")
            out["answer"] = answer
        return out


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------


@dataclass
class PairedExample:
    """One decoded record. ``audio`` is ``(num_samples,)`` float32 at ``sampling_rate`` Hz."""

    id: str
    text: str
    audio: np.ndarray
    sampling_rate: int
    answer: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PairedExample:
        """From a row of :func:`load_paired`'s dataset."""
        audio = record["audio"]
        return cls(
            id=str(record["id"]),
            text=record["text"],
            audio=np.asarray(audio["array"], dtype=np.float32),
            sampling_rate=int(audio["sampling_rate"]),
            answer=record.get("answer"),
        )


@dataclass
class PairedBatch:
    """One micro-batch of paired prompts (what :func:`collate_paired` returns): the audio is a
    list of variable-length ``(num_samples,)`` float32 arrays at ``sampling_rate`` Hz (the
    model's processor pads and extracts features)."""

    ids: list[str]
    texts: list[str]
    audios: list[np.ndarray]
    sampling_rate: int
    answers: list[str | None]

    def __len__(self) -> int:
        return len(self.texts)


def collate_paired(batch: Sequence[Mapping[str, Any] | PairedExample]) -> PairedBatch:
    """A ``DataLoader`` ``collate_fn`` over rows of :func:`load_paired` (or
    :class:`PairedExample`). Audio stays a list of variable-length arrays: the model's
    processor pads and extracts features. All examples must share one sampling rate."""
    if not batch:
        raise ValueError("batch is empty")
    examples = [b if isinstance(b, PairedExample) else PairedExample.from_record(b) for b in batch]
    rates = {e.sampling_rate for e in examples}
    if len(rates) != 1:
        raise ValueError(f"examples in a batch must share one sampling rate, got {sorted(rates)}")
    return PairedBatch(
        ids=[e.id for e in examples],
        texts=[e.text for e in examples],
        audios=[e.audio for e in examples],
        sampling_rate=rates.pop(),
        answers=[e.answer for e in examples],
    )


def audio_of(record: Mapping[str, Any]) -> tuple[np.ndarray, int]:
    """``(waveform, sampling_rate)`` of a decoded record (a row of :func:`load_paired`)."""
    audio = record["audio"]
    if isinstance(audio, Mapping) and "array" in audio:
        return np.asarray(audio["array"], dtype=np.float32), int(audio["sampling_rate"])
    raise ValueError(
        f"record {record.get('id')!r}: audio must be decoded ({{'array', 'sampling_rate'}}); "
        "read the records with cord.data.paired.load_paired"
    )


def write_paired(records: Sequence[Mapping[str, Any]], directory: str | os.PathLike, *,
                 subtype: str = "FLOAT") -> Path:
    """Writes in-memory paired records (``audio = {"array", "sampling_rate"}``) as
    ``directory/paired.jsonl`` plus one WAV per record under ``directory/audio/``, which
    :func:`load_paired` and ``cord eval --data`` read. ``subtype="FLOAT"`` reads back sample
    for sample; ``"PCM_16"`` is half the size, rounded to 16 bits. Returns the JSONL path. Keys
    other than ``audio`` are kept as they are."""
    out = Path(directory)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    lines = []
    for i, record in enumerate(records):
        record_id = str(record.get("id", i))
        if record_id in seen:
            raise ValueError(f"records must have unique ids, {record_id!r} repeats")
        seen.add(record_id)
        array, rate = audio_of(record)
        name = f"audio/{len(lines):06d}.wav"  # ids may hold characters unsafe in file names
        sf.write(str(out / name), np.asarray(array, dtype=np.float32), rate, subtype=subtype)
        lines.append(json.dumps({**{k: v for k, v in record.items() if k != "audio"},
                                 "id": record_id, "audio": name}))
    path = out / "paired.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
