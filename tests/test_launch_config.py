"""The launch configuration of the streaming kernels: the block_v / num_warps settings
(CORD_BLOCK_V / CORD_NUM_WARPS) are checked, reach the launch, and the interpreter fix for
numpy >= 2.4 is in place."""

from __future__ import annotations

import contextlib

import pytest
import torch
from helpers import COMPILED_SESSION, rel_err

from cord_kernels import reference as ref
from cord_kernels import reverse_kl, settings, token_logprobs
from cord_kernels.core.rows import block_v, launch_device, num_warps, rows_writable


def test_block_v_defaults_and_small_vocabularies(kernel_settings):
    kernel_settings(block_v=4096)
    assert block_v(151_936) == 4096
    assert block_v(100) == 128 and block_v(1) == 16
    kernel_settings(block_v=8192)
    assert block_v(151_936) == 8192 and block_v(5000) == 8192


@pytest.mark.parametrize("value, match", [("6000", "power of two"), ("8", "power of two"),
                                          ("big", "must be an integer")])
def test_block_v_must_be_a_power_of_two(value, match):
    """Read from the environment at import, so a bad value fails there, naming the variable."""
    with pytest.raises(ValueError, match=f"CORD_BLOCK_V.*{match}"):
        settings.from_env({"CORD_BLOCK_V": value})


def test_num_warps(kernel_settings):
    assert settings.from_env({}).num_warps == 8
    assert settings.from_env({"CORD_NUM_WARPS": "16"}).num_warps == 16
    kernel_settings(num_warps=16)
    assert num_warps() == 16
    with pytest.raises(ValueError, match="CORD_NUM_WARPS.* must be one of"):
        settings.from_env({"CORD_NUM_WARPS": "12"})


def test_an_override_is_checked_and_undone():
    before = settings.get()
    with pytest.raises(ValueError, match="power of two"):
        with settings.override(block_v=100):
            pass
    with pytest.raises(ValueError, match="no cord_kernels setting named"):
        with settings.override(blockv=64):
            pass
    with settings.override(block_v=64, num_warps=2) as inside:
        assert settings.get() == inside and (block_v(151_936), num_warps()) == (64, 2)
        with settings.override(num_warps=4):
            assert (block_v(151_936), num_warps()) == (64, 4)
        assert num_warps() == 2
    assert settings.get() == before


def test_booleans_read_as_triton_reads_them():
    assert settings.from_env({"TRITON_INTERPRET": "1", "CORD_TORCH_COMPILE": "true"}) == \
        settings.Settings(interpret=True, torch_compile=True)
    assert not settings.from_env({"TRITON_INTERPRET": "0", "CORD_TORCH_COMPILE": ""}).interpret


def test_other_blocks_and_warps_give_the_same_values(kernel_settings, device, interpret):
    """Several blocks per row (BLOCK_V 16 for V=300) with 2 and 16 warps."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 300, generator=g).to(device).requires_grad_()
    u = torch.randn(5, 300, generator=g).to(device)
    labels = torch.randint(0, 300, (5,), generator=g).to(device)
    s64 = s.detach().double().requires_grad_()
    d64, lp64 = ref.reverse_kl(s64, u.double()), ref.token_logprobs(s64, labels)
    for bv, w in ((16, 2), (128, 16)):
        kernel_settings(block_v=bv, num_warps=w)
        d = reverse_kl(s, u, impl="triton")
        lp = token_logprobs(s, labels, impl="triton")
        assert rel_err(d, d64) < 1e-5 and rel_err(lp, lp64) < 1e-5
        (gs,) = torch.autograd.grad(d.sum() + lp.sum(), s)
        (g64,) = torch.autograd.grad(d64.sum() + lp64.sum(), s64, retain_graph=True)
        assert rel_err(gs, g64) < 1e-5


def test_launch_device_is_the_tensors():
    assert isinstance(launch_device(torch.zeros(1)), contextlib.nullcontext)
    if torch.cuda.is_available():
        ctx = launch_device(torch.zeros(1, device="cuda"))
        assert isinstance(ctx, torch.cuda.device)


def test_rows_writable():
    x = torch.randn(3, 4, 5, 7)
    assert rows_writable(x) and rows_writable(x[:, :, :-1]) and rows_writable(x[0, 0])
    assert not rows_writable(x.transpose(-1, -2))
    assert not rows_writable(x.permute(1, 0, 2, 3))  # leading dims that do not merge
    assert rows_writable(x.permute(1, 0, 2, 3)[0])  # 3-D: always one (A, R, V) view


@pytest.mark.skipif(COMPILED_SESSION, reason="the interpreter is not used in this session")
def test_interpreter_scalar_index_fix_is_applied_when_numpy_needs_it():
    import numpy as np

    from cord_kernels.core.interpreter import _numpy_converts_sized_arrays

    try:
        from triton.runtime import interpreter
    except Exception as err:
        pytest.skip(f"no Triton interpreter: {err}")
    fixed = getattr(interpreter._patch_lang_tensor, "_cord_fixed", False)
    assert fixed == (not _numpy_converts_sized_arrays())
    assert _numpy_converts_sized_arrays() == (np.lib.NumpyVersion(np.__version__) < "2.4.0")
