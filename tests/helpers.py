"""Helpers the tests import (``from helpers import ...``); fixtures stay in conftest.py."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
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


#: Shapes every logits-in divergence test runs, each here for a reason: (lead, V, dtype,
#: temperature). Each test file adds its own many-rows and V > BLOCK_V cases.
LOGIT_CASES = [
    pytest.param((3, 5), 123, torch.float32, 1.0, id="N15-V123-fp32"),  # V not a power of two
    pytest.param((2, 3), 1, torch.float32, 1.0, id="N6-V1-fp32"),  # V=1: the divergence is 0
    pytest.param((2, 4), 257, torch.bfloat16, 1.0, id="N8-V257-bf16"),  # one past a block
    pytest.param((2, 4), 200, torch.float16, 2.0, id="N8-V200-fp16-tau2"),
]


def logit_pair(lead, V, dtype, seed=0, scale=3.0, device="cpu"):
    """Student and teacher logits ``lead + (V,)`` of std ``scale``, seeded (the logits-in
    divergence tests' inputs)."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(*lead, V, generator=g) * scale).to(device, dtype)
    u = (torch.randn(*lead, V, generator=g) * scale).to(device, dtype)
    return s, u


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


@dataclass
class Launched:
    """A two-process launch: its exit status, the launcher's own output (both ranks' lines run
    together there: for failure messages only) and each rank's stdout + stderr, read from the
    rank's own log files."""

    returncode: int
    output: str
    ranks: list[str]

    def every_rank(self, text: str) -> bool:
        return all(text in rank for rank in self.ranks)


def launch_two_cpu(root, cwd, program, *, timeout=300):
    """``program`` (``["-m", "cord.cli", "train", ...]`` or a script and its arguments) on two
    CPU processes (gloo) through ``accelerate launch``. torchrun writes each rank's streams to
    its own files in a new folder under ``cwd`` (``--log_dir``, ``--tee 3``); they are read
    from there, never from the shared pipe, where the ranks' writes interleave mid-line."""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    logs = Path(tempfile.mkdtemp(prefix="rank_logs_", dir=cwd))
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(root / "examples" / "accelerate" / "cpu_2proc.yaml"),
           "--main_process_port", str(free_port()), "--log_dir", str(logs), "--tee", "3",
           *program]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root),
           "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    ranks = []
    for rank in range(2):  # torchrun's layout: <log_dir>/<run id>/attempt_<n>/<rank>/
        found = sorted(logs.glob(f"*/attempt_*/{rank}"), key=lambda p: int(p.parent.name[8:]))
        files = [found[-1] / name for name in ("stdout.log", "stderr.log")] if found else []
        ranks.append("".join(f.read_text() for f in files if f.is_file()))
    return Launched(proc.returncode, proc.stdout[-3000:] + proc.stderr[-3000:], ranks)


def launch_cpu_train(root, cwd, options, *, timeout=300):
    """``cord train options`` on two CPU processes (see launch_two_cpu)."""
    return launch_two_cpu(root, cwd, ["-m", "cord.cli", "train", *options], timeout=timeout)


def final_weights(out):
    from safetensors.torch import load_file

    return load_file(out / "final" / "model.safetensors")


def logged(out, key="loss"):
    """``key`` of every line of ``out/metrics.jsonl``."""
    import json

    return [json.loads(x)[key] for x in (out / "metrics.jsonl").read_text().splitlines()]
