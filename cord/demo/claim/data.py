"""The claim task: where the paper makes its claim. An IMPERFECT text teacher, a task no method
post-trains on (transfer) and an audio skill no method post-trains on (retention).

Three skills share one tiny audio LM:

- **Column arithmetic** (the distillation task). "forty seven plus thirty eight", spoken or
  written; the answer works left to right, each heard digit first written at the step that
  uses it, ``"tens 40+30=70, units 7+8=15 carry 1, tens 70+10=80, answer 85"`` (25-42
  tokens), so a mis-hearing surfaces mid-answer, after partial results the student wrote
  itself (``answer_format``; ``"restate"`` writes both operands first).
- **Comparison** (the transfer task). "which is larger forty seven or thirty eight" ->
  ``"47 or 38: tens 4>3, answer 47"``, learnt from plenty of text and a few spoken items, so it
  has a modality gap of its own; no post-training method ever sees it.
- **Counting beeps** (the retention task). A clip of 1-6 tones and the instruction "count" ->
  ``"answer 4"``. Audio only; no post-training method ever sees it.

The teacher is imperfect by construction: the text side learns arithmetic from only
``text_questions`` worked examples (trained to convergence), and the distillation pool holds
fresh questions it never saw, on which it is right only part of the time. Nothing is injected
into its answers: its errors are its own. With ``self_correction`` on, about 10% of the
pre-training chains contain a wrong step followed by ``"no,"`` and the fix, so the teacher can
recover from a wrong prefix, which gives reverse KL along wrong audio rollouts something to pull
toward (:func:`cord.demo.claim.measure.recovery_rate` measures it).

Every split is a set of distinct questions: no arithmetic question is in two of ``text_train``,
``pool``, ``val`` and ``eval``; no comparison in two of ``compare_train``, ``compare_val`` and
``transfer``; beep clips are drawn from disjoint seeds. :func:`fresh_eval_sets` draws new
held-out sets from another seed, excluding everything any model trained on.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from cord.demo.base import TRANSCRIBE_INSTRUCTION, Batcher, nll, pretrain_schedule, pretrain_step
from cord.demo.speech import SAMPLING_RATE, SlottedSpeech
from cord.demo.task import DemoTaskConfig
from cord.models.adapter import Qwen2AudioAdapter
from cord.models.tiny import build_tiny_qwen2_audio

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
ARITH_TEMPLATES = ("{q}", "what is {q}", "compute {q}")
COMPARE_TEMPLATE = "which is larger {a} or {b}"
COUNT_INSTRUCTION = "count"
CHAIN_WORDS = ("units", "tens", "carry", "borrow", "answer", "no", "or")


def number_words(n: int) -> str:
    """``47 -> "forty seven"`` for 0 <= n <= 99."""
    if not 0 <= n <= 99:
        raise ValueError(f"n must be in [0, 99], got {n}")
    if n < 20:
        return ONES[n]
    tens, units = divmod(n, 10)
    return TENS[tens] + ("" if units == 0 else " " + ONES[units])


@dataclass(frozen=True)
class ClaimTaskConfig(DemoTaskConfig):
    """Sizes of the claim task, the model and its pre-training.

    The defaults are the default demo's; :data:`CLAIM_QUICK` is the CI size.
    """

    # Plain fields with defaults: they resemble other configs by shape only (duplicates).
    text_questions: int = 250
    """Worked arithmetic examples the text side learns from: the knob that makes the teacher
    imperfect (measured on fresh questions: 44% right at 250, 55% at 300 with 33 corrected
    chains; 84% at 350 with four corrected chains per question, which teach arithmetic too).
    The shipped tens-first base (250, four corrected chains per question) is right on 59% of
    the pool: ``teacher_accuracy``, measured on the base in every run."""
    audio_qa: int = 250
    """Of those, the ones also heard as spoken questions with worked answers (all 250 in the
    shipped base: at 120 the tens-first audio side is too weak, 0.33 of the text side's
    accuracy; ``docs/claim_candidates``)."""
    pool_questions: int = 2000
    """The distillation pool: fresh questions, heard in pre-training only for transcription."""
    val_questions: int = 200
    eval_questions: int = 1000
    compare_text: int = 2000
    compare_audio: int = 40
    """Of the text comparisons, the ones also heard in pre-training: few, so that the transfer
    task has a modality gap of its own (13 points with 100 heard; the paper's transfer sets
    have 20 and more), its audio errors mostly in hearing the operands."""
    compare_val: int = 100
    transfer_questions: int = 600
    compare_pool: int = 1600
    """Fresh spoken comparisons that only the transfer control (gold SFT on the transfer task
    itself) post-trains on: 200 steps x 8 prompts, none repeated."""
    count_train: int = 2000
    count_val: int = 100
    retention_items: int = 400
    max_beeps: int = 6
    count_slots: int = 8
    self_correction: bool = True
    correction_share: float = 0.1
    """Share of the text arithmetic chains seen in pre-training that hold a wrong step, "no,"
    and the fix (each batch of ``batch_size`` clean chains comes with this share of corrected
    ones, drawn from ``correction_variants`` different corruptions of every training question,
    so the prior teaches spotting a wrong step rather than a few memorised slips)."""
    correction_variants: int = 4
    answer_format: str = "tens_first"
    """How a worked chain is written (:data:`ANSWER_FORMATS`). ``"restate"`` restates both
    operands first (``"47+38: units 7+8=15 carry 1, ..."``), so a mis-heard digit shows at
    tokens 0-4, where the student's prefix is the prompt; ``"tens_first"`` adds left to right,
    ``"tens 40+30=70, units 7+8=15 carry 1, tens 70+10=80, answer 85"``: each heard digit
    first appears at the step that uses it, the units digits after a partial result the
    student wrote itself (tokens 13 and 15). The shipped base is ``"tens_first"``: with
    ``"restate"`` only 28% of the base's wrong audio answers go wrong after token 10 (the
    pre-registered bound is 30%)."""
    pretrain_steps: int = 1500

    def key_fields(self) -> dict[str, Any]:
        """The fields that change pre-training (the held-out sizes and the post-training pools
        are cut after everything pre-training reads, so they leave the base as it is)."""
        fields = {k: v for k, v in asdict(self).items() if k not in HELD_OUT_FIELDS}
        if fields["answer_format"] == "restate":  # the field's default names the bases
            del fields["answer_format"]  # shipped before it existed: their keys stay
        return {"task": "claim", **fields}


ANSWER_FORMATS = ("restate", "tens_first")

HELD_OUT_FIELDS = ("val_questions", "eval_questions", "compare_val", "transfer_questions",
                   "compare_pool", "count_val", "retention_items")
"""Fields that pre-training never reads: each is cut after every split it reads (``val`` and
``eval`` after ``pool``; ``compare_val``, ``transfer`` and ``compare_pool`` after
``compare_train``) or drawn from its own seed (the beeps)."""


CLAIM_QUICK = ClaimTaskConfig(
    text_questions=120, audio_qa=40, pool_questions=200, val_questions=20, eval_questions=40,
    compare_text=200, compare_audio=40, compare_val=20, transfer_questions=30, compare_pool=40,
    count_train=80, count_val=20, retention_items=20, hidden_size=32, num_layers=1,
    audio_d_model=32, audio_layers=1, pretrain_steps=60, batch_size=8)
"""The CI smoke test's size: the whole pipeline in about a minute, far too little pre-training
for the paper's regime (its report says which preconditions fail)."""


# --------------------------------------------------------------------------------------------
# Column arithmetic
# --------------------------------------------------------------------------------------------


def arithmetic_steps(a: int, op: str, b: int) -> tuple[list[str], int]:
    """The column-by-column steps of ``a op b`` and the result (``op`` is "+" or "-")."""
    au, at = a % 10, a // 10
    bu, bt = b % 10, b // 10
    if op == "+":
        units = au + bu
        carry = units // 10
        steps = [f"units {au}+{bu}={units}" + (" carry 1," if carry else ",")]
        tens = at + bt + carry
        steps.append(f"tens {at}+{bt}" + ("+1" if carry else "") + f"={tens},")
        return steps, a + b
    if op == "-":
        if a < b:
            raise ValueError(f"a - b needs a >= b, got {a} - {b}")
        borrow = int(au < bu)
        units = au + 10 * borrow - bu
        steps = [f"units {au + 10 * borrow}-{bu}={units}" + (" borrow 1," if borrow else ",")]
        tens = at - borrow - bt
        steps.append(f"tens {at}" + ("-1" if borrow else "") + f"-{bt}={tens},")
        return steps, a - b
    raise ValueError(f"op must be '+' or '-', got {op!r}")


def tens_first_steps(a: int, op: str, b: int) -> tuple[list[str], int]:
    """The left-to-right steps of ``a op b`` (``op`` "+" or "-") and the result: the tens (by
    place value) first, then the units with their carry or borrow, then the tens corrected by
    it: ``tens 40+30=70, units 7+8=15 carry 1, tens 70+10=80`` for 47+38."""
    au, at = a % 10, 10 * (a // 10)
    bu, bt = b % 10, 10 * (b // 10)
    if op == "+":
        tens, units = at + bt, au + bu
        steps = [f"tens {at}+{bt}={tens},",
                 f"units {au}+{bu}={units}" + (" carry 1," if units > 9 else ",")]
        if units > 9:
            steps.append(f"tens {tens}+10={tens + 10},")
        return steps, a + b
    if op == "-":
        if a < b:
            raise ValueError(f"a - b needs a >= b, got {a} - {b}")
        tens, borrow = at - bt, int(au < bu)
        steps = [f"tens {at}-{bt}={tens},",
                 f"units {au + 10 * borrow}-{bu}={au + 10 * borrow - bu}"
                 + (" borrow 1," if borrow else ",")]
        if borrow:
            steps.append(f"tens {tens}-10={tens - 10},")
        return steps, a - b
    raise ValueError(f"op must be '+' or '-', got {op!r}")


def worked_chain(a: int, op: str, b: int, fmt: str = "restate") -> str:
    """``"47+38: units 7+8=15 carry 1, tens 4+3+1=8, answer 85"`` (``fmt="restate"``) or
    ``"tens 40+30=70, units 7+8=15 carry 1, tens 70+10=80, answer 85"``
    (``fmt="tens_first"``)."""
    if fmt == "tens_first":
        steps, value = tens_first_steps(a, op, b)
        return " ".join([*steps, f"answer {value}"])
    if fmt != "restate":
        raise ValueError(f"fmt must be one of {ANSWER_FORMATS}, got {fmt!r}")
    steps, value = arithmetic_steps(a, op, b)
    return " ".join([f"{a}{op}{b}:", *steps, f"answer {value}"])


def heard_positions(a: int, op: str, b: int, fmt: str = "restate") -> list[int]:
    """Character offsets, in :func:`worked_chain`, of the FIRST appearance of each heard
    operand digit (the places where a mis-hearing shows). ``restate``: the whole restatement
    ``"47+38:"``; ``tens_first``: the tens digits in the first step and the units digits in
    the second."""
    if fmt == "restate":
        return list(range(len(f"{a}{op}{b}:")))
    chain = worked_chain(a, op, b, fmt)
    tens, units = chain.index("tens ") + 5, chain.index("units ") + 6
    units_a = len(str(a % 10 + 10 * int(op == "-" and a % 10 < b % 10)))
    return [tens, tens + len(str(10 * (a // 10))) + 1, units + units_a - 1,
            units + units_a + 1]


def misheard(a: int, op: str, b: int, rng: random.Random) -> int:
    """A second operand one digit off (b ± 1 or b ± 10, as a mis-heard "thirty eight" gives),
    still two-digit and, for a difference, still at most ``a``."""
    options = [c for c in (b - 1, b + 1, b - 10, b + 10)
               if 10 <= c <= 99 and (op == "+" or c <= a)]
    return rng.choice(options)


def corrected_chain(a: int, op: str, b: int, rng: random.Random, fmt: str = "restate") -> str:
    """The chain with one wrong step followed by ``"no,"`` and the right step: a wrong restated
    operand (as a mis-hearing would give) or a wrong column result (as a slip would)."""
    if fmt == "tens_first":
        return _corrected_tens_first(a, op, b, rng)
    steps, value = arithmetic_steps(a, op, b)
    head = f"{a}{op}{b}:"
    where = rng.randrange(3)
    if where == 0:  # the operand restatement
        wrong = f"{a}{op}{misheard(a, op, b, rng)}:"
        return " ".join([wrong, "no,", head, *steps, f"answer {value}"])
    step = steps[where - 1]
    eq = step.index("=")
    end = eq + 1
    while end < len(step) and step[end].isdigit():
        end += 1
    right = int(step[eq + 1 : end])
    bad = right + rng.choice((-1, 1)) if right > 0 else right + 1
    wrong_step = step[:eq + 1] + str(bad)
    fixed = list(steps)
    fixed[where - 1] = f"{wrong_step} no, {step.split(' ', 1)[1]}"
    return " ".join([head, *fixed, f"answer {value}"])


def _corrected_tens_first(a: int, op: str, b: int, rng: random.Random) -> str:
    """:func:`corrected_chain` for the tens-first format: one step cut after a wrong result,
    then ``"no,"`` and the right step without its label. The wrong result is a slip (one off)
    or, for a sum, the units step with b's units digit mis-heard (one off), as a mis-hearing
    gives where that digit first appears."""
    steps, value = tens_first_steps(a, op, b)
    where = rng.randrange(len(steps) + int(op == "+"))
    if where == len(steps):  # a mis-heard units digit of b
        au, bu = a % 10, b % 10
        heard = bu + rng.choice([d for d in (-1, 1) if 0 <= bu + d <= 9])
        where, wrong_step = 1, f"units {au}+{heard}={au + heard}"
    else:
        step = steps[where]
        eq = step.index("=")
        end = eq + 1
        while end < len(step) and step[end].isdigit():
            end += 1
        right = int(step[eq + 1 : end])
        wrong_step = step[:eq + 1] + str(right + rng.choice((-1, 1)) if right > 0 else right + 1)
    fixed = list(steps)
    fixed[where] = f"{wrong_step} no, {steps[where].split(' ', 1)[1]}"
    return " ".join([*fixed, f"answer {value}"])


def _arith_record(a: int, op: str, b: int, template: int, fmt: str = "restate"
                  ) -> dict[str, Any]:
    q = f"{number_words(a)} {'plus' if op == '+' else 'minus'} {number_words(b)}"
    text = ARITH_TEMPLATES[template].format(q=q)
    _, value = arithmetic_steps(a, op, b)
    return {"id": f"ar-{a}{op}{b}", "text": text, "transcript": text, "answer": str(value),
            "worked": worked_chain(a, op, b, fmt), "operands": [a, op, b], "kind": "math",
            "heard": heard_positions(a, op, b, fmt)}


def all_arith() -> list[tuple[int, str, int]]:
    """Every two-digit question: a + b, and a - b with a >= b (10 <= a, b <= 99)."""
    out = [(a, "+", b) for a in range(10, 100) for b in range(10, 100)]
    out += [(a, "-", b) for a in range(10, 100) for b in range(10, a + 1)]
    return out


# --------------------------------------------------------------------------------------------
# Comparison (transfer) and beeps (retention)
# --------------------------------------------------------------------------------------------


def compare_chain(a: int, b: int) -> str:
    """``"47 or 38: tens 4>3, answer 47"`` (units compared when the tens are equal)."""
    at, bt = a // 10, b // 10
    sign = ">" if at > bt else "<" if at < bt else "="
    parts = [f"{a} or {b}:", f"tens {at}{sign}{bt},"]
    if sign == "=":
        au, bu = a % 10, b % 10
        parts.append(f"units {au}{'>' if au > bu else '<'}{bu},")
    parts.append(f"answer {max(a, b)}")
    return " ".join(parts)


def _compare_record(a: int, b: int) -> dict[str, Any]:
    text = COMPARE_TEMPLATE.format(a=number_words(a), b=number_words(b))
    return {"id": f"cmp-{a}-{b}", "text": text, "transcript": text, "answer": str(max(a, b)),
            "worked": compare_chain(a, b), "kind": "math"}


def all_compare() -> list[tuple[int, int]]:
    return [(a, b) for a in range(10, 100) for b in range(10, 100) if a != b]


def beep_clip(count: int, *, slots: int, slot_seconds: float, rng: np.random.Generator
              ) -> np.ndarray:
    """``count`` tones (random pitch 300-1500 Hz, length 60-200 ms, loudness), each inside its
    own one of ``slots`` equal cells at a random place (two may touch across a cell boundary,
    which makes some clips genuinely hard to count), in ``slots * slot_seconds`` of faint
    noise; 16 kHz float32."""
    n = int(round(slots * slot_seconds * SAMPLING_RATE))
    wave = rng.normal(0.0, rng.uniform(0.005, 0.03), n).astype(np.float32)
    cell = n // slots  # one tone per cell at most, placed anywhere inside it
    for c in sorted(rng.choice(slots, size=count, replace=False)):
        length = int(rng.uniform(0.06, 0.2) * SAMPLING_RATE)
        start = c * cell + int(rng.integers(0, max(1, cell - length)))
        t = np.arange(length) / SAMPLING_RATE
        tone = rng.uniform(0.15, 0.5) * np.sin(2 * np.pi * rng.uniform(300, 1500) * t)
        ramp = np.minimum(1.0, np.minimum(np.arange(length), np.arange(length)[::-1]) / 80)
        wave[start : start + length] += (tone * ramp).astype(np.float32)
    return wave


def beep_records(n: int, config: ClaimTaskConfig, seed: int, prefix: str) -> list[dict]:
    """``n`` counting items with audio (counts uniform in 1..max_beeps), from ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        count = int(rng.integers(1, config.max_beeps + 1))
        clip = beep_clip(count, slots=config.count_slots, slot_seconds=config.slot_seconds,
                         rng=rng)
        out.append({"id": f"{prefix}-{i}", "text": COUNT_INSTRUCTION, "answer": str(count),
                    "worked": f"answer {count}", "kind": "math",
                    "audio": {"array": clip, "sampling_rate": SAMPLING_RATE}})
    return out


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------

#: beep seeds: (train, val, retention) are config.seed * 1000 + these, so they never collide
_BEEP_SEEDS = {"count_train": 11, "count_val": 12, "retention": 13}


def make_claim_splits(config: ClaimTaskConfig) -> dict[str, list[dict[str, Any]]]:
    """Text-only splits (audio is attached by :func:`attach_claim_audio`):

    ``text_train`` (worked arithmetic the text side learns), ``corrections`` (self-correcting
    chains of those same questions; empty without the prior), ``audio_qa`` (of those, also
    spoken), ``pool`` (the unlabelled distillation pool), ``val``, ``eval``,
    ``compare_train``, ``compare_audio``, ``compare_val``, ``transfer``, ``compare_pool``
    (spoken comparisons only the transfer control post-trains on).
    """
    for name in ("text_questions", "pool_questions", "val_questions", "eval_questions",
                 "compare_text", "compare_val", "transfer_questions", "compare_pool",
                 "count_train", "count_val", "retention_items"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if not 0 < config.audio_qa <= config.text_questions:
        raise ValueError(f"audio_qa must be in [1, text_questions={config.text_questions}], "
                         f"got {config.audio_qa}")
    if not 0 < config.compare_audio <= config.compare_text:
        raise ValueError(f"compare_audio must be in [1, compare_text={config.compare_text}], "
                         f"got {config.compare_audio}")
    if config.answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got "
                         f"{config.answer_format!r}")
    if not 1 <= config.max_beeps <= config.count_slots:
        raise ValueError(f"max_beeps must be in [1, count_slots={config.count_slots}], got "
                         f"{config.max_beeps}")
    rng = random.Random(config.seed)
    arith = all_arith()
    rng.shuffle(arith)
    sizes = [config.text_questions, config.pool_questions, config.val_questions,
             config.eval_questions]
    cut = np.cumsum(sizes)
    if cut[-1] > len(arith):
        raise ValueError(f"the arithmetic splits need {cut[-1]} questions, only {len(arith)} "
                         "exist")
    templates = len(ARITH_TEMPLATES)

    def phrased(qs, offset=0):
        return [_arith_record(a, op, b, (offset + i) % templates, config.answer_format)
                for i, (a, op, b) in enumerate(qs)]

    text_train = phrased(arith[: cut[0]])
    corrections = []
    if config.self_correction:
        for r in text_train:
            a, op, b = r["operands"]
            chains = {corrected_chain(a, op, b, rng, config.answer_format)
                      for _ in range(config.correction_variants)}
            corrections += [{**r, "worked": c} for c in sorted(chains)]
    compare = all_compare()
    rng.shuffle(compare)
    ccut = np.cumsum([config.compare_text, config.compare_val, config.transfer_questions,
                      config.compare_pool])
    if ccut[-1] > len(compare):
        raise ValueError(f"the comparison splits need {ccut[-1]} questions, only "
                         f"{len(compare)} exist")
    compare_train = [_compare_record(a, b) for a, b in compare[: ccut[0]]]
    splits = {
        "text_train": text_train,
        "corrections": corrections,
        "audio_qa": text_train[: config.audio_qa],
        "pool": phrased(arith[cut[0] : cut[1]], 1),
        "val": phrased(arith[cut[1] : cut[2]], 2),
        "eval": phrased(arith[cut[2] : cut[3]], 0),
        "compare_train": compare_train,
        "compare_audio": compare_train[: config.compare_audio],
        "compare_val": [_compare_record(a, b) for a, b in compare[ccut[0] : ccut[1]]],
        "transfer": [_compare_record(a, b) for a, b in compare[ccut[1] : ccut[2]]],
        "compare_pool": [_compare_record(a, b) for a, b in compare[ccut[2] : ccut[3]]],
    }
    return splits


def fresh_eval_sets(config: ClaimTaskConfig, eval_seed: int) -> dict[str, list[dict]]:
    """New held-out ``eval``, ``transfer`` and ``retention`` sets drawn from ``eval_seed``,
    excluding every question any split of ``config`` holds (what was tuned on or trained on),
    at the configuration's sizes. Text only for eval/transfer; retention clips carry audio."""
    used = make_claim_splits(config)
    seen_arith = {tuple(r["operands"]) for k in ("text_train", "pool", "val", "eval")
                  for r in used[k]}
    seen_cmp = {r["id"] for k in ("compare_train", "compare_val", "transfer", "compare_pool")
                for r in used[k]}
    rng = random.Random(10_000 + eval_seed)
    arith = [q for q in all_arith() if q not in seen_arith]
    rng.shuffle(arith)
    compare = [(a, b) for a, b in all_compare() if f"cmp-{a}-{b}" not in seen_cmp]
    rng.shuffle(compare)
    if len(arith) < config.eval_questions or len(compare) < config.transfer_questions:
        raise ValueError("not enough unseen questions left for a fresh evaluation set")
    return {
        "eval": [_arith_record(a, op, b, i % len(ARITH_TEMPLATES), config.answer_format)
                 for i, (a, op, b) in enumerate(arith[: config.eval_questions])],
        "transfer": [_compare_record(a, b) for a, b in compare[: config.transfer_questions]],
        "retention": beep_records(config.retention_items, config, 10_000 + eval_seed,
                                  f"beep-e{eval_seed}"),
    }


def claim_words() -> list[str]:
    words = set(ONES) | set(TENS[2:]) | {"plus", "minus", TRANSCRIBE_INSTRUCTION,
                                         COUNT_INSTRUCTION, *CHAIN_WORDS}
    for t in (*ARITH_TEMPLATES, COMPARE_TEMPLATE):
        words |= {w for w in t.split() if not w.startswith("{")}
    return sorted(words)


def attach_claim_audio(splits: dict[str, list[dict]], config: ClaimTaskConfig,
                       speech: SlottedSpeech) -> dict[str, list[dict]]:
    """The splits with speech attached where a split is ever heard, plus the beep splits
    (``count_train``, ``count_val``, ``retention``)."""
    heard = ("audio_qa", "pool", "val", "eval", "compare_audio", "compare_val", "transfer",
             "compare_pool", "text_train")
    speech.prepare([w for k in heard for r in splits[k] for w in r["text"].split()])
    out = {}
    for k, v in splits.items():
        out[k] = ([{**r, "audio": {"array": speech.speak(r["text"]),
                                   "sampling_rate": SAMPLING_RATE}} for r in v]
                  if k in heard else v)
    base = config.seed * 1000
    out["count_train"] = beep_records(config.count_train, config,
                                      base + _BEEP_SEEDS["count_train"], "beep-t")
    out["count_val"] = beep_records(config.count_val, config, base + _BEEP_SEEDS["count_val"],
                                    "beep-v")
    out["retention"] = beep_records(config.retention_items, config,
                                    base + _BEEP_SEEDS["retention"], "beep-r")
    return out


# --------------------------------------------------------------------------------------------
# Model and pre-training
# --------------------------------------------------------------------------------------------


def build_claim_model(config: ClaimTaskConfig, *, seed: int | None = None) -> Qwen2AudioAdapter:
    """A random-init tiny Qwen2-Audio sized by ``config``, and its adapter."""
    model, processor = build_tiny_qwen2_audio(
        seed=config.seed if seed is None else seed, vocab_words=claim_words(),
        hidden_size=config.hidden_size, num_layers=config.num_layers,
        audio_d_model=config.audio_d_model, audio_layers=config.audio_layers,
        chunk_seconds=config.chunk_seconds)
    return Qwen2AudioAdapter(model, processor)


def pretrain_claim(adapter, splits: dict[str, list[dict]], config: ClaimTaskConfig, *,
                   progress: bool = True) -> list[dict[str, float]]:
    """Pre-trains the three skills: every step a batch of text arithmetic (``text_train``,
    and beside it a smaller batch of self-correcting chains), text comparison, audio
    transcription (of the pool, the text-trained questions and the spoken comparisons) and beep
    counting; every other step a batch of spoken arithmetic QA and spoken comparison QA.
    Deterministic for a configuration."""
    model = adapter.model
    model.train()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    heard = splits["pool"] + splits["text_train"] + splits["compare_audio"]
    share = config.correction_share if splits["corrections"] else 0.0
    fix_batch = round(config.batch_size * share / (1 - share))
    groups = {
        "text_arith": (Batcher(adapter, splits["text_train"], "text", "worked"), 1),
        "text_compare": (Batcher(adapter, splits["compare_train"], "text", "worked"), 1),
        "transcribe": (Batcher(adapter, heard, "audio", "transcript"), 1),
        "audio_arith": (Batcher(adapter, splits["audio_qa"], "audio", "worked"), 2),
        "audio_compare": (Batcher(adapter, splits["compare_audio"], "audio", "worked"), 2),
        "count": (Batcher(adapter, splits["count_train"], "audio", "worked",
                           instruction=COUNT_INSTRUCTION), 1),
    }
    sizes = {name: config.batch_size for name in groups}
    if fix_batch:  # trained beside the clean chains, at correction_share of the chains
        groups["corrections"] = (Batcher(adapter, splits["corrections"], "text", "worked"), 1)
        sizes["corrections"] = fix_batch
    opt, sched, bar = pretrain_schedule(model, config, "pre-training the claim base", progress)
    history = []
    for step in bar:
        losses = {}
        for name, (batcher, every) in groups.items():
            if step % every == 0:
                idx = torch.randperm(batcher.n, generator=gen)[: min(sizes[name], batcher.n)]
                losses[name] = nll(adapter, *batcher.batch(idx))
        history.append(pretrain_step(model, opt, sched, losses, bar, step, digits=2))
    model.eval()
    return history
