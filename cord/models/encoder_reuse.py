"""One audio-encoder pass per distinct clip: the N copies of a GRPO group share it.

A GRPO group repeats each audio prompt N times (``PromptBatch.repeat_interleave``), and a plain
forward would run the audio encoder and projector on all N identical copies. While
:func:`shared_calls` is active, each patched call runs on the distinct rows only (the first
copy of each) and its outputs are indexed back out to every copy, so the values are the same
and the gradient of every copy flows into the one shared pass.

Across calls, a ``cache`` that lives as long as the prompts keeps each output: the token-loss
rollout and the GRPO group sample from the same prompts (one pass in eval mode without
gradients) and are scored on them (one pass in train mode with gradients), so the encoder runs
twice per prompt and step, whatever N.

Rows are found by their leading dimension: an argument whose first dimension is ``k * R``
(R = rows of the audio features, k >= 1: Voxtral's projector sees k frames per row) is cut to
the distinct rows, and an output of ``k * U`` rows (U distinct) is expanded back. Encoders that
flatten every clip into one sequence of tokens (the Qwen Omni audio towers) pass ``tokens``, the
output tokens of each row, and their outputs are split and re-joined by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack, contextmanager

import torch


def distinct_rows(source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, inverse)``: the first row of each distinct value of ``source`` and, for every
    row, the position of its value in ``first``."""
    first: dict[int, int] = {}
    rows, inverse = [], []
    for r, s in enumerate(source.tolist()):
        if s not in first:
            first[s] = len(rows)
            rows.append(r)
        inverse.append(first[s])
    return torch.tensor(rows, dtype=torch.long), torch.tensor(inverse, dtype=torch.long)


def _take(t: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Rows ``rows`` of ``t`` seen as ``n`` blocks of ``t.shape[0] // n`` rows."""
    k = t.shape[0] // n
    blocks = t.reshape(n, k, *t.shape[1:]).index_select(0, rows.to(t.device))
    return blocks.reshape(len(rows) * k, *t.shape[1:])


def _expand_output(value, inverse, unique, tokens):
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        if tokens is not None and value.shape[0] == int(tokens.sum()):
            pieces = value.split(tokens.tolist())
            return torch.cat([pieces[i] for i in inverse.tolist()])
        if tokens is None and value.shape[0] % unique == 0:
            return _take(value, inverse, unique)
        return value
    if isinstance(value, dict):  # a ModelOutput: setting the key sets the attribute too
        for key in list(value.keys()):
            value[key] = _expand_output(value[key], inverse, unique, tokens)
        return value
    if isinstance(value, tuple):
        return type(value)(_expand_output(v, inverse, unique, tokens) for v in value)
    return value


@contextmanager
def shared_calls(calls: Sequence[tuple[object, str]], source: torch.Tensor | None, *,
                 tokens: torch.Tensor | None = None, cache: dict | None = None,
                 num_rows: int | None = None):
    """Patches ``getattr(owner, name)`` for each ``(owner, name)`` of ``calls`` so that it runs
    once per distinct row of ``source`` (see the module docstring).

    Args:
        calls: bound methods to patch, e.g. ``(model.audio_tower, "forward")``.
        source: (R,) the original row of each of the R feature rows (equal = identical
            features); None: every row is distinct (``num_rows`` of them).
        tokens: (R,) output tokens of each row for encoders whose outputs are flattened.
        cache: a dict that lives as long as the prompts (``PromptBatch.audio_cache``): a call
            made again on the same rows, in the same train/eval mode and with gradients on or
            off alike, returns the stored output instead of running (the sampling calls share
            one pass, the scoring calls another). None: no reuse across calls.
    """
    if source is None:
        if cache is None or not num_rows:
            yield
            return
        source = torch.arange(num_rows)
    elif cache is None and len(set(source.tolist())) == len(source):
        yield
        return
    first, inverse = distinct_rows(source.cpu())
    n_rows, unique = len(source), len(first)
    unique_tokens = None if tokens is None else tokens.cpu()[first]
    rows_key = tuple(source.cpu()[first].tolist())

    def cut(value):
        if (isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] > 0
                and value.shape[0] % n_rows == 0):
            return _take(value, first, n_rows)
        return value

    with ExitStack() as stack:
        for owner, name in calls:
            original = getattr(owner, name)
            previous = vars(owner).get(name, _MISSING)  # an instance attribute already there

            def once(*args, _original=original, _owner=owner, _name=name, **kwargs):
                key = (id(_owner), _name, rows_key, getattr(_owner, "training", None),
                       torch.is_grad_enabled())
                if cache is not None and key in cache:
                    out = cache[key]
                else:
                    out = _original(*[cut(a) for a in args],
                                    **{k: cut(v) for k, v in kwargs.items()})
                    if cache is not None:
                        cache[key] = out
                return _expand_output(_copy(out), inverse, unique, unique_tokens)

            setattr(owner, name, once)
            stack.callback(_restore, owner, name, previous)
        yield


_MISSING = object()


def _copy(value):
    """A shallow copy of a ModelOutput (expanding it must not change the cached one)."""
    return type(value)(**value) if isinstance(value, dict) else value


def _restore(owner, name, previous) -> None:
    if previous is _MISSING:
        delattr(owner, name)
    else:
        setattr(owner, name, previous)
