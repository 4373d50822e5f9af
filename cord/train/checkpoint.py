"""Atomic checkpoints: a kill at any instant leaves either the old or the new checkpoint, whole.

A checkpoint ``output_dir/checkpoint-<step>`` is written as ``checkpoint-<step>.partial`` (a
sibling, so the final rename never crosses a filesystem), its files are flushed to disk, the
marker file :data:`COMPLETE_MARKER` is written last, and only then is the directory renamed
into place. So:

- a ``checkpoint-<step>`` directory holding the marker is complete;
- ``resume_from_checkpoint="latest"`` takes the newest complete one; partial ones (a
  ``.partial`` directory, or a ``checkpoint-<step>`` without the marker) are reported and
  ignored, and stale ``.partial`` directories are removed;
- ``save_total_limit`` rotates only after the new checkpoint is complete, and never deletes it;
- a save that fails (``ENOSPC``, a permission error) removes its partial directory and raises
  :class:`CheckpointSaveError`, leaving the previous checkpoints untouched.

Exit statuses of ``cord train`` tied to long runs are defined here (see docs/long_runs.md):
:data:`EXIT_CHECKPOINT_FAILED` and :data:`EXIT_PREEMPTED`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "COMPLETE_MARKER",
    "EXIT_CHECKPOINT_FAILED",
    "EXIT_PREEMPTED",
    "CheckpointSaveError",
    "any_process",
    "complete_checkpoints",
    "partial_checkpoints",
    "resolve_checkpoint",
    "save_atomically",
    "trim_metrics",
]

#: Written last into a checkpoint: its presence is what "complete" means.
COMPLETE_MARKER = "checkpoint_complete.json"
PARTIAL_SUFFIX = ".partial"
PREFIX = "checkpoint-"
#: ``cord train`` could not write a checkpoint (sysexits' EX_IOERR).
EXIT_CHECKPOINT_FAILED = 74
#: ``cord train`` stopped on SIGTERM/SIGINT after saving a checkpoint: resume with ``latest``
#: (sysexits' EX_TEMPFAIL, "try again later").
EXIT_PREEMPTED = 75


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the previous checkpoints are intact."""


def _step_of(path: Path) -> int | None:
    name = path.name
    if name.endswith(PARTIAL_SUFFIX):
        name = name[: -len(PARTIAL_SUFFIX)]
    digits = name[len(PREFIX):]
    return int(digits) if name.startswith(PREFIX) and digits.isdigit() else None


def _is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete ``checkpoint-<step>`` directories of ``output_dir``, oldest step first."""
    found = [p for p in Path(output_dir).glob(PREFIX + "*")
             if p.is_dir() and not p.name.endswith(PARTIAL_SUFFIX) and _step_of(p) is not None
             and _is_complete(p)]
    return sorted(found, key=_step_of)


def partial_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Interrupted saves in ``output_dir``: ``.partial`` directories and ``checkpoint-<step>``
    directories without the marker."""
    found = [p for p in Path(output_dir).glob(PREFIX + "*")
             if p.is_dir() and _step_of(p) is not None
             and (p.name.endswith(PARTIAL_SUFFIX) or not _is_complete(p))]
    return sorted(found, key=lambda p: (_step_of(p), p.name))


def resolve_checkpoint(output_dir: str | os.PathLike, spec: str | os.PathLike,
                       report: Callable[[str], None] = print, *,
                       remove_stale: bool = True) -> Path:
    """The directory to resume from: ``spec`` itself, or for ``"latest"`` the newest complete
    checkpoint of ``output_dir``. Partial checkpoints are reported through ``report`` and
    ignored; with ``remove_stale`` (one process only) stale ``.partial`` directories, our own
    temporary names, are removed.

    Raises:
        FileNotFoundError: ``latest`` finds no complete checkpoint, or ``spec`` is not a
            directory.
        ValueError: ``spec`` is a directory without the completion marker.
    """
    output_dir = Path(output_dir)
    partial = partial_checkpoints(output_dir) if output_dir.is_dir() else []
    if partial:
        report(f"ignoring {len(partial)} partial checkpoint(s) (interrupted saves, no "
               f"{COMPLETE_MARKER}): {', '.join(p.name for p in partial)}")
        for p in partial if remove_stale else ():
            if p.name.endswith(PARTIAL_SUFFIX):
                shutil.rmtree(p, ignore_errors=True)
    if str(spec) == "latest":
        found = complete_checkpoints(output_dir) if output_dir.is_dir() else []
        if not found:
            raise FileNotFoundError(
                f"resume_from_checkpoint='latest' but {output_dir} holds no checkpoint: no "
                "complete checkpoint-* directory" + (" (only partial ones)" if partial else ""))
        return found[-1]
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint: no checkpoint directory at {path}")
    if not _is_complete(path):
        raise ValueError(f"resume_from_checkpoint: {path} is not a complete checkpoint (no "
                         f"{COMPLETE_MARKER}: its save was interrupted); pass 'latest' or "
                         "another checkpoint")
    return path


def _fsync_tree(root: Path) -> None:
    """Flushes every file of ``root`` to disk, so the marker never outlives the data on a
    power loss (a killed process alone loses nothing: the page cache survives it)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(err: OSError) -> str:
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
            errno.EROFS: "the filesystem is read-only"}.get(err.errno)
    return f"{err} ({what})" if what else str(err)


def save_atomically(accelerator, output_dir: str | os.PathLike, step: int,
                    write_state: Callable[[Path], None], write_extra: Callable[[Path], None], *,
                    save_total_limit: int | None = None, keep: Path | None = None) -> Path:
    """Writes ``output_dir/checkpoint-<step>`` atomically; every process calls it.

    ``write_state(dir)`` runs on every process and writes the training state into the
    ``.partial`` sibling (``accelerator.save_state``: each process its own RNG file); then the
    main process calls ``write_extra(dir)`` (trainer state, config), flushes, writes the marker
    and renames the directory into place; after that, and only then, ``save_total_limit``
    rotates older complete checkpoints away. ``accelerator`` gives the process layout, the
    barriers and the all-reduce that makes every process agree the save succeeded. ``keep``
    (the best checkpoint, ``cord.train.evaluation``) is never rotated away.

    Raises:
        CheckpointSaveError: any OSError on any process; the partial directory is removed and
            the previous checkpoints are left as they were.
    """
    acc = accelerator
    output_dir = Path(output_dir)
    final = output_dir / f"{PREFIX}{step}"
    tmp = output_dir / f"{PREFIX}{step}{PARTIAL_SUFFIX}"
    error: OSError | None = None
    try:
        if acc.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # a save of this step that was interrupted earlier
                shutil.rmtree(tmp)
        acc.wait_for_everyone()
        write_state(tmp)
        if acc.is_main_process:
            write_extra(tmp)
    except OSError as err:
        error = err
    # Every process must agree: one failed write means no checkpoint at all.
    if any_process(acc, error is not None):
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = [p.name for p in complete_checkpoints(output_dir) if p != final]
        keep = previous[-1] if previous else "none"
        reason = _describe(error) if error is not None else "another process failed to write"
        raise CheckpointSaveError(
            getattr(error, "errno", None) or errno.EIO,
            f"could not save {final.name}: {reason}. The partial save was removed; the previous "
            f"checkpoint ({keep}) is intact. Free space or fix permissions on {output_dir}, "
            "then resume with resume_from_checkpoint=latest") from error
    if acc.is_main_process:
        try:
            _fsync_tree(tmp)
            marker = tmp / COMPLETE_MARKER
            with marker.open("w") as fh:
                fh.write(json.dumps({"step": step, "time": time.time()}))
                fh.flush()
                os.fsync(fh.fileno())
            if final.exists():  # re-saving a step (a resume from an older checkpoint)
                old = output_dir / f"{PREFIX}{step}.old"
                shutil.rmtree(old, ignore_errors=True)
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
            _fsync_dir(output_dir)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointSaveError(err.errno or errno.EIO,
                                      f"could not complete {final.name}: {_describe(err)}; the "
                                      "previous checkpoints are intact") from err
        if save_total_limit:
            older = [p for p in complete_checkpoints(output_dir)
                     if p != final and (keep is None or p.name != Path(keep).name)]
            keep_older = max(0, save_total_limit - 1)
            for old in older[: len(older) - keep_older]:
                shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def trim_metrics(path: str | os.PathLike, step: int) -> None:
    """Keeps the rows of ``metrics.jsonl`` up to ``step`` (the step a run starts from), so the
    steps a resumed run repeats are not logged twice; a half-written last line (a kill
    mid-write) is dropped too. A missing file is fine."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # only the last line can be half-written
        if not isinstance(row, dict) or int(row.get("step", 0)) > step:
            break
        kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def any_process(acc, flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (one all-reduce)."""
    if acc.num_processes == 1:
        return bool(flag)
    import torch  # here: `cord train` checks resume_from_checkpoint before torch loads

    t = torch.tensor([1.0 if flag else 0.0], device=acc.device)
    return bool(acc.reduce(t, reduction="sum").item() > 0)
