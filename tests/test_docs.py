"""The README and docs/: short, self-contained, links that resolve, and every number or option
list either generated from its source or checked against it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_PATH = re.compile(r"`((?:cord|cord_kernels|bench|scripts|tests|examples|docs)/[\w./-]*)`")
NUMBER = re.compile(r"(?<![\w.])[−-]?\d[\d,]*(?:\.\d+)?")


def _block(page: Path, marker: str) -> str:
    text = page.read_text()
    found = re.search(rf"<!-- {marker}:start -->\n(.*?)<!-- {marker}:end -->", text, re.S)
    assert found, f"{page.name} lacks the {marker} markers"
    return found.group(1)


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


# -- the README -----------------------------------------------------------------------------


def test_readme_fits_in_300_lines():
    assert len(README.read_text().splitlines()) <= 300


def test_readme_names_no_path_outside_the_repository():
    text = README.read_text()
    assert "../" not in text
    assert not re.search(r"(?<![\w/.:])/(?:work|home|tmp|root|Users)/", text)
    assert "SPEC" not in text, "cite docs/ pages (or the paper, arXiv 2601.16547), not the spec"


def test_readme_keeps_the_markers_that_others_fill_in():
    text = README.read_text()
    section = text.split("## The demo: CORD where the paper makes its claim\n", 1)
    assert len(section) == 2
    assert section[1].lstrip("\n").startswith("<!-- demo-verdict:start -->")
    assert "<!-- demo-verdict:end -->" in section[1]


def test_readme_starts_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert lines[2] == "```bash" and lines[5] == "```"
    assert lines[3].startswith(
        'pip install torch==2.13.0 && pip install -e ".[train]" && cord demo ')
    assert lines[4].startswith('pip install torch==2.13.0 && pip install -e ".[dev]" && '
                               "python -m pytest -q -n 2 tests ")


# -- links and paths ------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve_to_files_in_the_repository(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{_name(page)}: {target} points outside the repo"
        assert path.exists(), f"{_name(page)}: {target} does not exist"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_repository_paths_in_code_spans_exist(page):
    for path in CODE_PATH.findall(page.read_text()):
        assert (ROOT / path).exists(), f"{_name(page)} names {path}, which does not exist"


def test_api_page_lists_every_public_name():
    import cord_kernels

    page = (DOCS / "api.md").read_text()
    missing = [name for name in cord_kernels.__all__ if f"`{name}" not in page]
    assert not missing, f"docs/api.md does not document {missing}"


# -- generated blocks and numbers ----------------------------------------------------------


def test_generated_blocks_match_the_committed_bench_results():
    from bench.report import docs_blocks

    for (page, marker), text in docs_blocks().items():
        assert _block(DOCS / page, marker) == text, (
            f"docs/{page}'s {marker} block is stale: run python -m bench.report --docs")


def test_accuracy_table_has_the_rows_of_scripts_accuracy_and_meets_the_tolerances():
    from scripts.accuracy import HEADER, row_labels

    lines = _block(DOCS / "verification.md", "accuracy").splitlines()
    assert lines[0] == HEADER and lines[1] == "|---|---|---|---|"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert [(r[0], r[1]) for r in rows] == row_labels()
    for name, dtype, value, grad in rows:
        bound = 1e-5 if dtype == "float32" else 1e-2  # the tolerances the page states
        assert float(value) < bound and float(grad) < bound, (name, dtype, value, grad)


def _numbers(text: str) -> list[str]:
    return [n.replace("−", "-").replace(",", "") for n in NUMBER.findall(text)]


def _demo_sources() -> list[float]:
    text = "".join(path.read_text() for folder in ("demo", "demo_full", "demo_long")
                   for path in sorted((DOCS / folder).iterdir())
                   if path.suffix in (".md", ".json"))
    text += (ROOT / "cord" / "demo" / "operands" / "learning_rates.json").read_text()
    values = [float(n) for n in _numbers(text)]
    return values + [100 * v for v in values]  # fractions written as percentages


def _found(written: str, sources: list[float]) -> bool:
    """A number as written, rounded to its own decimals, is among the sources (up to its sign:
    the prose says "CORD loses by 30 points" of a difference the report gives as -29.9)."""
    decimals = len(written.split(".")[1]) if "." in written else 0
    x = abs(float(written))
    return any(abs(abs(round(s, decimals)) - x) < 1e-9 for s in sources)


# Numbers of docs/demo.md that no file of the committed runs holds, each with where it is from.
DEMO_PROSE_NUMBERS = {
    "6.4": "the default run's /usr/bin/time wall clock (its report's own timer says 6.2 min)",
    "11": "minutes of cord demo --task operands --refresh, measured by hand",
    "410": "k parameters of the tiny model",
    "2850": "the unlabelled post-training pairs (operands/data.py's split)",
    "320": "post-training prompts of the default demo: 40 steps x 8",
    "80000": "the paper's post-training prompts",
}


def test_demo_page_tables_hold_only_numbers_of_the_committed_runs():
    sources = _demo_sources()
    tables = [line for line in (DOCS / "demo.md").read_text().splitlines()
              if line.startswith("|")]
    missing = [n for line in tables for n in _numbers(line) if not _found(n, sources)]
    assert not missing, f"docs/demo.md tables hold numbers no committed run has: {missing}"


def test_demo_page_prose_numbers_come_from_the_committed_runs_or_are_explained():
    sources = _demo_sources()
    prose = [line for line in (DOCS / "demo.md").read_text().splitlines()
             if not line.startswith("|")]
    missing = {n for line in prose for n in _numbers(line)
               if not _found(n, sources) and n.lstrip("-") not in DEMO_PROSE_NUMBERS}
    assert not missing, f"docs/demo.md's prose holds numbers no committed run has: {missing}"


def test_long_runs_exit_statuses_are_the_codes_cord_train_returns():
    from cord.train.checkpoint import EXIT_CHECKPOINT_FAILED, EXIT_PREEMPTED
    from cord.train.evaluation import EXIT_COLLAPSED

    page = (DOCS / "long_runs.md").read_text()
    table = dict(re.findall(r"^\| (-?[\d/ +N-]+?) \| (.+?) \|$", page, re.M))
    assert "a checkpoint could not be written" in table[str(EXIT_CHECKPOINT_FAILED)]
    assert "stopped by SIGTERM/SIGINT" in table[str(EXIT_PREEMPTED)]
    assert "stopped by `collapse_guard=stop`" in table[str(EXIT_COLLAPSED)]
    assert set(table) == {"0", "1", "2", "74", "75", "76", "128 + N", "-9 / 137"}


def test_performance_page_quotes_ratios_only_in_its_generated_blocks():
    page = (DOCS / "performance.md").read_text()
    outside = re.sub(r"<!-- (perf-[\w-]+):start -->.*?<!-- \1:end -->", "", page, flags=re.S)
    assert "perf-tables" not in outside and "perf-sparse" not in outside
    assert not re.search(r"\bx\d+\.\d+", outside), "quote ratios inside the generated blocks"


def test_trainer_page_prose_defaults_are_the_config_defaults():
    from cord.config import CordConfig

    page = (DOCS / "trainer.md").read_text()
    quoted = re.findall(r"`(\w+)`\s+=\s+(\d(?:[\d.e-]*\d)?)", page)
    assert {name for name, _ in quoted} >= {"learning_rate", "num_generations",
                                            "max_completion_length"}
    defaults = CordConfig()
    for name, value in quoted:
        assert float(value) == getattr(defaults, name), f"docs/trainer.md: {name} = {value}"


# (page, what it says, the file it comes from, what that file says)
QUOTED = [
    ("verification.md", "inside `timeout_s` 550", "scripts/gpu_check.sh", "timeout_s of 550"),
    ("verification.md", "writes 8 files in `$OUT` itself", "scripts/gpu_check.sh",
     "It writes 8 files, json and markdown"),
    ("verification.md", "5 bf16 steps of `cord train", "scripts/gpu_check.sh", "local steps=5 "),
    ("verification.md", "add up to 470 s (540 if every run used its grace)",
     "scripts/gpu_check.sh", "up to 470 s (540 with every grace spent)"),
    ("verification.md", "SIGKILL 10 s later", "scripts/gpu_check.sh", "\nGRACE=10\n"),
    ("long_runs.md", "SIGKILL at 10 seeded points", "tests/test_checkpoint.py",
     "SIGKILL at 10 seeded random points"),
]


@pytest.mark.parametrize("page,says,source,source_says", QUOTED, ids=lambda x: str(x)[:30])
def test_numbers_quoted_in_docs_prose_are_those_of_their_source(page, says, source, source_says):
    assert says in " ".join((DOCS / page).read_text().split()), f"docs/{page} no longer says it"
    assert source_says in (ROOT / source).read_text(), f"{source} changed: update docs/{page}"


# Numbers of docs/claim_demo.md, each with where it is from (none is a result: those live in the
# generated run reports and the README's generated demo block).
CLAIM_PAGE_NUMBERS = {
    "2601.16547": "the paper's arXiv id",
    "36.20": "the paper: CORD on Qwen2-Audio GSM8K",
    "36.05": "the paper: forward KL on Qwen2-Audio GSM8K",
    "47": "the worked example", "38": "the worked example", "7": "the worked example",
    "8": "the worked example", "15": "the worked example", "1": "the worked example",
    "4": "the worked example", "3": "the worked example", "85": "the worked example",
    "44": "calibration by hand (claim/data.py ClaimTaskConfig.text_questions docstring)",
    "250": "calibration by hand (claim/data.py ClaimTaskConfig.text_questions docstring)",
    "55": "calibration by hand (claim/data.py ClaimTaskConfig.text_questions docstring)",
    "300": "calibration by hand (claim/data.py ClaimTaskConfig.text_questions docstring)",
    "20": "the paper's K", "95": "the CI level", "0": "seed 0",
    "10": "claim/positions.py LATE_TOKEN, where late_first_errors starts counting",
    "40": "the tens-first worked example", "30": "the tens-first worked example",
    "70": "the tens-first worked example", "80": "the tens-first worked example",
    "13": "the tens-first format's units-digit tokens (13 and 15; claim/data.py answer_format)",
    "0.40": "a precondition bound (claim/verdict.py BOUNDS, fixed by issue 38)",
    "0.80": "a precondition bound", "0.50": "a precondition bound", "0.85": "a precondition bound",
    "0.30": "a precondition bound", "0.3": "a precondition bound, as results.json writes it",
    "0.70": "a precondition bound", "0.95": "a precondition bound", "0.20": "a precondition bound",
    "2": "the position bands 0-1, 2-10 (claim/positions.py BANDS); the rate grid's seed count",
    "5": "the rate grid (1e-5, 3e-5)", "6": "the analysis plan's item numbers",
    "0.283": "the restate run's late_first_errors (docs/demo_claim_restate/results.json)",
    "74": "the restate run's teacher_accuracy 0.74 (docs/demo_claim_restate/results.json)",
    "59": "the shipped base's teacher_accuracy 0.588 (docs/claim_candidates, docs/demo_claim)",
    "60.0": "the --full run's wall time in minutes (docs/demo_claim_full/results.json)",
}


def test_claim_demo_page_numbers_are_explained_and_its_config_names_exist():
    from dataclasses import fields

    from cord.demo.claim.data import ClaimTaskConfig

    text = (DOCS / "claim_demo.md").read_text()
    missing = {n for n in _numbers(text) if n.lstrip("-") not in CLAIM_PAGE_NUMBERS}
    assert not missing, f"docs/claim_demo.md holds numbers nobody explained: {missing}"
    names = {f.name for f in fields(ClaimTaskConfig)}
    for name in ("text_questions", "pool_questions", "audio_qa", "self_correction",
                 "correction_share", "compare_text", "compare_audio", "compare_pool"):
        assert f"`{name}`" in text and name in names, name
    doc = ClaimTaskConfig.__doc__ or ""
    assert doc and "44% right at 250, 55% at 300" in (
        (ROOT / "cord" / "demo" / "claim" / "data.py").read_text())


def test_readme_demo_block_is_generated_from_the_committed_run():
    import json

    from cord.demo.claim.report import readme_block

    run = "docs/demo_claim"
    text = README.read_text()
    block = text.split("<!-- demo-verdict:start -->\n", 1)[1].split("<!-- demo-verdict:end -->")[0]
    results = json.loads((ROOT / run / "results.json").read_text())
    assert block == readme_block(results, run), (
        "README's demo block is stale: paste `python -m cord.demo.claim.report docs/demo_claim` "
        "between the demo-verdict markers")
