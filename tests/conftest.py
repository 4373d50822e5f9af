"""Shared test setup: fixtures only (helpers that tests import are in ``helpers.py``).

Two kinds of session:

* the default (CPU CI): Triton decides at decoration time whether a ``@triton.jit`` function
  runs in the interpreter, so ``TRITON_INTERPRET=1`` is set before anything imports
  ``cord_kernels``; it is then removed again, and the ``interpret`` setting (which
  ``cord_kernels.settings`` read from it at import) is off for the session, so that
  ``impl=None`` means the torch path on CPU (trainer tests stay fast). Kernel tests opt into
  Triton with the ``interpret`` fixture. Interpreted kernels can never run on CUDA tensors, so every
  ``device="cuda"`` case and every ``gpu`` test skips here, saying so.
* ``CORD_TEST_COMPILED=1`` (what ``scripts/gpu_check.sh`` runs, in a fresh process): the
  kernels are compiled for the GPU, ``device="cuda"`` cases and ``tests/gpu`` run, and the
  CPU cases of the kernel tests skip (they need the interpreter).
"""

from __future__ import annotations

import contextlib
import os
import warnings

from helpers import COMPILED_SESSION, cuda_skip_reason  # imports torch, never triton

if COMPILED_SESSION and os.environ.get("TRITON_INTERPRET", "0") == "1":
    raise RuntimeError("CORD_TEST_COMPILED=1 runs the compiled kernels: unset TRITON_INTERPRET")

if not COMPILED_SESSION:
    _had = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    import cord_kernels  # noqa: E402,F401  (decorates the kernels as interpreted functions)

    if _had is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _had

import pytest  # noqa: E402
import torch  # noqa: E402
import torch._dynamo  # noqa: E402

from cord_kernels import settings  # noqa: E402

# The interpreter evaluates both branches of tl.where with numpy, so -inf - -inf warns there.
warnings.filterwarnings("ignore", category=RuntimeWarning, module="triton")


# Kernel and loss tests take ``device``: cpu (interpreter or torch path) and cuda (compiled
# kernels). Each case is marked with its device so that ``-m cuda`` selects the GPU half.
DEVICES = [pytest.param("cpu", marks=pytest.mark.cpu),
           pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    if request.param == "cuda":
        reason = cuda_skip_reason()
        if reason:
            pytest.skip(reason)
    elif COMPILED_SESSION:
        pytest.skip("CPU kernel cases need the Triton interpreter: plain pytest runs them")
    return torch.device(request.param)


@pytest.fixture(scope="session", autouse=True)
def _torch_path_by_default():
    """impl=None on CPU tensors is the torch path, although the kernels were decorated for the
    interpreter (see the module docstring)."""
    with settings.override(interpret=False):
        yield


@pytest.fixture
def kernel_settings():
    """``kernel_settings(block_v=16, num_warps=2)`` changes cord_kernels settings for the rest
    of the test (``cord_kernels.settings.override``); each call stacks on the previous one."""
    with contextlib.ExitStack() as stack:
        yield lambda **changes: stack.enter_context(settings.override(**changes))


@pytest.fixture
def interpret(request, kernel_settings, monkeypatch):
    """Run Triton kernels on CPU tensors through the interpreter (a no-op for CUDA cases,
    which run the compiled kernels): the ``interpret`` setting for cord_kernels, and the
    variable for Triton, which reads it at run time too (its gluon module, imported at the
    first launch, asserts it)."""
    on_cuda = "device" in request.fixturenames and request.getfixturevalue("device").type == "cuda"
    if on_cuda:
        return
    if COMPILED_SESSION:
        pytest.skip("needs the Triton interpreter: plain pytest (not CORD_TEST_COMPILED=1) runs it")
    kernel_settings(interpret=True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")


# Dynamo builds its table of torch functions lazily, the first time it is imported. Build it
# now, from the real torch.empty/empty_like, before any test can run under ``nan_poison``.
torch._dynamo.trace_rules.get_torch_obj_rule_map()


@pytest.fixture
def nan_poison(monkeypatch):
    """fla's trick: every freshly allocated float tensor starts as NaN, so an output element a
    kernel forgot to write fails the comparison instead of passing by luck."""
    nan = float("nan")
    orig_empty, orig_empty_like = torch.empty, torch.empty_like

    def poison(t):
        if t.dtype.is_floating_point:
            t.fill_(nan)
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(orig_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(orig_empty_like(*a, **k)))


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads on a shared CPU; they only contend."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """The uninterrupted ``cord train`` run that the kill and signal tests compare against
    (``child_runs.reference_run``): built once per session."""
    from child_runs import reference_run

    return reference_run(tmp_path_factory.mktemp("reference") / "run")
