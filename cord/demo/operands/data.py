"""The demo's task: multi-step spoken arithmetic with worked answers, and a tiny audio LM whose
audio side is competent but worse than its text side.

A question chains small sums and differences ("what is seven plus two minus three"), asked as
text or as speech synthesised by eSpeak NG. The answer restates the operands it heard and works
step by step, ``"7+2=9, 9-3=6, so the answer is 6"``, so an early mis-hearing changes
every step after it: the cascade the paper describes, over answers long enough that a top-K
selection of tokens is selective.

The gap is made the way it arises in real audio LMs. The language model learns the task from
plenty of TEXT; its audio path gets plenty of transcription (it learns to hear the words) but
only a few hundred spoken questions with worked answers. It then answers written questions
well and spoken ones clearly worse, although it can hear them: the same knowledge, reached
worse from audio. That is what CORD distils across.

Splits (no question is in two of them; :func:`make_splits`):

- ``train``: text QA and audio transcription in pre-training; ``audio_qa`` (a small part of
  it) also as spoken QA. The rest, ``distill``, is the pool of unlabelled audio/text pairs that
  every post-training method uses. Every training question uses one of the first
  ``len(TEMPLATES) - 1`` phrasings.
- ``val``: held-out questions for choosing learning rates (never scored in the tables).
- ``eval``: held-out questions, scored from audio and from text.
- ``transfer``: held-out questions in the last phrasing, which pre-training saw only as text
  and post-training never sees: does what post-training teaches carry to a new question form?

Audio: word-slot speech of :mod:`cord.demo.speech`; pre-training batches and the base's
lookup: :mod:`cord.demo.base`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cord.demo.base import TRANSCRIBE_INSTRUCTION, Batcher, nll, pretrain_schedule, pretrain_step
from cord.demo.task import DemoTaskConfig
from cord.models.adapter import Qwen2AudioAdapter
from cord.models.tiny import build_tiny_qwen2_audio

NUMBER_WORDS = "zero one two three four five six seven eight nine".split()
OPERATIONS = {"plus": ("+", lambda a, b: a + b), "minus": ("-", lambda a, b: a - b)}
TEMPLATES = ("{q}", "what is {q}", "compute {q}", "tell me {q}")
"""Question phrasings; the last one is the transfer form (text-only in pre-training)."""


@dataclass(frozen=True)
class GapTaskConfig(DemoTaskConfig):
    """Sizes of the task, the model and the pre-training that opens the gap.

    The defaults are the default demo; :data:`QUICK` is the CI size.
    """

    operations: int = 3
    """Operations per question (operands = operations + 1); every intermediate result is a
    single digit, so each step is one lookup and the chain is what makes it hard."""
    eval_questions: int = 500
    val_questions: int = 200
    transfer_questions: int = 200
    train_questions: int = 3000
    audio_qa: int = 150
    """Spoken questions WITH worked answers in pre-training; the other training questions are
    heard only for transcription and form the unlabelled pool that post-training distils on."""
    audio_qa_every: int = 2
    """One audio-QA batch every this many steps (text QA and transcription every step)."""



QUICK = GapTaskConfig(eval_questions=120, val_questions=40, transfer_questions=40,
                      train_questions=400, audio_qa=60, pretrain_steps=60, batch_size=8,
                      hidden_size=32, num_layers=1, audio_d_model=32, audio_layers=1)
"""The CI smoke test's size: the whole pipeline in about a minute, far too little pre-training
for the paper's regime (its report says which preconditions fail)."""


# --------------------------------------------------------------------------------------------
# Questions and worked answers
# --------------------------------------------------------------------------------------------


def _chains(operations: int):
    """Every (operands, ops) chain whose intermediate results all stay in 0..9."""
    for nums in itertools.product(range(10), repeat=operations + 1):
        for ops in itertools.product(OPERATIONS, repeat=operations):
            value, steps = nums[0], []
            for op, b in zip(ops, nums[1:]):
                symbol, fn = OPERATIONS[op]
                result = fn(value, b)
                if not 0 <= result <= 9:
                    break
                steps.append(f"{value}{symbol}{b}={result},")
                value = result
            else:
                yield nums, ops, steps, value


def worked_answer(steps: Sequence[str], answer: int | str) -> str:
    """``"7+2=9, 9-3=6, so the answer is 6"``: the completion the model learns (digits and
    symbols are one token each: about 27 tokens with three operations)."""
    return " ".join([*steps, f"so the answer is {answer}"])


def all_questions(config: GapTaskConfig) -> list[dict[str, Any]]:
    """One record per chain: ``{id, question, answer, worked}`` (no phrasing yet)."""
    if config.operations < 1:
        raise ValueError(f"operations must be >= 1, got {config.operations}")
    out = []
    for nums, ops, steps, value in _chains(config.operations):
        words = [NUMBER_WORDS[nums[0]]]
        for op, b in zip(ops, nums[1:]):
            words += [op, NUMBER_WORDS[b]]
        out.append({"id": "".join(str(n) + (o[0] if i < len(ops) else "")
                                  for i, (n, o) in enumerate(itertools.zip_longest(nums, ops,
                                                                                   fillvalue=""))),
                    "question": " ".join(words), "answer": str(value),
                    "worked": worked_answer(steps, value)})
    return out


def _phrase(record: dict[str, Any], template: int) -> dict[str, Any]:
    text = TEMPLATES[template].format(q=record["question"])
    return {"id": f"t{template}-{record['id']}", "text": text, "answer": record["answer"],
            "worked": record["worked"], "transcript": text, "kind": "math"}


def make_splits(config: GapTaskConfig) -> dict[str, list[dict[str, Any]]]:
    """``{"train", "audio_qa", "distill", "val", "eval", "transfer"}`` (see the module doc):
    records ``{id, text, answer, worked, transcript, kind}``; no chain is in two splits."""
    chains = all_questions(config)
    sizes = {"train_questions": config.train_questions, "val_questions": config.val_questions,
             "eval_questions": config.eval_questions,
             "transfer_questions": config.transfer_questions}
    for name, n in sizes.items():
        if n < 1:
            raise ValueError(f"{name} must be >= 1, got {n}")
    if sum(sizes.values()) > len(chains):
        raise ValueError(f"the splits need {sum(sizes.values())} questions but "
                         f"operations={config.operations} gives only {len(chains)}")
    if not 0 < config.audio_qa < config.train_questions:
        raise ValueError(f"audio_qa must be in [1, {config.train_questions - 1}], got "
                         f"{config.audio_qa}")
    rng = random.Random(config.seed)
    rng.shuffle(chains)
    known = len(TEMPLATES) - 1  # phrasings seen in every role; the last is the transfer form

    def phrased(records, offset, templates):
        return [_phrase(r, templates[(offset + i) % len(templates)])
                for i, r in enumerate(records)]

    cut = np.cumsum([config.train_questions, config.val_questions, config.eval_questions,
                     config.transfer_questions])
    train = phrased(chains[: cut[0]], 0, range(known))
    splits = {
        "train": train,
        "audio_qa": train[: config.audio_qa],
        "distill": train[config.audio_qa :],
        "val": phrased(chains[cut[0] : cut[1]], 1, range(known)),
        "eval": phrased(chains[cut[1] : cut[2]], 2, range(known)),
        "transfer": phrased(chains[cut[2] : cut[3]], 0, [known]),
    }
    # the transfer form is learnt from text in pre-training (on the training chains)
    splits["text_only"] = phrased(chains[: cut[0]], 0, [known])
    longest = max(len(r["text"].split()) for v in splits.values() for r in v)
    if longest * config.slot_seconds > config.chunk_seconds:
        # the feature extractor would silently cut the end of the longest questions
        raise ValueError(f"chunk_seconds={config.chunk_seconds} is shorter than the longest "
                         f"question ({longest} words of {config.slot_seconds} s); raise it")
    return splits


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def task_words() -> list[str]:
    words = set(NUMBER_WORDS) | set(OPERATIONS) | {TRANSCRIBE_INSTRUCTION}
    for t in TEMPLATES:
        words |= {w for w in t.split() if not w.startswith("{")}
    words |= set(worked_answer([], "").split())
    return sorted(words)


def build_gap_model(config: GapTaskConfig, *, seed: int | None = None) -> Qwen2AudioAdapter:
    """A random-init tiny Qwen2-Audio sized by ``config``, and its adapter."""
    model, processor = build_tiny_qwen2_audio(
        seed=config.seed if seed is None else seed,
        vocab_words=task_words(),
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        audio_d_model=config.audio_d_model,
        audio_layers=config.audio_layers,
        chunk_seconds=config.chunk_seconds,
    )
    return Qwen2AudioAdapter(model, processor)


# --------------------------------------------------------------------------------------------
# Pre-training: opens the gap
# --------------------------------------------------------------------------------------------


def pretrain(adapter, splits: dict[str, list[dict]], config: GapTaskConfig, *,
             progress: bool = True) -> list[dict[str, float]]:
    """Trains the tiny model on text QA (every train question, in every phrasing including
    the transfer form), audio transcription (every train question) and audio QA
    (``splits["audio_qa"]`` only, one batch every ``audio_qa_every`` steps). Returns the loss
    history. Deterministic for a given configuration (its own generator, fixed order)."""
    model = adapter.model
    model.train()
    torch.manual_seed(config.seed)  # dropout-free model; the generator below draws the batches
    gen = torch.Generator().manual_seed(config.seed)
    text_qa = Batcher(adapter, splits["train"] + splits["text_only"], "text", "worked")
    transcribe = Batcher(adapter, splits["train"], "audio", "transcript")
    audio_qa = Batcher(adapter, splits["audio_qa"], "audio", "worked")
    opt, sched, bar = pretrain_schedule(model, config, "pre-training (text >> audio)", progress)
    history = []

    def draw(b: Batcher):
        size = min(config.batch_size, b.n)
        return torch.randperm(b.n, generator=gen)[:size]

    for step in bar:
        losses = {"text_qa": nll(adapter, *text_qa.batch(draw(text_qa))),
                  "transcribe": nll(adapter, *transcribe.batch(draw(transcribe)))}
        if step % config.audio_qa_every == 0:
            losses["audio_qa"] = nll(adapter, *audio_qa.batch(draw(audio_qa)))
        history.append(pretrain_step(model, opt, sched, losses, bar, step, digits=3))
    model.eval()
    return history


