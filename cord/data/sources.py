"""Reading a table of records in any format: JSONL, JSON, CSV, parquet, a folder written by
``Dataset.save_to_disk``, a ``datasets.Dataset`` or a list of dicts.

:func:`open_dataset` returns the records as a ``datasets.Dataset`` (audio still encoded) plus the
folder relative audio paths start from; :func:`read_records` returns them as plain dicts (what
``cord synth`` and ``cord eval`` read). A ``.jsonl`` file is parsed line by line
(:mod:`cord.data.records`), so a malformed line is reported by file and line.

``datasets`` is imported only inside the functions that need it, so that reading a JSONL file
(``cord synth``, ``cord eval``) starts without it. Decoding the audio is
:mod:`cord.data.paired`'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cord.data.records import MalformedLine, is_jsonl, read_jsonl, scan_jsonl

if TYPE_CHECKING:
    import datasets

__all__ = ["FILE_FORMATS", "open_dataset", "read_records", "from_records", "is_record_list"]

#: The file endings a source may have, and the ``datasets`` reader of each.
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def open_dataset(source: Any, malformed: list[MalformedLine] | None = None
                 ) -> tuple[datasets.Dataset, Path | None]:
    """The source as a ``datasets.Dataset`` plus the folder relative audio paths start from.

    A ``.jsonl`` file is parsed line by line (``cord.data.records``): a malformed line raises
    a ValueError naming the file and line, or, when a ``malformed`` list is given, is skipped
    and appended to it."""
    import datasets  # seconds to import: only here, not for read_records of a JSONL file

    if isinstance(source, datasets.Dataset):
        return source, None
    if isinstance(source, datasets.DatasetDict):
        return _single_split(source, "the DatasetDict"), None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = _single_split(loaded, str(path))
            return loaded, path
        if not path.is_file():
            raise ValueError(f"source must be an existing file or folder, got {str(path)!r}")
        fmt = FILE_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(
                f"source must be a .jsonl, .json, .csv or .parquet file or a saved dataset "
                f"folder, got {str(path)!r}"
            )
        if is_jsonl(path):
            if malformed is None:
                records = read_jsonl(path)
            else:
                records, found = scan_jsonl(path)
                malformed.extend(found)
            return from_records(records), path.parent
        reader = {"json": datasets.Dataset.from_json, "csv": datasets.Dataset.from_csv,
                  "parquet": datasets.Dataset.from_parquet}[fmt]  # fmt: skip
        try:
            return reader(str(path)), path.parent
        except Exception as err:  # pyarrow's and datasets' errors: one line naming the file
            cause = err.__cause__ or err
            raise ValueError(f"{path}: cannot be read as {path.suffix.lower()[1:]}: "
                             f"{type(cause).__name__}: {cause}") from err
    if is_record_list(source):
        return datasets.Dataset.from_list([dict(r) for r in source]), None
    raise TypeError(
        "source must be a path (JSONL/CSV/parquet file or saved dataset folder), a "
        f"datasets.Dataset or a list of dicts, got {type(source).__name__}"
    )


def read_records(source: Any) -> list[dict[str, Any]]:
    """All records of a JSONL/JSON/CSV/parquet file, saved dataset folder, ``datasets.Dataset``
    or list of dicts, as plain dicts (no audio decoding). Used by ``cord synth`` and
    ``cord eval``."""
    if is_jsonl(source):
        # Read JSONL directly: no arrow type inference, so an ``answer`` that is a number in
        # one line and a string in another is fine.
        return read_jsonl(source)
    dataset, _ = open_dataset(source)
    return [dict(r) for r in dataset]


def from_records(records: list[dict[str, Any]]) -> datasets.Dataset:
    """An arrow dataset of parsed records, every column in every row (``from_list`` takes its
    columns from the first row only). A column mixing strings with numbers (an ``answer`` of
    5 in one line and "x" in the next) becomes strings, as arrow's JSON reader makes it."""
    import datasets

    blank = dict.fromkeys(key for record in records for key in record)
    rows = [{**blank, **record} for record in records]
    for key in blank:
        kinds = {type(row[key]) for row in rows if row[key] is not None}
        if str in kinds and kinds & {int, float, bool}:
            for row in rows:
                if row[key] is not None and not isinstance(row[key], str):
                    row[key] = json.dumps(row[key])
    return datasets.Dataset.from_list(rows)


def is_record_list(source: Any) -> bool:
    """Whether ``source`` is a list of records (dicts); raises for an empty list or one holding
    anything but dicts."""
    if not isinstance(source, Sequence) or isinstance(source, (str, bytes)):
        return False
    if not source:
        raise ValueError("source is an empty list of records")
    bad = next((i for i, r in enumerate(source) if not isinstance(r, Mapping)), None)
    if bad is not None:
        raise TypeError(
            f"source records must be dicts, record {bad} is {type(source[bad]).__name__}"
        )
    return True


def _single_split(dataset_dict: datasets.DatasetDict, where: str) -> datasets.Dataset:
    if len(dataset_dict) != 1:
        raise ValueError(
            f"{where} holds splits {sorted(dataset_dict)}; pass one split, e.g. "
            f"load_paired(dataset_dict['train'])"
        )
    return next(iter(dataset_dict.values()))
