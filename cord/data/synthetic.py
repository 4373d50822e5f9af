"""Small synthetic paired sets, for tests, demos and ``cord train dataset=arithmetic``.

:func:`make_arithmetic_dataset` and :func:`make_multiple_choice_dataset` make text-only
records; :func:`synthetic_dataset` adds their audio, spoken by eSpeak NG or, for tests and
TTS-less runs, :func:`tone_audio` (one tone per character).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cord.data.paired import resample
from cord.data.spoken_math import to_spoken
from cord.data.tts import get_engine

#: The synthesized tasks, by the name ``CordConfig.dataset`` gives them.
SYNTHETIC_AUDIO = ("tts", "tone")


def tone_audio(text: str, sampling_rate: int, *, seconds_per_char: float = 0.04,
               max_seconds: float = 6.0) -> np.ndarray:
    """A deterministic stand-in for speech: one short tone per character (its code sets the
    pitch), so different texts give different audio. For tests and TTS-less demos."""
    n_chars = max(1, min(len(text), int(max_seconds / seconds_per_char)))
    n = int(seconds_per_char * sampling_rate)
    t = np.arange(n, dtype=np.float32) / sampling_rate
    tones = [0.3 * np.sin(2 * np.pi * (200.0 + 12.0 * (ord(c) % 128)) * t) for c in text[:n_chars]]
    return np.concatenate(tones).astype(np.float32)


def tone_records(texts: Iterable[str], sampling_rate: int = 16_000) -> list[dict[str, Any]]:
    """Paired records whose audio is :func:`tone_audio` of their text (no TTS needed)."""
    return [{"id": str(i), "text": t, "answer": None,
             "audio": {"array": tone_audio(t, sampling_rate), "sampling_rate": sampling_rate}}
            for i, t in enumerate(texts)]


def synthetic_dataset(name: str, n: int, *, seed: int = 0, audio: str = "tts",
                      sampling_rate: int = 16_000, progress: bool = True) -> list[dict[str, Any]]:
    """``n`` records of the task ``name`` ("arithmetic" or "multiple_choice") with audio at
    ``sampling_rate``: eSpeak NG speech of the spoken form (``audio="tts"``) or tones."""
    makers = {"arithmetic": make_arithmetic_dataset,
              "multiple_choice": make_multiple_choice_dataset}
    if name not in makers:
        raise ValueError(f"name must be one of {list(makers)}, got {name!r}")
    if audio not in SYNTHETIC_AUDIO:
        raise ValueError(f"audio must be one of {list(SYNTHETIC_AUDIO)}, got {audio!r}")
    records = makers[name](n, seed=seed)
    if audio == "tone":
        for r in records:
            r["audio"] = {"array": tone_audio(r["text"], sampling_rate),
                          "sampling_rate": sampling_rate}
        return records
    engine = get_engine("espeak")
    for r in tqdm(records, desc="synthesizing audio", disable=not progress):
        wave = engine.synthesize(to_spoken(r["text"]))
        r["audio"] = {"array": resample(wave, engine.sample_rate, sampling_rate),
                      "sampling_rate": sampling_rate}
    return records


_OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def make_arithmetic_dataset(
    n: int,
    seed: int = 0,
    *,
    max_operand: int = 20,
    operations: str = "+-*",
    template: str = "What is {a} {op} {b}?",
) -> list[dict[str, str]]:
    """``n`` arithmetic questions ``{"id", "text", "answer", "kind": "math"}``, e.g.
    ``"What is 7 + 5?"`` / ``"12"``. Operands are in [0, max_operand]; subtraction puts the larger
    operand first so answers are never negative. Same ``seed``, same records."""
    _check_count(n)
    if max_operand < 1:
        raise ValueError(f"max_operand must be >= 1, got {max_operand}")
    if not operations or any(op not in _OPERATIONS for op in operations):
        raise ValueError(f"operations must be a non-empty string over '+-*', got {operations!r}")
    rng = random.Random(seed)
    records = []
    for i in range(n):
        op = rng.choice(operations)
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        if op == "-" and b > a:
            a, b = b, a
        records.append({
            "id": f"arith-{i:05d}",
            "text": template.format(a=a, op=op, b=b),
            "answer": str(_OPERATIONS[op](a, b)),
            "kind": "math",
        })  # fmt: skip
    return records


_CATEGORIES = {
    "an animal": ["dog", "cat", "horse", "lion", "rabbit", "sheep", "tiger", "mouse"],
    "a color": ["red", "blue", "green", "yellow", "purple", "brown", "white", "black"],
    "a fruit": ["apple", "banana", "grape", "lemon", "cherry", "mango", "peach", "pear"],
    "a vehicle": ["car", "bus", "train", "bicycle", "truck", "boat", "plane", "tractor"],
}
_LETTERS = "ABCD"


def _category_question(rng: random.Random) -> tuple[str, str, list[str]]:
    category, *others = rng.sample(sorted(_CATEGORIES), k=len(_CATEGORIES))
    correct = rng.choice(_CATEGORIES[category])
    wrong = [rng.choice(_CATEGORIES[c]) for c in others[:3]]
    return f"Which of these is {category}?", correct, wrong


def _largest_question(rng: random.Random) -> tuple[str, str, list[str]]:
    numbers = rng.sample(range(1, 100), k=4)
    correct = max(numbers)
    return "Which number is the largest?", str(correct), [str(x) for x in numbers if x != correct]


def _sum_question(rng: random.Random) -> tuple[str, str, list[str]]:
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    offsets = rng.sample([-3, -2, -1, 1, 2, 3], k=3)
    return f"What is {a} + {b}?", str(a + b), [str(a + b + d) for d in offsets]


def make_multiple_choice_dataset(
    n: int, seed: int = 0, *, instruction: str | None = None
) -> list[dict[str, str]]:
    """``n`` four-option questions ``{"id", "text", "answer", "kind": "choice"}``, options
    labelled (A)-(D) one per line, the gold letter uniformly placed, e.g.::

        Which of these is a fruit?
        (A) bus
        (B) mango
        (C) red
        (D) lion                        answer "B"

    ``instruction`` (e.g. ``"Answer with the letter."``) is appended as a last line."""
    _check_count(n)
    rng = random.Random(seed)
    makers = (_category_question, _largest_question, _sum_question)
    records = []
    for i in range(n):
        question, correct, wrong = makers[i % len(makers)](rng)
        position = rng.randrange(4)
        options = wrong[:position] + [correct] + wrong[position:]
        lines = [question] + [
            f"({letter}) {o}" for letter, o in zip(_LETTERS, options, strict=True)
        ]
        if instruction:
            lines.append(instruction)
        records.append({
            "id": f"choice-{i:05d}",
            "text": "\n".join(lines),
            "answer": _LETTERS[position],
            "kind": "choice",
        })  # fmt: skip
    return records


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
