"""Reading a records file line by line, so that a broken one is reported by file and line.

pyarrow's JSON reader, behind ``datasets``, turns a truncated, empty or CSV-in-disguise
``.jsonl`` into a ``DatasetGenerationError`` traceback naming neither the file nor the line.
:func:`scan_jsonl` parses each line itself and says, for every line that is not a JSON object,
what it found instead; callers raise at the first one (``on_bad_record="error"``) or skip and
count them like bad records.

Only the standard library is imported here: ``cord synth`` and ``cord eval`` read their
records through this module (by way of :func:`cord.data.sources.read_records`, which reads the
other formats), before anything heavy is imported.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ON_BAD_RECORD", "MalformedLine", "scan_jsonl", "read_jsonl", "is_jsonl",
           "malformed_error", "SKIP_MALFORMED_HINT"]

#: What ``cord train`` does with a bad record (``on_bad_record``; ``cord.data.validate``).
ON_BAD_RECORD = ("error", "skip")
#: What ``cord train`` can do about malformed lines besides fixing them.
SKIP_MALFORMED_HINT = "fix the file, or set on_bad_record=skip to train on the other lines"

_EXPECTED = 'expected one JSON object per line ({"text": ..., "audio": ...})'


@dataclass(frozen=True)
class MalformedLine:
    """A line of a JSONL file that is not a JSON object: its number (1-based) and why."""

    path: str
    line: int
    reason: str

    def message(self) -> str:
        return f"{self.path}: line {self.line}: {self.reason}"


def _not_an_object(text: str, value: Any) -> str:
    """Why the line ``text``, valid JSON holding ``value``, is not a record."""
    kind = {list: "a JSON array", str: "a JSON string", bool: "a JSON boolean",
            type(None): "null"}.get(type(value), "a JSON number")
    return f"{_EXPECTED}, got {kind}: {text[:60]}"


def _not_json(text: str, line_no: int, unterminated: bool, error: json.JSONDecodeError) -> str:
    """Why the line ``text`` is not JSON, with a guess at the cause where one is likely."""
    if unterminated and text.startswith("{"):  # no newline after an open object: cut off
        return f"{_EXPECTED}, got an unfinished object (the file looks truncated): {error.msg}"
    if line_no == 1 and "," in text and not text.startswith(("{", "[")):
        return (f"{_EXPECTED}, got comma-separated text (a CSV file? give it a .csv name): "
                f"{text[:60]}")
    return f"{_EXPECTED}, got invalid JSON ({error.msg} at column {error.colno})"


def scan_jsonl(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[MalformedLine]]:
    """The JSON objects of a JSONL file and its malformed lines (blank lines are ignored).

    Raises ValueError for a file with no line at all, or none that is a JSON object (there is
    nothing to skip to)."""
    path = str(path)
    records: list[dict[str, Any]] = []
    malformed: list[MalformedLine] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                reason = _not_json(text, line_no, not line.endswith("\n"), err)
                malformed.append(MalformedLine(path, line_no, reason))
                continue
            if isinstance(value, dict):
                records.append(value)
            else:
                malformed.append(MalformedLine(path, line_no, _not_an_object(text, value)))
    if not records and not malformed:
        raise ValueError(f"{path}: the file is empty; {_EXPECTED}")
    if not records:
        raise ValueError(f"{malformed[0].message()}; no line of the file is a JSON object")
    return records, malformed


def malformed_error(malformed: list[MalformedLine], fix: str = "") -> ValueError:
    """One line naming the file and line of the first malformed line, how many there are, and
    ``fix`` (what to do about them)."""
    more = f" ({len(malformed)} malformed lines in all)" if len(malformed) > 1 else ""
    return ValueError(malformed[0].message() + more + (f"; {fix}" if fix else ""))


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL file; ValueError naming the file and line of the first malformed
    one (and how many there are)."""
    records, malformed = scan_jsonl(path)
    if malformed:
        raise malformed_error(malformed)
    return records


def is_jsonl(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".jsonl"
