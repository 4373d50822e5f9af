"""The files of ``scripts/gpu_check.sh`` and the lent machine's limits, without torch (fast).

    python -m bench.gpu.files finish   OUT STEP RC SECONDS LOG   # a step's outcome, log tail
    python -m bench.gpu.files cuda-tests                         # the test files with CUDA cases
    python -m bench.gpu.files tests    OUT JUNIT_XML FILE...     # pytest's report -> tests.json
    python -m bench.gpu.files train    OUT NAME LOG RC SECONDS   # a training run's log
    python -m bench.gpu.files validate OUT                       # schema + what comes back
    python -m bench.gpu.files travel   [--carry PATH]... [--limit-mib M]

One file per step, all in OUT itself (no folders): every file is written by ``init`` before
any step runs, its rows "not reached", and rewritten atomically (a temporary name, then a
rename) as results come in, so whatever is killed, the files that come back are valid and
say how far each step got. Every file is ``{"schema", "kind", "dry_run", "device",
"created", "step": {status, ...}, ...}``.

The limits are the device tool's (its README): at most 8 files come back, at most 2 folders
down, 16 MiB each, 64 MiB together, names of letters, digits, '.', '_' and '-'; the working
tree that travels (tracked files, untracked files git does not ignore, ``shared/``, carried
paths) is at most 64 MiB.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = "cord-gpu-check/2"
# The steps in the order they run, and the one file each writes.
STEPS = ("env", "trl", "realistic", "rest", "tests", "vparallel", "train")
FILES = {step: f"{step}.json" for step in STEPS}
SUMMARY = "summary.md"
HEADER_KEYS = ("schema", "kind", "dry_run", "device", "created", "step")
ROW_KEYS = ("id", "table", "loss", "provider", "status")
# Row and step states besides "ok"; every one of them carries a reason.
NOT_REACHED, NOT_RUN, RUNNING = "not reached", "not run", "running"

# The device tool's limits (/work/.library/device/README.md, "Limits").
MAX_FILES, MAX_DEPTH = 8, 2
MAX_FILE_BYTES, MAX_BACK_BYTES = 16 * 2**20, 64 * 2**20
TRAVEL_LIMIT_BYTES = 64 * 2**20
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")
LOG_TAIL_LINES = 30


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load(out: Path, kind: str) -> dict:
    path = out / FILES[kind]
    return json.loads(path.read_text()) if path.is_file() else {}


def save(out: Path, kind: str, doc: dict) -> Path:
    """Writes ``doc`` as OUT/<kind>.json; readers never see half a file, even if the writer is
    killed (the temporary file is in OUT only for an instant, and is never left behind by a
    finished write)."""
    path = out / FILES[kind]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)
    return path


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not log.is_file():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def step_outcome(rc: int, seconds: float, limit: float | None = None) -> str:
    """timeout(1) exits 124 when it stopped the command (SIGINT here), 137 when the grace
    period ran out too and it sent SIGKILL; Python exits 130 after a handled SIGINT."""
    if rc == 0:
        return "done"
    if rc in (124, 130, 137):
        at = f" at its {limit:.0f} s limit" if limit else ""
        return f"killed{at} (exit {rc})"
    return f"failed (exit {rc})"


def cmd_finish(out: Path, step: str, rc: int, seconds: float, log: Path,
               limit: float | None = None) -> None:
    """Records a step's outcome in its file: status, exit code, seconds and, unless it
    succeeded, the last lines of its log."""
    doc = load(out, step)
    if not doc:
        return
    doc["step"] = {"status": step_outcome(rc, seconds, limit), "returncode": rc,
                   "seconds": round(seconds, 1), "limit_s": limit, "finished": now(),
                   "log_tail": "" if rc == 0 else log_tail(log)}
    save(out, step, doc)


# ------------------------------------------------------------------------------ tests, train


def cuda_test_files(repo: Path) -> list[str]:
    """tests/gpu and every test module with a test that takes the ``device`` fixture (its
    cuda case: tests/conftest.py), relative to ``repo``. Read from the source, so that pytest
    collects these files only, not the whole suite."""
    found = ["tests/gpu"]
    for path in sorted((repo / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        if any(isinstance(node, ast.FunctionDef) and node.name.startswith("test")
               and any(a.arg == "device" for a in node.args.args) for node in ast.walk(tree)):
            found.append(str(path.relative_to(repo)))
    return found


def junit(path: Path) -> dict:
    """Counts, failures and skip reasons of a pytest junit report."""
    if not path.is_file():
        return {"file": path.name, "error": "no junit report (pytest did not get to write it)"}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        return {"file": path.name, "error": f"unreadable junit report: {err}"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed, skip_reasons = [], {}
    for s in suites:
        for k in counts:
            counts[k] += int(s.get(k, 0))
        for case in s.iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            for tag in ("failure", "error"):
                el = case.find(tag)
                if el is not None:
                    failed.append({"test": name, "message": (el.get("message") or "")[:400]})
            sk = case.find("skipped")
            if sk is not None:
                msg = (sk.get("message") or "")[:200]
                skip_reasons[msg] = skip_reasons.get(msg, 0) + 1
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"file": path.name, **counts, "failed": failed, "skip_reasons": skip_reasons}


def cmd_tests(out: Path, report: Path, files: list[str]) -> None:
    doc = load(out, "tests")
    doc.update(suite=junit(report), files=files, created=now())
    save(out, "tests", doc)


_METRIC = re.compile(r"([a-z_0-9]+)=(-?[0-9.eE+-]+|nan|True|False)")


def _metrics(line: str) -> dict:
    found = {}
    for k, val in _METRIC.findall(line):
        try:
            x = float(val)
            found[k] = x if math.isfinite(x) else None  # strict JSON has no NaN
        except ValueError:
            found[k] = val == "True"
    return found


def cmd_train(out: Path, name: str, log: Path, rc: int, seconds: float) -> None:
    """One training run of the train step: ``cord train`` logs "loss=... step=N ..." per
    logging step and "final: ..." at the end; the TRL drop-in prints "final loss X"."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    steps, final = [], {}
    for line in re.split(r"[\r\n]+", text):
        if line.startswith("final:"):
            final = _metrics(line)
        elif line.startswith("final loss "):
            final = _metrics("loss=" + line.split()[-1])
        elif "step=" in line and "loss=" in line:
            m = _metrics(line[line.rfind("loss="):])
            if m and (not steps or steps[-1].get("step") != m.get("step")):
                steps.append(m)
    doc = load(out, "train")
    doc.setdefault("runs", {})[name] = {
        "status": step_outcome(rc, seconds), "returncode": rc, "seconds": round(seconds, 1),
        "steps": steps, "final": final, "log_tail": log_tail(log) if rc else ""}
    doc["created"] = now()
    save(out, "train", doc)


# ------------------------------------------------------------------------------- the limits


def out_problems(out: Path) -> list[str]:
    """What the device tool would refuse to bring back from OUT (an empty list: all of it)."""
    problems, files, total = [], [], 0
    for root, dirs, names in os.walk(out):
        rel = Path(root).relative_to(out)
        for name in dirs + names:
            if not NAME_OK.match(name):
                problems.append(f"{rel / name}: a name with other than letters, digits, ._-")
        for name in names:
            path = Path(root) / name
            depth = len(rel.parts)
            if depth > MAX_DEPTH:
                problems.append(f"{rel / name}: {depth} folders down, at most {MAX_DEPTH}")
            size = path.lstat().st_size
            if size > MAX_FILE_BYTES:
                problems.append(f"{rel / name}: {size} bytes, at most {MAX_FILE_BYTES}")
            total += size
            files.append(path)
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files, at most {MAX_FILES} come back")
    if total > MAX_BACK_BYTES:
        problems.append(f"{total} bytes together, at most {MAX_BACK_BYTES} come back")
    return problems


def _tree_bytes(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_symlink() or p.is_file())


def travelling_bytes(repo: Path, carry: tuple[str, ...] = ()) -> dict[str, int]:
    """The bytes that travel to the device machine, counted as the tool counts them: tracked
    files and untracked files git does not ignore, ``shared/`` where the checkout has one,
    and each carried path (a link counts as a link)."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    tree = 0
    for rel in {p for p in listed.decode().split("\0") if p and not p.startswith("shared/")}:
        path = repo / rel
        if path.is_symlink() or path.is_file():  # a tracked file deleted here does not travel
            tree += path.lstat().st_size
    sizes = {"tree": tree}
    shared = repo / "shared"
    if shared.is_dir():  # travels whole, ignored files too
        sizes["shared"] = _tree_bytes(shared)
    for c in carry:
        sizes[c] = _tree_bytes(repo / c) if (repo / c).exists() else 0
    sizes["total"] = sum(sizes.values())
    return sizes


# ------------------------------------------------------------------------------- validation


def validate(out: Path) -> list[str]:
    """Problems with the files in ``out`` (an empty list when all is well): the device
    limits, the schema, and a status with a reason on every row that is not "ok"."""
    problems = out_problems(out)
    names = {p.name for p in out.iterdir()}
    for name in sorted(names - set(FILES.values()) - {SUMMARY}):
        problems.append(f"{name}: not a file of the check")
    if SUMMARY not in names:
        problems.append(f"{SUMMARY} is missing")
    for kind, name in FILES.items():
        if name not in names:
            problems.append(f"{name} is missing")
            continue
        try:
            doc = json.loads((out / name).read_text())
        except json.JSONDecodeError as err:
            problems.append(f"{name}: not JSON ({err})")
            continue
        missing = [k for k in HEADER_KEYS if k not in doc]
        if missing:
            problems.append(f"{name}: missing keys {missing}")
        if doc.get("schema") != SCHEMA or doc.get("kind") != kind:
            problems.append(f"{name}: schema/kind {doc.get('schema')}/{doc.get('kind')}")
        if "status" not in doc.get("step", {}):
            problems.append(f"{name}: the step has no status")
        for i, row in enumerate(doc.get("rows", [])):
            lacking = [k for k in ROW_KEYS if k not in row]
            if row.get("status") == "ok":
                lacking += [k for k in ("time_ms",) if k not in row]
            elif not row.get("reason"):
                lacking.append("reason")
            if lacking:
                problems.append(f"{name}: row {i} lacks {lacking}")
    return problems


# ------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu.files", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("finish")
    f.add_argument("out", type=Path)
    f.add_argument("step", choices=STEPS)
    f.add_argument("rc", type=int)
    f.add_argument("seconds", type=float)
    f.add_argument("log", type=Path)
    f.add_argument("--limit-s", type=float)
    sub.add_parser("cuda-tests")
    j = sub.add_parser("tests")
    j.add_argument("out", type=Path)
    j.add_argument("report", type=Path)
    j.add_argument("files", nargs="*")
    r = sub.add_parser("train")
    r.add_argument("out", type=Path)
    r.add_argument("name")
    r.add_argument("log", type=Path)
    r.add_argument("rc", type=int)
    r.add_argument("seconds", type=float)
    v = sub.add_parser("validate")
    v.add_argument("out", type=Path)
    t = sub.add_parser("travel")
    t.add_argument("--carry", action="append", default=[])
    t.add_argument("--limit-mib", type=float, default=TRAVEL_LIMIT_BYTES / 2**20)
    a = ap.parse_args(argv)
    if a.command == "finish":
        cmd_finish(a.out, a.step, a.rc, a.seconds, a.log, a.limit_s)
        return 0
    repo = Path(__file__).resolve().parents[2]
    if a.command == "cuda-tests":
        print("\n".join(cuda_test_files(repo)))
        return 0
    if a.command == "tests":
        cmd_tests(a.out, a.report, a.files)
        return 0
    if a.command == "train":
        cmd_train(a.out, a.name, a.log, a.rc, a.seconds)
        return 0
    if a.command == "validate":
        problems = validate(a.out)
        for p in problems:
            print(f"gpu_check: {p}", file=sys.stderr)
        return 1 if problems else 0
    sizes = travelling_bytes(repo, tuple(a.carry))
    parts = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items() if k != "total")
    total = sizes["total"] / 2**20
    verdict = "over" if total >= a.limit_mib else "under"
    print(f"travels: {total:.1f} MiB ({parts}), {verdict} the {a.limit_mib:.0f} MiB budget")
    return 1 if total >= a.limit_mib else 0


if __name__ == "__main__":
    sys.exit(main())
