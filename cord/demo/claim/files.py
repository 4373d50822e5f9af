"""A claim-demo run's folder: the files a run writes first, and what ``--resume`` and
``--reevaluate`` need there. Light on purpose (no torch): the options' errors come before
anything is loaded."""

from __future__ import annotations

import json
from pathlib import Path

RUN_FILE = "run.json"
"""The options of a run, written before any work: ``cord demo --resume DIR`` reads them."""
QUICK_LINE = ("cord demo --quick: a smoke test of the whole pipeline on a tiny budget; its "
              "numbers are not a result")
"""The first line of a quick run, in the console and in its README."""
PRE_REGISTERED = "pre-registered"
"""``results.json``'s ``status`` from the start of a run until its report replaces it."""


def check_run_dir(directory: str | Path, *, for_reevaluate: bool) -> str | None:
    """What a ``--resume``/``--reevaluate`` folder lacks (None when nothing): read from its
    files alone, before anything is loaded, so the option's error comes at once."""
    d = Path(directory)
    if not d.exists():
        return "the folder does not exist"
    if not d.is_dir():
        return "it is not a folder"
    if not for_reevaluate:
        return None if (d / RUN_FILE).is_file() else (
            f"no {RUN_FILE} (the options a claim-demo run writes first): not a claim-demo run")
    results = d / "results.json"
    if not results.is_file():
        return "no results.json: not a claim-demo run, or one that never started"
    try:
        run = json.loads(results.read_text())
    except (OSError, ValueError) as e:
        return f"results.json is unreadable ({e})"
    if run.get("task_name") != "claim":
        return "results.json is not a claim-demo run's (cord demo --task claim)"
    if run.get("status") == PRE_REGISTERED or "summary" not in run:
        return ("results.json holds only the pre-registration: the run did not finish "
                f"(cord demo --resume {d} finishes it)")
    missing = [m for m in ["base", *run.get("methods", [])]
               if not (d / "models" / m / "config.json").is_file()]
    if "base" in missing or len(missing) == len(run.get("methods", [])) + 1:
        return (f"no saved models under {d / 'models'} (missing: {', '.join(missing)}): run "
                "the demo without --no-save-models")
    return None
