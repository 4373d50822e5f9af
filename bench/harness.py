"""The benchmark harness: config, inputs cache, timing, memory and recording.

Every benchmark test calls :func:`run_benchmark`, which times one provider in one mode with
pytest-benchmark (median over rounds, warm-up untimed), measures peak memory for fwd+bwd and
records a row in :data:`RECORDER`; ``bench/conftest.py`` writes the results at session end.
"""

from __future__ import annotations

import gc
import time

import pytest
import torch

from bench.config import BenchConfig, load_config
from bench.inputs import make_hidden_case, make_logits_case
from bench.measure import cpu_peak_rss, cuda_peak_bytes, mode_callables, run_once
from bench.providers import FUSED_LOSSES, Provider
from bench.report import Recorder

CONFIG: BenchConfig = load_config()
RECORDER = Recorder(CONFIG)


# ---------------------------------------------------------------------------------- inputs


class _CaseCache:
    """Keeps the inputs of the latest shape only: tests are ordered shape-major, and holding
    several (N, V) cases at once would distort the memory numbers and risk running out."""

    def __init__(self):
        self.key = None
        self.case = None

    def get(self, key, make):
        if key != self.key:
            self.case = None
            gc.collect()
            if CONFIG.on_cuda:
                torch.cuda.empty_cache()
            self.case = make()
            self.key = key
        return self.case


_CASES = _CaseCache()


def get_case(loss: str, shape):
    d = dict(dtype=CONFIG.dtype, device=CONFIG.device)
    if loss in FUSED_LOSSES:
        key = ("hidden", shape)
        return _CASES.get(key, lambda: make_hidden_case(shape.n_tokens, shape.vocab,
                                                        shape.hidden, **d))
    return _CASES.get(("logits", shape), lambda: make_logits_case(shape.n_tokens, shape.vocab,
                                                                  **d))


def _available_bytes() -> int:
    if CONFIG.on_cuda:
        free, _total = torch.cuda.mem_get_info(CONFIG.device)
        return free
    import psutil

    return psutil.virtual_memory().available


def memory_guard(loss: str, shape) -> str | None:
    """A reason to skip when the naive provider's (N, V) tensors cannot fit: inputs, grads and
    log-softmax temporaries come to about ten fp32 (N, V) tensors."""
    need = 10 * shape.n_tokens * shape.vocab * 4
    have = _available_bytes()
    if need > 0.8 * have:
        return (f"needs ~{need / 2**30:.1f} GiB for the naive provider's (N, V) tensors, "
                f"{have / 2**30:.1f} GiB available")
    return None


# ----------------------------------------------------------------------------------- timing


def _rounds_for(seconds: float) -> int:
    # Cheap calls get more rounds for a stable median; a 10 s fused-linear call gets one or
    # two (its warm-up call is a sample too, recorded as calibration_s).
    floor = 3 if seconds < 1.0 else 2 if seconds < 5.0 else 1
    return max(floor, CONFIG.rounds(seconds))


def run_benchmark(benchmark, *, loss: str, provider: Provider, shape, mode: str) -> None:
    """Times ``provider`` on ``loss`` at ``shape`` in ``mode`` and records the result."""
    base = dict(loss=loss, provider=provider, shape=shape, mode=mode)
    reason = provider.unavailable(CONFIG.device) or memory_guard(loss, shape)
    if reason:
        RECORDER.skip(**base, reason=reason)
        pytest.skip(reason)

    case = get_case(loss, shape)
    closure = provider.build(case)
    leaves = case.leaves()
    benchmark.group = f"{loss} {shape.id} {mode}"
    benchmark.extra_info.update(provider=provider.name, role=provider.role)

    # Warm-up, untimed: compiles torch.compile graphs and Triton kernels, and tells how many
    # rounds fit the time budget.
    try:
        if provider.needs_warmup:
            run_once(closure, leaves, "fwd+bwd", CONFIG.device)
        t0 = time.perf_counter()
        run_once(closure, leaves, mode, CONFIG.device)
        calibration = time.perf_counter() - t0
    except Exception as err:  # a peer that breaks on this input is a result, not a crash
        RECORDER.error(**base, reason=f"{type(err).__name__}: {err}")
        raise

    target, setup = mode_callables(closure, leaves, mode, CONFIG.device)
    benchmark.pedantic(target, setup=setup, rounds=_rounds_for(calibration), iterations=1,
                       warmup_rounds=0)
    stats = benchmark.stats.stats if benchmark.stats is not None else None

    memory = None
    if mode == "fwd+bwd" and CONFIG.on_cuda:
        memory = cuda_peak_bytes(closure, leaves, CONFIG.device)
        benchmark.extra_info.update(memory)
    for t in leaves:
        t.grad = None
    row = RECORDER.ok(**base, stats=stats, calibration_s=calibration, memory=memory)
    if mode == "fwd+bwd" and not CONFIG.on_cuda:
        spec = {"loss": loss, "provider": provider.name, "n_tokens": shape.n_tokens,
                "vocab": shape.vocab, "dtype": str(CONFIG.dtype).removeprefix("torch.")}
        if hasattr(shape, "hidden"):
            spec["hidden"] = shape.hidden
        PENDING_PROBES.append((row, spec))


# CPU memory probes wait for the end of the session: each is a fresh interpreter (seconds of
# imports), and run after the timings they can go two at a time without disturbing them (a
# process's peak RSS does not depend on what else runs).
PENDING_PROBES: list[tuple[dict, dict]] = []
PROBE_WORKERS = 2


def run_pending_probes(report=print) -> None:
    """Fills ``row["memory"]`` of every recorded CPU fwd+bwd row from a fresh-process probe."""
    from concurrent.futures import ThreadPoolExecutor

    jobs, PENDING_PROBES[:] = list(PENDING_PROBES), []
    if not jobs:
        return
    report(f"cord bench: measuring peak RSS in {len(jobs)} fresh processes "
           f"({PROBE_WORKERS} at a time)")
    with ThreadPoolExecutor(PROBE_WORKERS) as pool:
        futures = [(row, spec, pool.submit(cpu_peak_rss, spec)) for row, spec in jobs]
        for i, (row, spec, fut) in enumerate(futures, 1):
            row["memory"] = fut.result()
            mem = row["memory"]
            got = (f"{mem['delta_bytes'] / 2**20:.0f} MiB over inputs" if "delta_bytes" in mem
                   else mem.get("error", "?"))
            report(f"  [{i}/{len(jobs)}] {spec['loss']} {row['shape_id']} "
                   f"{spec['provider']}: {got}")
