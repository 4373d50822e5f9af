"""pytest hooks of ``pytest bench/``: a header naming device and shapes, and at session end
the recorded rows written to ``bench/results/`` (results.json, README_PERF.md, a plot).

The machinery (timing, memory, inputs) lives in ``bench.harness``; tests call
``bench.harness.run_benchmark``.
"""

from __future__ import annotations

import pytest

from bench.config import BenchConfig
from bench.harness import CONFIG, RECORDER
from bench.recorder import Recorder
from bench.report import write_outputs


def pytest_report_header(config):
    shapes = ", ".join(s.id for s in CONFIG.logits_shapes + CONFIG.fused_shapes)
    return [f"cord bench: device={CONFIG.device} dtype={CONFIG.dtype} full={CONFIG.full}",
            f"cord bench shapes: {shapes}"]


def pytest_sessionfinish(session, exitstatus):
    if not (RECORDER.rows or RECORDER.static_gpu):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    say = reporter.write_line if reporter is not None else print
    say("")
    paths = write_outputs(RECORDER, CONFIG.out_dir)
    say(RECORDER.summary_text())
    for p in paths:
        say(f"cord bench: wrote {p}")


@pytest.fixture(scope="session")
def bench_config() -> BenchConfig:
    return CONFIG


@pytest.fixture(scope="session")
def recorder() -> Recorder:
    return RECORDER
