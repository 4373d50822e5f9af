"""Helpers the tests import (``from helpers import ...``); fixtures stay in conftest.py."""

from __future__ import annotations

import os

import torch

# CORD_TEST_COMPILED=1: a session on the compiled kernels (see conftest.py), where the
# device="cuda" cases and tests/gpu run.
COMPILED_SESSION = os.environ.get("CORD_TEST_COMPILED", "0") == "1"


def cuda_skip_reason() -> str | None:
    """Why the compiled Triton kernels cannot run on CUDA in this session, or None."""
    if not torch.cuda.is_available():
        return "CUDA is not available here (torch.cuda.is_available() is False)"
    if not COMPILED_SESSION:
        return ("this session decorated the kernels for the Triton interpreter (tests/conftest.py "
                "sets TRITON_INTERPRET=1); run CUDA cases with CORD_TEST_COMPILED=1, as "
                "scripts/gpu_check.sh does")
    return None


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (absolute when the reference is exactly 0)."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(ref).all():
        same_nonfinite = torch.equal(torch.isfinite(out), torch.isfinite(ref)) and torch.equal(
            out[~torch.isfinite(ref)], ref[~torch.isfinite(ref)]
        )
        if not same_nonfinite:
            return float("inf")
        keep = torch.isfinite(ref)
        out, ref = out[keep], ref[keep]
    num = (out - ref).norm().item()
    den = ref.norm().item()
    return num / den if den > 0 else num


def pyproject() -> dict:
    """The repository's pyproject.toml, parsed."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    from pathlib import Path

    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


# (dtype, relative tolerance) of SPEC section 4.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


# -- multi-process training runs (test_distributed.py, test_fsdp2.py) -------------------------

#: Prompts of equal token length: the same padding in any batch, so one process with the global
#: batch and several with a share of it score the same tokens.
ARITH_TEXTS = [f"What is {a} + {b}?" for a, b in [(1, 2), (3, 4), (5, 1), (2, 2), (6, 3), (8, 1),
                                                   (4, 4), (7, 2)]]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_paired_dataset(path, texts=ARITH_TEXTS):
    """A paired JSONL with one tone WAV per text under ``path``; returns the JSONL path."""
    import json

    import soundfile as sf

    from cord.data.synthetic import tone_audio

    lines = []
    for i, text in enumerate(texts):
        wav = path / f"q{i}.wav"
        sf.write(wav, tone_audio(text, 16000), 16000, subtype="FLOAT")
        lines.append(json.dumps({"id": f"q{i}", "text": text, "audio": wav.name}))
    data = path / "paired.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return data


def launch_cpu_train(root, cwd, options, *, timeout=300):
    """``cord train`` on two CPU processes (gloo) through ``accelerate launch``; returns the
    completed process (stdout + stderr captured)."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(root / "examples" / "accelerate" / "cpu_2proc.yaml"),
           "--main_process_port", str(free_port()), "-m", "cord.cli", "train", *options]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root),
           "ACCELERATE_USE_CPU": "true"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def final_weights(out):
    from safetensors.torch import load_file

    return load_file(out / "final" / "model.safetensors")


def logged(out, key="loss"):
    """``key`` of every line of ``out/metrics.jsonl``."""
    import json

    return [json.loads(x)[key] for x in (out / "metrics.jsonl").read_text().splitlines()]
