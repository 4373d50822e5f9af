"""Graceful stop on SIGTERM/SIGINT (a SLURM preemption, a Ctrl-C).

The first signal only sets a flag: the trainer finishes the optimizer step it is in, saves a
checkpoint, logs the reason and returns; ``cord train`` then exits with
:data:`cord.train.checkpoint.EXIT_PREEMPTED`. A second signal exits at once with status
128 + the signal number (130 for SIGINT, 143 for SIGTERM), which is safe because checkpoints
are atomic. Under accelerate every process checks the flag through one all-reduce per step,
so all of them stop after the same step even when the signal reaches them at different times.

Example:
    >>> with GracefulStop() as stop:
    ...     while training:
    ...         step()
    ...         if stop.requested(accelerator):
    ...             save(); break
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from cord.train.checkpoint import any_process

__all__ = ["GracefulStop", "STOP_SIGNALS"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    """Context manager installing the two-stage handler for ``signals`` (main thread only:
    Python delivers signals there; elsewhere it installs nothing and never requests a stop)."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = tuple(signals)
        self.reason: str | None = None  # the name of the first signal received
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None:
            sys.stderr.write(f"cord: second signal ({name}): exiting now\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.reason = name
        sys.stderr.write(f"cord: received {name}: finishing the current step, then saving a "
                         "checkpoint and exiting (send it again to exit at once)\n")
        sys.stderr.flush()

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def requested(self, accelerator) -> bool:
        """Whether any process received a stop signal; the same answer on every process
        (a collective: call it at the same point of every step on all of them)."""
        return any_process(accelerator, self.reason is not None)
