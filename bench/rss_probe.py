"""Peak resident memory of providers' fwd+bwd, measured in this (fresh) process.

    python -m bench.rss_probe '[{"loss": "reverse_kl", "provider": "torch", "n_tokens": 64,
                                 "vocab": 151936, "dtype": "float32"}, ...]'

Prints one JSON list, one result per spec. The specs share one shape (the inputs are built
once). The peak is the kernel's high-water mark (VmHWM, the value behind
``getrusage(RUSAGE_SELF).ru_maxrss``) over exactly one fwd+bwd: before each provider runs,
freed memory goes back to the OS (``malloc_trim``) and the mark is reset through
``/proc/self/clear_refs``, after imports, input creation and any compile warm-up, so neither
the import peak, torch.compile's compiler nor an earlier provider appear in it. Where the
reset is not allowed the probe falls back to ``ru_maxrss`` since process start and says so
(``"hwm_reset": false``).
"""

from __future__ import annotations

import ctypes
import gc
import json
import resource
import sys
from pathlib import Path

import torch


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_high_water_mark() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current
    except OSError:
        return False
    return True


def _trim_heap() -> None:
    """Returns freed heap pages to the OS, so the next provider's peak starts from a clean
    resident set (glibc only; elsewhere a no-op)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _case(spec: dict, cache: dict):
    from bench.inputs import make_hidden_case, make_logits_case
    from bench.providers import FUSED_LOSSES

    device = torch.device("cpu")
    dtype = getattr(torch, spec.get("dtype", "float32"))
    fused = spec["loss"] in FUSED_LOSSES
    key = (fused, spec["n_tokens"], spec["vocab"], spec.get("hidden"), dtype)
    if key not in cache:
        cache.clear()
        gc.collect()
        cache[key] = (make_hidden_case(spec["n_tokens"], spec["vocab"], spec["hidden"],
                                       dtype=dtype, device=device) if fused else
                      make_logits_case(spec["n_tokens"], spec["vocab"], dtype=dtype,
                                       device=device))
    return cache[key]


def probe(spec: dict, cache: dict | None = None) -> dict:
    from bench.measure import run_once
    from bench.providers import ALL_PROVIDERS, get_provider

    if spec["loss"] not in ALL_PROVIDERS:
        raise ValueError(f"unknown loss {spec['loss']!r}")
    provider = get_provider(spec["loss"], spec["provider"])
    device = torch.device("cpu")
    case = _case(spec, {} if cache is None else cache)
    closure = provider.build(case)
    if provider.needs_warmup:
        run_once(closure, case.leaves(), "fwd+bwd", device)
    for t in case.leaves():
        t.grad = None
    gc.collect()
    _trim_heap()
    reset = _reset_high_water_mark()
    baseline_kib = _status_kib("VmRSS")
    run_once(closure, case.leaves(), "fwd+bwd", device)
    peak_kib = _status_kib("VmHWM")
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for t in case.leaves():
        t.grad = None
    return {
        "peak_bytes": peak_kib * 1024,
        "baseline_bytes": baseline_kib * 1024,
        "delta_bytes": (peak_kib - baseline_kib) * 1024,
        "ru_maxrss_bytes": maxrss_kib * 1024,
        "hwm_reset": reset,
        "method": "fresh_process_rss",
    }


def probe_all(specs: list[dict]) -> list[dict]:
    cache: dict = {}
    out = []
    for spec in specs:
        try:
            out.append(probe(spec, cache))
        except Exception as err:  # one provider failing leaves the others' numbers
            out.append({"error": f"{type(err).__name__}: {str(err)[:200]}"})
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    specs = json.loads(argv[0])
    print(json.dumps(probe_all(specs if isinstance(specs, list) else [specs])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
