"""The bad-record policy: check every record before training starts, then fail or skip.

:func:`load_paired_checked` is :func:`cord.data.paired.load_paired` that decodes each record on
its own and collects the ones that fail, instead of stopping at the first:

- unreadable audio, a truncated WAV, a missing audio file, NaN/Inf or empty (0-sample) audio;
- empty text; a missing answer where one is needed (``require_answer``);
- a duplicate id (the first record with the id is kept, later ones are bad);
- a clip longer than the model takes (``audio_limit``, which ``cord train`` gets from the
  model's adapter: its audio window under ``long_audio=error``), so that such a clip stops the
  run before step 1, not when its batch comes;
- a line of a ``.jsonl`` file that is not a JSON object (truncated, CSV, ``[1, 2, 3]``): with
  ``"error"`` it raises naming the file and line; with ``"skip"`` it counts as a bad record
  whose id is ``"line N"``.

With ``on_bad_record="error"`` (the default) any bad record raises a ValueError naming the
first one with its reason and the ids of all of them, before a single training step. With
``"skip"`` the bad records are dropped and the run goes on, unless there are more than
``max_bad_records`` (a count when >= 1, a fraction of all records when < 1). Either way the ids
and reasons go to ``output_dir/bad_records.jsonl`` and one summary line is reported.

Example:
    >>> ds = load_paired_checked("paired.jsonl", sampling_rate=16_000, on_bad_record="skip",
    ...                          max_bad_records=0.01, output_dir="runs/x")
    skipped 3 of 8000 records (2 missing audio file, 1 empty text): runs/x/bad_records.jsonl
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets import Value

from cord.data.paired import (
    AudioLimit,
    RecordDecoder,
    check_columns,
    load_paired,
    open_encoded,
    output_features,
)
from cord.data.records import ON_BAD_RECORD, SKIP_MALFORMED_HINT, MalformedLine, malformed_error
from cord.data.sources import is_record_list

__all__ = ["BAD_RECORDS_FILE", "ON_BAD_RECORD", "BadRecord", "load_paired_checked",
           "bad_record_limit"]

BAD_RECORDS_FILE = "bad_records.jsonl"
#: (substring of a decoder's message, short kind for the summary), first match wins.
_KINDS = (
    ("does not exist", "missing audio file"),
    ("truncated", "truncated audio"),
    ("cannot read", "unreadable audio"),
    ("NaN or Inf", "NaN/Inf audio"),
    ("audio is empty", "empty audio"),
    ("audio is missing", "missing audio"),
    ("text is empty", "empty text"),
    ("answer is empty", "missing answer"),
    ("duplicate id", "duplicate id"),
    ("its audio is", "audio too long"),
)
#: The most ids an error line names; the rest are counted (and all are in bad_records.jsonl).
_NAMED_IDS = 50
_BAD = "_cord_bad_reason"  # the column a failed record's reason travels in, then dropped


@dataclass(frozen=True)
class BadRecord:
    """A record that failed validation: its row in the source, id, kind and full reason."""

    row: int
    id: str
    kind: str
    reason: str


def _kind(reason: str) -> str:
    return next((kind for text, kind in _KINDS if text in reason), "invalid record")


def _reason(err: ValueError, record_id: str) -> str:
    """The decoder's message without its ``record 'x': `` prefix (the id has its own field)."""
    text = " ".join(str(err).split())
    prefix = f"record {record_id!r}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def bad_record_limit(max_bad_records: float | None, total: int) -> float:
    """How many bad records are allowed out of ``total``: ``None`` = any number, ``>= 1`` a
    count, ``< 1`` a fraction of ``total``."""
    if max_bad_records is None:
        return float("inf")
    if max_bad_records < 0:
        raise ValueError(f"max_bad_records must be >= 0 or None, got {max_bad_records}")
    return float(max_bad_records) if max_bad_records >= 1 else max_bad_records * total


class _TolerantDecoder:
    """The load_paired decoder, but a failing record yields a placeholder row whose
    ``_BAD`` column holds the reason (``datasets.map`` cannot drop rows mid-map)."""

    def __init__(self, decoder: RecordDecoder) -> None:
        self.decoder = decoder

    def __call__(self, example: Mapping[str, Any], index: int) -> dict[str, Any]:
        try:
            return {**self.decoder(example, index), _BAD: ""}
        except ValueError as err:
            raw_id = example.get("id") if self.decoder.has_ids else None
            record_id = str(index) if raw_id is None else str(raw_id)
            row = {"id": record_id, "text": "", _BAD: _reason(err, record_id) or "invalid",
                   "audio": {"array": [], "sampling_rate": self.decoder.sampling_rate}}
            if self.decoder.has_answer:
                row["answer"] = None
            return row


def _decode_all(source: Any, sampling_rate: int, require_answer: bool,
                num_proc: int | None, skip_malformed: bool, audio_limit: AudioLimit | None
                ) -> tuple[Any, list[BadRecord], int]:
    """(the good records, the bad ones, the number of records). The good records are a decoded
    ``datasets.Dataset``, or for a list source the raw good records (load_paired decodes them).
    ``skip_malformed``: malformed JSONL lines become bad records instead of raising."""
    bad: list[BadRecord] = []
    if is_record_list(source):
        columns = list(dict.fromkeys(key for record in source for key in record))
        check_columns(columns, require_answer)
        decoder = RecordDecoder(sampling_rate, None, "id" in columns, "answer" in columns,
                                require_answer, audio_limit)
        good, ids, rows = [], [], []
        for i, record in enumerate(source):
            try:
                ids.append(decoder(record, i)["id"])
            except ValueError as err:
                raw_id = record.get("id")
                rid = str(i) if raw_id is None else str(raw_id)
                reason = _reason(err, rid)
                bad.append(BadRecord(i, rid, _kind(reason), reason))
                continue
            good.append(record)
            rows.append(i)
        keep = _drop_duplicates(ids, rows, bad)
        return [good[k] for k in keep], bad, len(source)
    malformed: list[MalformedLine] = []
    dataset, decoder, has_answer = open_encoded(source, sampling_rate, require_answer, malformed,
                                                audio_limit)
    if malformed and not skip_malformed:  # before decoding any audio: the file itself is wrong
        raise malformed_error(malformed, SKIP_MALFORMED_HINT)
    # A malformed line has no row of its own: its row is its line number - 1.
    bad += [BadRecord(m.line - 1, f"line {m.line}", "malformed line", m.message())
            for m in malformed]
    features = output_features(dataset, has_answer)
    features[_BAD] = Value("string")
    # Never from the datasets cache: the check is about the files as they are now (a file
    # restored since the last run must count as good).
    decoded = dataset.map(_TolerantDecoder(decoder), with_indices=True, features=features,
                          num_proc=num_proc, load_from_cache_file=False,
                          desc=f"checking and decoding audio at {sampling_rate} Hz")
    reasons, all_ids = decoded[_BAD], decoded["id"]
    good_rows = []
    for i, reason in enumerate(reasons):
        if reason:
            bad.append(BadRecord(i, all_ids[i], _kind(reason), reason))
        else:
            good_rows.append(i)
    keep = _drop_duplicates([all_ids[i] for i in good_rows], good_rows, bad)
    good = decoded.select([good_rows[k] for k in keep]).remove_columns(_BAD)
    return good, bad, len(dataset) + len(malformed)


def _drop_duplicates(ids: list[str], rows: list[int], bad: list[BadRecord]) -> list[int]:
    """Positions in ``ids`` to keep: the first record of each id. Later ones join ``bad``."""
    first: dict[str, int] = {}
    keep = []
    for k, (record_id, row) in enumerate(zip(ids, rows, strict=True)):
        if record_id in first:
            reason = f"duplicate id: row {first[record_id]} has the same id"
            bad.append(BadRecord(row, record_id, _kind(reason), reason))
        else:
            first[record_id] = row
            keep.append(k)
    bad.sort(key=lambda b: b.row)
    return keep


def _ids(bad: list[BadRecord]) -> str:
    """The ids of the bad records, for one error line (the first ``_NAMED_IDS``)."""
    named = ", ".join(repr(b.id) for b in bad[:_NAMED_IDS])
    return named + (f" and {len(bad) - _NAMED_IDS} more" if len(bad) > _NAMED_IDS else "")


def load_paired_checked(
    source: Any,
    *,
    sampling_rate: int = 16_000,
    require_answer: bool = False,
    on_bad_record: str = "error",
    max_bad_records: float | None = None,
    output_dir: str | Path | None = None,
    report: Callable[[str], None] = print,
    num_proc: int | None = None,
    audio_limit: AudioLimit | None = None,
) -> datasets.Dataset:
    """:func:`cord.data.paired.load_paired` with the bad-record policy (module docstring).

    Args:
        source, sampling_rate, require_answer, num_proc: as for ``load_paired``.
        on_bad_record: ``"error"`` (any bad record raises) or ``"skip"``.
        max_bad_records: with ``"skip"``, the most bad records tolerated: a count (>= 1), a
            fraction of all records (< 1) or None (no limit).
        output_dir: where ``bad_records.jsonl`` goes (None: nowhere; pass it on one process
            only under accelerate).
        report: receives the one-line summary.
        audio_limit: the longest clip the model takes (``ChatAdapter.audio_limit``); a longer
            one is a bad record. None: any length.

    Raises:
        ValueError: naming the first bad record and its reason (``"error"``), or the count
            against the limit (``"skip"``); also everything ``load_paired`` raises for the
            source as a whole (a missing column, no records).
    """
    if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(f"on_bad_record must be one of {list(ON_BAD_RECORD)}, got "
                         f"{on_bad_record!r}")
    good, bad, total = _decode_all(source, sampling_rate, require_answer, num_proc,
                                   skip_malformed=on_bad_record == "skip",
                                   audio_limit=audio_limit)
    where = ""
    if bad and output_dir is not None:
        path = Path(output_dir) / BAD_RECORDS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(asdict(b)) + "\n" for b in bad))
        where = f"; all of them are listed in {path}"
    if bad:
        kinds = Counter(b.kind for b in bad)
        summary = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
        first = f"record {bad[0].id!r} (row {bad[0].row}): {bad[0].reason}"
        if on_bad_record == "error":
            raise ValueError(
                f"{len(bad)} of {total} records are bad ({summary}): {_ids(bad)}; the first is "
                f"{first}{where}. Fix them, or set on_bad_record=skip to train on the rest")
        limit = bad_record_limit(max_bad_records, total)
        if len(bad) > limit:
            raise ValueError(
                f"{len(bad)} of {total} records are bad ({summary}), more than "
                f"max_bad_records={max_bad_records:g} allows; the first is {first}{where}")
        report(f"skipped {len(bad)} bad record(s) of {total} ({summary})"
               + (f": ids and reasons in {Path(output_dir) / BAD_RECORDS_FILE}"
                  if output_dir is not None else ""))
    if len(good) == 0:
        raise ValueError(f"no usable records: all {total} are bad")
    if isinstance(good, list):
        return load_paired(good, sampling_rate=sampling_rate, require_answer=require_answer)
    return good
