"""The claim task: right worked chains, self-correcting chains that end right, disjoint splits,
fresh evaluation sets that exclude everything trained or tuned on, and beep clips."""

from __future__ import annotations

import random
import re
from dataclasses import replace

import numpy as np
import pytest

from cord.demo.base import SHIPPED_BASES
from cord.demo.claim.data import (
    CLAIM_QUICK,
    COUNT_INSTRUCTION,
    ClaimTaskConfig,
    all_arith,
    beep_records,
    compare_chain,
    corrected_chain,
    fresh_eval_sets,
    heard_positions,
    make_claim_splits,
    number_words,
    worked_chain,
)


@pytest.mark.parametrize("a,op,b,chain", [
    (47, "+", 38, "47+38: units 7+8=15 carry 1, tens 4+3+1=8, answer 85"),
    (42, "+", 35, "42+35: units 2+5=7, tens 4+3=7, answer 77"),
    (87, "+", 58, "87+58: units 7+8=15 carry 1, tens 8+5+1=14, answer 145"),
    (52, "-", 38, "52-38: units 12-8=4 borrow 1, tens 5-1-3=1, answer 14"),
    (58, "-", 32, "58-32: units 8-2=6, tens 5-3=2, answer 26"),
    (52, "-", 48, "52-48: units 12-8=4 borrow 1, tens 5-1-4=0, answer 4"),
])
def test_worked_chains_go_column_by_column(a, op, b, chain):
    assert worked_chain(a, op, b) == chain


def test_every_chain_ends_with_the_right_answer():
    for a, op, b in all_arith()[::37]:
        value = a + b if op == "+" else a - b
        assert worked_chain(a, op, b).endswith(f"answer {value}")


def test_corrected_chains_hold_one_wrong_step_then_no_and_the_fix():
    rng = random.Random(0)
    for a, op, b in all_arith()[::101]:
        chain = corrected_chain(a, op, b, rng)
        value = a + b if op == "+" else a - b
        assert chain.count("no,") == 1 and chain.endswith(f"answer {value}")
        wrong, right = chain.split(" no, ", 1)
        # what follows "no," is the right chain from the step that was wrong
        assert worked_chain(a, op, b).endswith(right)
        assert wrong != worked_chain(a, op, b)[: len(wrong)]


def test_number_words_and_comparison_chains():
    assert number_words(47) == "forty seven" and number_words(30) == "thirty"
    assert number_words(13) == "thirteen"
    with pytest.raises(ValueError, match="n must be in"):
        number_words(100)
    assert compare_chain(47, 38) == "47 or 38: tens 4>3, answer 47"
    assert compare_chain(42, 47) == "42 or 47: tens 4=4, units 2<7, answer 47"


def _ids(records):
    return {r["id"] for r in records}


def test_splits_are_disjoint_and_sized():
    cfg = CLAIM_QUICK
    s = make_claim_splits(cfg)
    arith = ("text_train", "pool", "val", "eval")
    for i, a in enumerate(arith):
        for b in arith[i + 1 :]:
            assert not _ids(s[a]) & _ids(s[b]), (a, b)
    compare = ("compare_train", "compare_val", "transfer")
    for i, a in enumerate(compare):
        for b in compare[i + 1 :]:
            assert not _ids(s[a]) & _ids(s[b]), (a, b)
    assert len(s["pool"]) == cfg.pool_questions and len(s["eval"]) == cfg.eval_questions
    assert _ids(s["audio_qa"]) <= _ids(s["text_train"])
    fixes = s["corrections"]
    assert {r["id"] for r in fixes} == _ids(s["text_train"])  # only questions it learns
    assert all(" no, " in r["worked"] for r in fixes)
    assert len(fixes) > 2 * len(s["text_train"])  # several different slips per question
    no_prior = make_claim_splits(ClaimTaskConfig(**{**vars(cfg), "self_correction": False}))
    assert no_prior["corrections"] == []


def test_fresh_eval_sets_are_new_and_reproducible():
    cfg = CLAIM_QUICK
    used = make_claim_splits(cfg)
    seen = set().union(*(_ids(used[k]) for k in ("text_train", "pool", "val", "eval",
                                                  "compare_train", "compare_val", "transfer")))
    one, again, two = (fresh_eval_sets(cfg, 1), fresh_eval_sets(cfg, 1), fresh_eval_sets(cfg, 2))
    for k in ("eval", "transfer"):
        assert not _ids(one[k]) & seen, k
        assert [r["id"] for r in one[k]] == [r["id"] for r in again[k]], k
        assert _ids(one[k]) != _ids(two[k]), k
    np.testing.assert_array_equal(one["retention"][0]["audio"]["array"],
                                  again["retention"][0]["audio"]["array"])
    assert not np.array_equal(one["retention"][0]["audio"]["array"],
                              two["retention"][0]["audio"]["array"])


def test_beep_clips_hold_the_counted_tones():
    recs = beep_records(12, CLAIM_QUICK, seed=3, prefix="b")
    for r in recs:
        wave = r["audio"]["array"]
        assert r["text"] == COUNT_INSTRUCTION and 1 <= int(r["answer"]) <= CLAIM_QUICK.max_beeps
        assert wave.dtype == np.float32
        assert wave.size == round(CLAIM_QUICK.count_slots * CLAIM_QUICK.slot_seconds * 16_000)
        # each tone lies inside its own cell and is far louder than the noise floor
        cells = wave[: wave.size // CLAIM_QUICK.count_slots * CLAIM_QUICK.count_slots]
        rms = np.sqrt(np.convolve(cells.astype(np.float64) ** 2, np.ones(160) / 160, "same"))
        loud = (rms.reshape(CLAIM_QUICK.count_slots, -1) > 0.07).any(-1)
        assert loud.sum() == int(r["answer"]), r["id"]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="audio_qa must be in"):
        make_claim_splits(ClaimTaskConfig(text_questions=10, audio_qa=20))
    with pytest.raises(ValueError, match="max_beeps must be in"):
        make_claim_splits(ClaimTaskConfig(max_beeps=9, count_slots=8))
    with pytest.raises(ValueError, match="pool_questions must be >= 1"):
        make_claim_splits(ClaimTaskConfig(pool_questions=0))
    assert re.fullmatch(r"[0-9a-f]{12}", ClaimTaskConfig().key())


TENS_FIRST = {
    (47, "+", 38): "tens 40+30=70, units 7+8=15 carry 1, tens 70+10=80, answer 85",
    (42, "+", 35): "tens 40+30=70, units 2+5=7, answer 77",
    (97, "+", 88): "tens 90+80=170, units 7+8=15 carry 1, tens 170+10=180, answer 185",
    (52, "-", 38): "tens 50-30=20, units 12-8=4 borrow 1, tens 20-10=10, answer 14",
    (58, "-", 32): "tens 50-30=20, units 8-2=6, answer 26",
}


@pytest.mark.parametrize("question", list(TENS_FIRST), ids=str)
def test_tens_first_chains_use_each_heard_digit_where_it_first_appears(question):
    """The tens-first format (issue 38 C): no restatement; each heard digit first appears at
    the step that uses it, the units digits after the tens step's partial result."""
    a, op, b = question
    chain = TENS_FIRST[question]
    assert worked_chain(a, op, b, "tens_first") == chain
    heard = heard_positions(a, op, b, "tens_first")
    assert [chain[i] for i in heard] == [str(a)[0], str(b)[0], str(a)[1], str(b)[1]]
    assert min(heard[2:]) > chain.index("units")  # after a partial result the student wrote


def test_tens_first_chains_end_right_and_correct_themselves_right():
    rng = random.Random(0)
    for a, op, b in all_arith()[::53]:
        value = a + b if op == "+" else a - b
        assert worked_chain(a, op, b, "tens_first").endswith(f"answer {value}")
        chain = corrected_chain(a, op, b, rng, "tens_first")
        assert chain.count("no,") == 1 and chain.endswith(f"answer {value}")
        wrong, right = chain.split(" no, ", 1)
        assert wrong != worked_chain(a, op, b, "tens_first")[: len(wrong)]
        assert worked_chain(a, op, b, "tens_first").endswith(right)


def test_the_answer_format_is_checked_and_the_restate_bases_keep_their_keys():
    assert ClaimTaskConfig().key() == "dee61b9c235d"  # the shipped base's folder (issue 38 C)
    restate = ClaimTaskConfig(answer_format="restate", audio_qa=120)
    assert restate.key() == "338dcc987924"  # the base shipped before it keeps its folder
    assert (SHIPPED_BASES / "base-dee61b9c235d").is_dir()
    assert (SHIPPED_BASES / "base-338dcc987924").is_dir()
    with pytest.raises(ValueError, match="answer_format"):
        make_claim_splits(ClaimTaskConfig(answer_format="nope"))
    s = make_claim_splits(replace(CLAIM_QUICK, answer_format="tens_first"))
    assert all(r["worked"].startswith("tens ") for r in s["pool"])
