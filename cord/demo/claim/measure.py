"""What the claim demo measures on one model: in-domain, transfer and retention per item, text
accuracy, recovery from a wrong prefix, where wrong answers first go wrong, the KL along correct
and wrong audio rollouts, and validation curves during training."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cord.demo.claim.data import (
    COUNT_INSTRUCTION,
    arithmetic_steps,
    heard_positions,
    misheard,
    tens_first_steps,
)
from cord.demo.claim.positions import BANDS, band
from cord.demo.posttrain import PostTrainConfig
from cord.eval.analyze import kl_statistics, rollout_kl
from cord.eval.evaluate import evaluate, score_response
from cord.models.adapter import PromptBatch
from cord.models.rollout import completion_mask

BATCH = 100
RECOVERY_ITEMS = 100
KL_ITEMS = 200
CURVE_ITEMS = 100
def _items(result: dict, modality: str) -> list[int]:
    return [int(i[f"{modality}_correct"]) for i in result["items"]]


def validation_scores(adapter, splits: dict[str, list], post: PostTrainConfig, *,
                      limit: int | None = None) -> dict[str, Any]:
    """What the learning-rate rule reads: validation in-domain text and audio accuracy, and
    validation retention (beep counting), with the per-item verdicts of the in-domain audio
    answers (``audio_items``, for the rule's paired CI); with ``limit``, on the first ``limit``
    items."""
    val = splits["val"][:limit]
    r = evaluate(adapter, val, name="val", max_new_tokens=post.max_completion_length,
                 batch_size=BATCH, progress=False)
    ret = evaluate(adapter, splits["count_val"][:limit], name="count_val", max_new_tokens=8,
                   batch_size=BATCH, modalities=("audio",), instruction=COUNT_INSTRUCTION,
                   progress=False, keep_responses=False)
    return {"text": r["text"]["accuracy"], "audio": r["audio"]["accuracy"],
            "retention": ret["audio"]["accuracy"], "audio_items": _items(r, "audio")}


def curve_scores(adapter, splits: dict[str, list], post: PostTrainConfig) -> dict[str, float]:
    """One point of the training curves: validation in-domain and comparison accuracy from
    text and audio, and validation retention, on :data:`CURVE_ITEMS` items each."""
    out = validation_scores(adapter, splits, post, limit=CURVE_ITEMS)
    cmp = evaluate(adapter, splits["compare_val"][:CURVE_ITEMS], name="compare_val",
                   max_new_tokens=post.max_completion_length, batch_size=BATCH, progress=False,
                   keep_responses=False)
    out["transfer_text"] = cmp["text"]["accuracy"]
    out["transfer_audio"] = cmp["audio"]["accuracy"]
    return out


# --------------------------------------------------------------------------------------------
# Recovery from a wrong prefix
# --------------------------------------------------------------------------------------------


def wrong_prefix(record: dict[str, Any], rng: random.Random) -> str:
    """The start of ``record``'s chain with one wrong step, cut right after it: a wrong restated
    operand (``"47+39:"``, as a mis-hearing gives; :func:`misheard`) or a wrong units result
    (``"47+38: units 7+8=14"``, as a slip gives), one or the other at random."""
    a, op, b = record["operands"]
    if record["worked"].startswith("tens "):  # the tens-first format
        steps, _ = tens_first_steps(a, op, b)
        au, bu = a % 10, b % 10
        if rng.random() < 0.5 and op == "+":  # b's units digit mis-heard, in the units step
            return f"{steps[0]} units {au}+{bu + 1 if bu < 9 else bu - 1}"
        eq = steps[0].index("=")
        value = int(steps[0][eq + 1 :].rstrip(","))
        return f"{steps[0][: eq + 1]}{value + 10 if value < 180 else value - 10}"
    if rng.random() < 0.5:
        return f"{a}{op}{misheard(a, op, b, rng)}:"
    steps, _ = arithmetic_steps(a, op, b)
    units = steps[0]
    eq = units.index("=")
    value = int(units[eq + 1 :].split(" ")[0].rstrip(","))
    return f"{a}{op}{b}: {units[: eq + 1]}{value + 1 if value < 18 else value - 1}"


def _with_prefix(adapter, prompts: PromptBatch, prefixes: Sequence[str]) -> PromptBatch:
    """``prompts`` (left-padded) with each row's assistant turn started by its prefix."""
    rows = []
    for i, prefix in enumerate(prefixes):
        ids = prompts.input_ids[i][prompts.attention_mask[i].bool()].tolist()
        rows.append(ids + adapter.tokenizer(prefix, add_special_tokens=False)["input_ids"])
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), adapter.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):] = torch.tensor(row)
        attention[i, width - len(row):] = 1
    return PromptBatch(input_ids, attention, prompts.model_kwargs)


def recovery_rate(adapter, records: Sequence[dict], modality: str, *, max_new_tokens: int = 48,
                  seed: int = 0) -> float:
    """Share of ``records`` answered right (greedy) after the assistant turn is forced to start
    with a :func:`wrong_prefix`: how often the model recovers from a wrong step, by saying
    "no," and redoing it (the self-correction prior) or otherwise."""
    rng = random.Random(seed)
    prefixes = [wrong_prefix(r, rng) for r in records]
    right = 0
    for s in range(0, len(records), BATCH):
        chunk = records[s : s + BATCH]
        if modality == "audio":
            prompts = adapter.audio_prompts([r["audio"]["array"] for r in chunk],
                                            sampling_rate=chunk[0]["audio"]["sampling_rate"])
        else:
            prompts = adapter.text_prompts([r["text"] for r in chunk])
        prompts = _with_prefix(adapter, prompts, prefixes[s : s + BATCH])
        with torch.no_grad():
            ids = adapter.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0)
        texts = adapter.decode(ids, completion_mask(ids, adapter.eos_token_ids))
        right += sum(score_response(p + t, r["answer"])[0]
                     for p, t, r in zip(prefixes[s : s + BATCH], texts, chunk))
    return right / len(records)


# --------------------------------------------------------------------------------------------
# Scores of one model
# --------------------------------------------------------------------------------------------


def score_claim_model(adapter, splits: dict[str, list], post: PostTrainConfig
                      ) -> dict[str, Any]:
    """Per-item correctness on the held-out sets: ``eval`` (text and audio), ``transfer`` (text
    and audio) and ``retention`` (audio), the responses of the in-domain audio answers, and the
    recovery rates of the text and audio sides on :data:`RECOVERY_ITEMS` eval items."""
    n = post.max_completion_length
    ev = evaluate(adapter, splits["eval"], name="eval", max_new_tokens=n, batch_size=BATCH,
                  progress=False)
    tr = evaluate(adapter, splits["transfer"], name="transfer", max_new_tokens=n,
                  batch_size=BATCH, progress=False)
    ret = evaluate(adapter, splits["retention"], name="retention", max_new_tokens=8,
                   batch_size=BATCH, modalities=("audio",), instruction=COUNT_INSTRUCTION,
                   progress=False)
    recovery = splits["eval"][:RECOVERY_ITEMS]
    return {
        "eval_text_items": _items(ev, "text"), "eval_audio_items": _items(ev, "audio"),
        "transfer_text_items": _items(tr, "text"), "transfer_audio_items": _items(tr, "audio"),
        "retention_items": _items(ret, "audio"),
        "text": ev["text"]["accuracy"], "audio": ev["audio"]["accuracy"],
        "transfer_text": tr["text"]["accuracy"], "transfer_audio": tr["audio"]["accuracy"],
        "retention": ret["audio"]["accuracy"],
        "audio_responses": [i["audio_response"] for i in ev["items"]],
        "recovery_text": recovery_rate(adapter, recovery, "text", max_new_tokens=n),
        "recovery_audio": recovery_rate(adapter, recovery, "audio", max_new_tokens=n),
    }


def first_error_positions(adapter, responses: Sequence[str], records: Sequence[dict],
                          correct: Sequence[int]) -> list[int]:
    """For each WRONG answer, the index of its first token that differs from the right worked
    chain (tokenised as the model writes it)."""
    return [k for _, _, k in _first_errors(adapter, responses, records, correct)]


def _first_errors(adapter, responses, records, correct):
    """``(record, gold ids, first differing index)`` of each WRONG answer."""
    for resp, rec, ok in zip(responses, records, correct):
        if ok:
            continue
        said = adapter.tokenizer(resp, add_special_tokens=False)["input_ids"]
        gold = adapter.tokenizer(rec["worked"], add_special_tokens=False)["input_ids"]
        k = 0
        while k < min(len(said), len(gold)) and said[k] == gold[k]:
            k += 1
        yield rec, gold, k


def teacher_at_error(adapter, responses: Sequence[str], records: Sequence[dict],
                     correct: Sequence[int]) -> dict[str, Any]:
    """At the first wrong token of each WRONG audio answer, is the text side right there?

    The prefix before that token is right (it is the gold chain's), so the paper's mechanism
    needs a teacher whose top choice at that position is the gold token: then the reverse KL
    at the student's error pulls toward the right token. Reported overall and per error type:
    ``operands`` (the error is in restating the operands, ``"47+38:"``: a mis-hearing, which
    the text side, reading the operands, can fix) and ``computation`` (the column steps, where
    the teacher tends to make the same mistakes), and by position band (:data:`BANDS`).
    ``{value, operands, computation, n, n_operands, n_computation, by_band}``; a value is None
    without a case. An error is in the operands when its token holds a heard digit's first
    appearance (the record's ``heard`` character offsets)."""
    cases = []
    for rec, gold, k in _first_errors(adapter, responses, records, correct):
        if k >= len(gold):  # the whole gold chain was said: the error is after its end
            continue
        start = len(adapter.tokenizer.decode(gold[:k]))
        stop = start + len(adapter.tokenizer.decode(gold[k : k + 1]))
        heard = rec.get("heard") or heard_positions(*rec["operands"])
        kind = "operands" if any(start <= c < stop for c in heard) else "computation"
        cases.append((rec, gold, k, kind))
    hits: dict[str, list[bool]] = {"operands": [], "computation": []}
    by_band: dict[str, list[bool]] = {name: [] for name, _, _ in BANDS}
    for s in range(0, len(cases), BATCH):
        chunk = cases[s : s + BATCH]
        width = max(len(g) for _, g, _, _ in chunk)
        ids = torch.full((len(chunk), width), adapter.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for i, (_, gold, _, _) in enumerate(chunk):
            ids[i, : len(gold)] = torch.tensor(gold)
            mask[i, : len(gold)] = True
        prompts = adapter.text_prompts([r["text"] for r, _, _, _ in chunk])
        with torch.no_grad():
            logits = adapter.completion_logits(prompts, ids, mask)  # (n, width, V)
        for i, (_, gold, k, kind) in enumerate(chunk):
            hit = int(logits[i, k].argmax()) == gold[k]
            hits[kind].append(hit)
            by_band[band(k)].append(hit)
    every = hits["operands"] + hits["computation"]

    def share(xs):
        return float(np.mean(xs)) if xs else None

    return {"value": share(every), "operands": share(hits["operands"]),
            "computation": share(hits["computation"]), "n": len(every),
            "n_operands": len(hits["operands"]), "n_computation": len(hits["computation"]),
            "by_band": {k: {"value": share(v), "n": len(v)} for k, v in by_band.items()}}


def kl_by_correctness(adapter, records: Sequence[dict], post: PostTrainConfig
                      ) -> tuple[list, dict[str, float]]:
    """Audio rollouts (T = 1, seed 0) with per-token KL(student || teacher), each judged
    against the gold answer: the mean KL along correct and along wrong rollouts (the paper's
    Figure 2 contrast) and on wrong rollouts' first wrong token."""
    rollouts = rollout_kl(adapter, records, max_new_tokens=post.max_completion_length,
                          temperature=post.temperature, batch_size=BATCH, seed=0, progress=False)
    stats = kl_statistics(rollouts)
    first = []
    for ro, rec in zip(rollouts, records):
        if ro.correct is False and ro.kl:
            gold = [adapter.tokenizer.decode([t]) for t in
                    adapter.tokenizer(rec["worked"], add_special_tokens=False)["input_ids"]]
            k = 0
            while k < min(len(gold), len(ro.kl) - 1) and ro.tokens[k] == gold[k]:
                k += 1
            first.append(ro.kl[k])
    kl = np.concatenate([np.asarray(r.kl, dtype=np.float64) for r in rollouts if r.kl] or
                        [np.zeros(1)])
    return rollouts, {
        "mean_kl": float(kl.mean()),
        "mean_kl_correct": stats.get("mean_kl_correct"),
        "mean_kl_incorrect": stats.get("mean_kl_incorrect"),
        "kl_first_wrong_token": float(np.mean(first)) if first else None,
        "correct_share": float(np.mean([r.correct is True for r in rollouts])),
        "mean_length": float(np.mean([len(r.kl) for r in rollouts])),
    }
