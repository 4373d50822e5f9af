"""Peak resident memory of one provider's fwd+bwd in this (fresh) process.

    python -m bench.rss_probe '{"loss": "reverse_kl", "provider": "torch", "n_tokens": 64,
                                "vocab": 151936, "dtype": "float32"}'

Prints one JSON line. The peak is the kernel's high-water mark (VmHWM, the value behind
``getrusage(RUSAGE_SELF).ru_maxrss``) over exactly one fwd+bwd: the mark is reset through
``/proc/self/clear_refs`` after imports, input creation and any compile warm-up, so neither
the import peak nor torch.compile's compiler appear in it. Where the reset is not allowed the
probe falls back to ``ru_maxrss`` since process start and says so (``"hwm_reset": false``).
"""

from __future__ import annotations

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


def probe(spec: dict) -> dict:
    from bench.inputs import make_hidden_case, make_logits_case
    from bench.measure import run_once
    from bench.providers import ALL_PROVIDERS, FUSED_LOSSES, get_provider

    if spec["loss"] not in ALL_PROVIDERS:
        raise ValueError(f"unknown loss {spec['loss']!r}")
    provider = get_provider(spec["loss"], spec["provider"])
    device = torch.device("cpu")
    dtype = getattr(torch, spec.get("dtype", "float32"))
    if spec["loss"] in FUSED_LOSSES:
        case = make_hidden_case(spec["n_tokens"], spec["vocab"], spec["hidden"], dtype=dtype,
                                device=device)
    else:
        case = make_logits_case(spec["n_tokens"], spec["vocab"], dtype=dtype, device=device)
    closure = provider.build(case)
    if provider.needs_warmup:
        run_once(closure, case.leaves(), "fwd+bwd", device)
    for t in case.leaves():
        t.grad = None
    gc.collect()
    reset = _reset_high_water_mark()
    baseline_kib = _status_kib("VmRSS")
    run_once(closure, case.leaves(), "fwd+bwd", device)
    peak_kib = _status_kib("VmHWM")
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "peak_bytes": peak_kib * 1024,
        "baseline_bytes": baseline_kib * 1024,
        "delta_bytes": (peak_kib - baseline_kib) * 1024,
        "ru_maxrss_bytes": maxrss_kib * 1024,
        "hwm_reset": reset,
        "method": "fresh_process_rss",
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(probe(json.loads(argv[0]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
