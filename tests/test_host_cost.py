"""Host cost per call of the logits-in divergences (issue 34 part E): the Python prelude
(option checks, impl dispatch, the registry, the custom op and autograd Function around the
kernels), measured on the CPU with the Triton launchers stubbed so that only the host work is
timed. Budget: 100 us per forward call.

Robust to a loaded 2-core machine: the statistic is the best of 5 medians of 200 calls each
(a burst of load moves one median, not all five). Machines of one kind differ by 2x, and a
pytest-xdist neighbour slows this one further, so the budget is also read as a ratio measured
side by side: the same statistic for the cheapest custom autograd Function (one output
allocated, nothing else) was 7.3 us on the 2-core AMD EPYC where reverse_kl measured 70-72 us
(65-80 us with 6 sessions sharing it); a call passes at <= 100 us, or at <= 100 / 7.3 times
that reference on a slower machine.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

import cord_kernels as ck
from cord_kernels.divergences.jsd import triton_ops as jsd_ops
from cord_kernels.divergences.kl import triton_ops as kl_ops
from cord_kernels.divergences.tvd import triton_ops as tvd_ops

BUDGET_US = 100.0
#: The reference call's cost on the machine the budget was set on (see the module docstring).
REFERENCE_US = 7.3


class _Reference(torch.autograd.Function):
    """The least a custom-op loss can cost on the host: one Function, one output."""

    @staticmethod
    def forward(ctx, s, u):
        return s.new_zeros(s.shape[:-1], dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad):
        return None, None


def _rows(x):
    return x.numel() // x.shape[-1]


def _stub_launchers(monkeypatch):
    """The launchers the custom ops call, replaced by ones that only allocate their outputs."""
    monkeypatch.setattr(kl_ops, "kl_fwd", lambda x, y, rm, t: (
        x.new_zeros(_rows(x), dtype=torch.float32), x.new_zeros(_rows(x), 2, dtype=torch.float32),
        x.new_zeros(_rows(x), 2, dtype=torch.float32)))
    monkeypatch.setattr(jsd_ops, "jsd_fwd", lambda x, y, b, t: (
        x.new_zeros(_rows(x), dtype=torch.float32),
        x.new_zeros(_rows(x), jsd_ops.N_STATS, dtype=torch.float32)))
    monkeypatch.setattr(tvd_ops, "tvd_fwd", lambda x, y, t: (
        x.new_zeros(_rows(x), dtype=torch.float32),
        x.new_zeros(_rows(x), tvd_ops.N_STATS, dtype=torch.float32)))


def _host_us(call, calls: int = 200, rounds: int = 5) -> float:
    """Best of ``rounds`` medians of ``calls`` timed calls, in microseconds."""
    for _ in range(20):  # warm-up: first-call caches (custom op dispatch, autograd)
        call()
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        medians.append(statistics.median(times))
    return min(medians) * 1e6


@pytest.mark.parametrize("name, call", [
    ("reverse_kl", lambda s, u: ck.reverse_kl(s, u, impl="triton")),
    ("forward_kl", lambda s, u: ck.forward_kl(s, u, impl="triton", temperature=0.7)),
    ("jsd", lambda s, u: ck.jsd(s, u, beta=0.5, impl="triton")),
    ("tvd", lambda s, u: ck.tvd(s, u, impl="triton")),
])
def test_forward_host_cost_within_budget(name, call, interpret, monkeypatch, one_torch_thread):
    _stub_launchers(monkeypatch)
    s = torch.randn(4, 8, 64, requires_grad=True)
    u = torch.randn(4, 8, 64)
    assert call(s, u).shape == (4, 8)  # the stubs are what runs
    us = _host_us(lambda: call(s, u))
    ref = _host_us(lambda: _Reference.apply(s, u))
    print(f"\n{name}: {us:.1f} us per forward call (launchers stubbed); the reference call "
          f"{ref:.1f} us")
    assert us <= BUDGET_US or us / ref <= BUDGET_US / REFERENCE_US, (
        f"{name}: {us:.1f} us per call > {BUDGET_US} us, and {us / ref:.1f}x the reference call "
        f"({ref:.1f} us) > {BUDGET_US / REFERENCE_US:.1f}x")


def test_options_are_checked_once_per_call(interpret, monkeypatch):
    """One ``LossOptions.check`` per public call, whatever path the call takes."""
    from cord_kernels.core import options

    _stub_launchers(monkeypatch)
    calls = []
    check = options.LossOptions.check.__func__
    monkeypatch.setattr(options.LossOptions, "check",
                        classmethod(lambda cls, **kw: calls.append(1) or check(cls, **kw)))
    s, u = torch.randn(2, 16), torch.randn(2, 16)
    for fn in (ck.reverse_kl, ck.forward_kl, ck.jsd, ck.tvd):
        calls.clear()
        fn(s, u, impl="triton")
        assert calls == [1], fn.__name__
