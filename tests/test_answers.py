"""Final-answer extraction and comparison on hand-made responses."""

from __future__ import annotations

import threading

import pytest

from cord.rewards.answers import answers_agree, extract_choice, extract_math_answer, math_equal

CHOICE_CASES = [
    ("The answer is (B)", "B"),
    ("The answer is (B).", "B"),
    ("B.", "B"),
    ("B", "B"),
    ("(C)", "C"),
    ("(a)", "A"),
    ("answer: b", "B"),
    ("Answer: A. Because it is the largest.", "A"),
    ("**C**", "C"),
    ("The best answer is **(D) lion**", "D"),
    ("Option D", "D"),
    ("The correct option is C", "C"),
    ("I choose A because it is largest", "A"),
    ("I would go with D.", "D"),
    ("B) 34", "B"),
    ("\\boxed{C}", "C"),
    ("A? No wait, the answer is C.", "C"),  # the last commitment wins
    ("A dog is an animal, so (C).", "C"),  # a sentence-initial article "A" is not an option
    ("I think it's B", "B"),
    ("A is right", "A"),
    # Nothing committed to:
    ("the answer is a dog", None),
    ("A dog is an animal.", None),
    ("It could be A or B", None),
    ("none of them", None),
    ("", None),
    (None, None),
]


def test_extract_choice_respects_the_option_set():
    assert extract_choice("The answer is E") is None
    assert extract_choice("The answer is E", choices="ABCDE") == "E"
    assert extract_choice("Option (b)", choices=["A", "B"]) == "B"
    with pytest.raises(ValueError, match="choices must be ASCII letters"):
        extract_choice("B", choices="12")


# (text, expected) like CHOICE_CASES: a table of cases has the same shape by design.
MATH_CASES = [
    ("\\boxed{42}", "42"),
    ("First \\boxed{1}, then finally \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
    ("so the answer is 42.", "42"),
    ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("7+5 = 12", "12"),
    ("Answer: x = 5", "5"),
    ("Answer: 3 apples", "3"),
    ("answer is 2x+1", "2x+1"),
    ("The final answer is **-17**.", "-17"),
    ("I got 1,234 apples", "1234"),
    ("The result is 3/4.", "3/4"),
    ("-3.5 is it", "-3.5"),
    ("It is 10-5, which is 5", "5"),
    ("So it is 10-4", "4"),  # a binary minus is not a sign
    ("The numbers are 1,2,3", "3"),  # a list, not 123
    ("about 12,345,678 people", "12345678"),
    ("the answer is twelve", "12"),
    ("The final answer is forty-two.", "42"),
    ("It is minus five", "-5"),
    ("As a result: we add the two numbers and get 9", "9"),  # prose after a cue
    ("The answer is pi", "pi"),
    ("nothing here", None),
    ("", None),
    (None, None),
]


# Both tables through one test: each case's id is its extractor and the start of its text.
EXTRACT_CASES = [pytest.param(extract, text, want, id=f"{extract.__name__}-{repr(text)[:30]}")
                 for extract, table in ((extract_choice, CHOICE_CASES),
                                        (extract_math_answer, MATH_CASES))
                 for text, want in table]


@pytest.mark.parametrize("extract, text, want", EXTRACT_CASES)
def test_extract(extract, text, want):
    assert extract(text) == want


# (prediction, gold) pairs that math_equal takes as the same answer, and pairs it does not.
EQUAL_ANSWERS = [
    ("0.5", "1/2"),
    ("\\frac{1}{2}", "0.5"),
    ("12", "12.0"),
    ("1,000", "1000"),
    ("50%", "0.5"),
    ("x+1", "1+x"),
    ("\\sqrt{2}", "\\sqrt 2"),
    ("2\\pi", "6.283185307"),
]
UNEQUAL_ANSWERS = [("12", "13"), ("x+1", "x+2"), ("-3", "3"), ("", "3"), (None, "3")]


@pytest.mark.parametrize("pred, gold, equal", [(*c, True) for c in EQUAL_ANSWERS]
                         + [(*c, False) for c in UNEQUAL_ANSWERS])
def test_math_equal(pred, gold, equal):
    assert math_equal(pred, gold) is equal


def test_math_equal_off_the_main_thread():
    # math-verify's SIGALRM timeouts only work in the main thread; math_equal must still work
    # in a worker thread (e.g. a judge run from a thread pool).
    results = []
    worker = threading.Thread(target=lambda: results.append(math_equal("x+1", "1+x")))
    worker.start()
    worker.join()
    assert results == [True]


@pytest.mark.parametrize(
    "a, b, kind, agree",
    [
        ("So the answer is (B).", "B. Because it is bigger.", "auto", True),
        ("So the answer is (B).", "The answer is C", "auto", False),
        ("7 + 5 = 12, so 12.", "The answer is \\boxed{12}", "auto", True),
        ("half of it: 0.5", "The answer is $\\frac{1}{2}$", "auto", True),
        ("The answer is 7", "The answer is 8", "math", False),
        ("The answer is B", "The answer is 7", "auto", False),
        ("I am not sure.", "12", "auto", None),
        ("The answer is 12", "B", "choice", None),
        ("The answer is (A)", "a", "choice", True),
    ],
)
def test_answers_agree(a, b, kind, agree):
    assert answers_agree(a, b, kind) is agree


def test_answers_agree_bad_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        answers_agree("1", "1", kind="exact")
