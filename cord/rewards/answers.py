"""Final-answer extraction and comparison, for the judge and for evaluation.

- :func:`extract_choice`: the option letter a response commits to ("The answer is (B)",
  "**C**", "Option D", "answer: b", "I choose A because ...").
- :func:`extract_math_answer`: the final math answer (``\\boxed{}``, "the answer is 42", else the
  last number, else a spelled-out number such as "forty-two").
- :func:`math_equal`: equality of two math answers with math-verify (``1/2`` = ``0.5`` =
  ``\\frac{1}{2}``), falling back to exact numbers and then to normalised strings.
- :func:`answers_agree`: do two responses give the same final answer? ``None`` when an answer
  cannot be extracted (the judge turns that into -1, "could not judge").

Example::

    >>> answers_agree("So the answer is (B).", "B. Because ...")
    True
    >>> answers_agree("7 + 5 = 12, so 12.", "The answer is \\\\boxed{12}")
    True
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from fractions import Fraction

__all__ = ["extract_choice", "extract_math_answer", "math_equal", "answers_agree", "ANSWER_KINDS"]

ANSWER_KINDS = ("auto", "math", "choice")

# ---------------------------------------------------------------------------------------------
# Multiple choice
# ---------------------------------------------------------------------------------------------

_MARKDOWN = re.compile(r"[*_`#]+")
# After a cue, a letter is taken when it stands alone: "(B)", "B.", "b", "B because". A lower-case
# letter must not start a phrase ("the answer is a dog" commits to nothing).
_CUES = (
    r"answer\s*(?:is|:|=|would be|should be)?",
    r"(?:correct|right|best)\s+(?:option|choice|answer)\s*(?:is|:)?",
    r"\b(?:option|choice)",
    r"\bI\s*(?:would|'d|will|'ll)?\s*(?:choose|pick|select|go with)",
    r"\b(?:choose|pick|select)",
)


def _letter_pattern(letters: str) -> str:
    return rf"[\(\[]?\s*([{letters}])\s*[\)\]]?"


def _normalise_choices(choices: str | Sequence[str]) -> str:
    letters = "".join(choices) if not isinstance(choices, str) else choices
    if not letters or not all(c.isalpha() and c.isascii() for c in letters):
        raise ValueError(f"choices must be ASCII letters such as 'ABCD', got {choices!r}")
    return letters.upper()


_NOT_A_NOUN = {"or", "and", "is", "was", "seems", "looks", "because", "since", "as", "nor"}


def _is_article(text: str, start: int, end: int) -> bool:
    """Whether the capital "A" at ``text[start:end]`` is the article: it starts a sentence and
    a lower-case word other than "or", "is", ... follows ("A dog is ..." but not "A is right")."""
    starts_sentence = re.search(r"(?:^|[.!?:]\s+|\n)$", text[:start]) is not None
    following = re.match(r"\s+([a-z]+)", text[end:])
    return starts_sentence and following is not None and following.group(1) not in _NOT_A_NOUN


def extract_choice(text: str | None, choices: str | Sequence[str] = "ABCD") -> str | None:
    """The option letter ``text`` commits to (upper case), or None.

    In order: the last cue ("answer is", "option", "I choose", ...) followed by a letter;
    ``\\boxed{B}``; a response that starts with a bare letter ("B.", "(B)", "B) five", "B");
    a single distinct letter in brackets or standing alone as a capital anywhere.
    """
    if not text:
        return None
    letters = _normalise_choices(choices)
    lower = letters.lower()
    clean = _MARKDOWN.sub("", text).strip()

    # A cue then a letter. The letter must not begin a word ("answer is a dog", "option Apple").
    cue_hits = []
    for cue in _CUES:
        pattern = rf"{cue}\s*{_letter_pattern(letters + lower)}(?![A-Za-z])"
        for m in re.finditer(pattern, clean, flags=re.IGNORECASE):
            letter = m.group(1)
            if letter.islower() and re.match(r"\s+[A-Za-z]", clean[m.end() :]):
                continue  # "the answer is a dog": an article, not an option
            cue_hits.append((m.start(1), letter.upper()))
    if cue_hits:
        return max(cue_hits)[1]  # the last commitment wins ("A? No: the answer is C")

    m = re.search(rf"\\boxed\{{\s*(?:\\text\{{)?\s*\(?([{letters}{lower}])\)?\s*\}}", clean)
    if m:
        return m.group(1).upper()

    # The response starts with the letter: "B", "B.", "(B)", "B) 34", "B: 34", "b".
    m = re.match(rf"[\(\[]?([{letters}{lower}])(?:[\)\]\.:,]|\s*$)", clean)
    if m:
        return m.group(1).upper()

    # One distinct option letter in brackets, or a lone capital not used as the article "A".
    found = {m.group(1) for m in re.finditer(rf"[\(\[]([{letters}])[\)\]]", clean)}
    if not found:
        for m in re.finditer(rf"\b([{letters}])\b", clean):
            if m.group(1) == "A" and _is_article(clean, m.start(), m.end()):
                continue
            found.add(m.group(1))
    return found.pop() if len(found) == 1 else None


# ---------------------------------------------------------------------------------------------
# Math
# ---------------------------------------------------------------------------------------------

# A number: a sign only where it cannot be a binary minus ("10-5" is not -5), thousands
# separators only in groups of three ("1,234" but not the list "1,2,3"), an optional fraction.
_NUMBER = re.compile(
    r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?"
    r"|(?:(?<![\w)])-)?\.\d+"
)
_ANSWER_CUE = re.compile(
    r"(?:final\s+answer|answer|result)\s*(?:is|:|=|would be|should be|equals)\s*:?\s*"
    r"(?P<span>.+?)(?=\s*(?:\n|$|\.\s|\.$|;|,\s+(?:so|which|because|since)\b))",
    re.IGNORECASE,
)
_WORD_VALUES = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_WORD_VALUES.update(
    {
        w: 10 * i
        for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split())
        if i >= 2
    }
)
_WORD_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_NUMBER_WORDS = "|".join(sorted([*_WORD_VALUES, *_WORD_SCALES], key=len, reverse=True))
_WORD_NUMBER = re.compile(
    rf"\b(?:(?:minus|negative)\s+)?(?:(?:{_NUMBER_WORDS})\b(?:[\s-]+(?:and\s+)?)?)+",
    re.IGNORECASE,
)


def _boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    depth, i = 1, starts[-1]
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[starts[-1] : i - 1].strip() if depth == 0 else None


def _clean_span(span: str) -> str:
    span = _MARKDOWN.sub("", span).strip().strip("$").strip()
    span = re.sub(r"^\\\(|\\\)$", "", span).strip()
    span = span.rstrip(".").strip()
    if "=" in span:  # "x = 5" -> "5"
        span = span.rsplit("=", 1)[1].strip()
    number = _NUMBER.match(span)
    rest = span[number.end() :] if number else ""
    # "42 apples" -> "42", but "2x+1", "3 + x" and "2^3" are expressions, kept whole.
    if number and not re.match(r"[a-zA-Z(\\^]|\s*[\^\\*+\-/=]", rest):
        return number.group().replace(",", "").replace(" ", "")
    return span


def _words_to_number(phrase: str) -> int | None:
    """``"forty-two"`` -> 42, ``"minus three hundred and five"`` -> -305."""
    words = [w for w in re.split(r"[\s-]+", phrase.lower()) if w and w != "and"]
    sign = -1 if words and words[0] in ("minus", "negative") else 1
    words = words[1:] if sign < 0 else words
    total, current = 0, 0
    for w in words:
        if w in _WORD_VALUES:
            current += _WORD_VALUES[w]
        elif w == "hundred":
            current = max(current, 1) * 100
        elif w in _WORD_SCALES:
            total += max(current, 1) * _WORD_SCALES[w]
            current = 0
        else:
            return None
    return sign * (total + current) if words else None


def extract_math_answer(text: str | None) -> str | None:
    """The final answer of a math response, as a string, or None.

    In order: the last ``\\boxed{}``; the last "answer is X" / "Answer: X" (a leading number
    is kept, "x = 5" gives "5"); the last number in the text; the last spelled-out number
    ("the answer is twelve" -> "12").
    """
    if not text:
        return None
    boxed = _boxed(text)
    if boxed:
        return _clean_span(boxed)
    cues = list(_ANSWER_CUE.finditer(text))
    if cues:
        span = _clean_span(cues[-1].group("span"))
        words = _WORD_NUMBER.fullmatch(span)
        value = _words_to_number(words.group()) if words else None
        if value is not None:
            return str(value)
        # A math-looking span ("42", "x+1", "\frac{1}{2}", "pi") is the answer; prose after
        # a cue ("as a result: we add them") is not, and the last number decides instead.
        prose = len(re.findall(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}", span)) >= 3
        if span and not prose:
            return span
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1].replace(",", "").replace(" ", "")
    spelled = [m.group().strip() for m in _WORD_NUMBER.finditer(text) if m.group().strip()]
    for phrase in reversed(spelled):
        value = _words_to_number(phrase)
        if value is not None:
            return str(value)
    return None


def _as_fraction(answer: str) -> Fraction | None:
    s = answer.strip().strip("$").replace(",", "").replace(" ", "")
    s = re.sub(r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}", r"\1/\2", s)
    percent = s.endswith("%") or s.endswith("\\%")
    s = s.rstrip("%").rstrip("\\")
    try:
        value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


def _math_verify_equal(pred: str, gold: str) -> bool | None:
    """math-verify's verdict, or None when it cannot parse either side."""
    try:  # local: sympy's start-up cost is paid only when exact comparison cannot decide
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a dependency of the train extra
        return None
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None

    def parsed(answer: str) -> list:
        # Bare answers parse best as inline math: "x+1" alone is read as the number 1.
        wrapped = answer if "$" in answer else f"${answer}$"
        return parse(wrapped, parsing_timeout=timeout) or parse(answer, parsing_timeout=timeout)

    try:
        gold_parsed, pred_parsed = parsed(gold), parsed(pred)
        if not gold_parsed or not pred_parsed:
            return None
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # math-verify raises assorted sympy errors on odd input
        return None


def _normalise_text(answer: str) -> str:
    s = _MARKDOWN.sub("", answer).strip().strip("$").rstrip(".").strip().lower()
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", s)
    return re.sub(r"\s+", " ", s)


def math_equal(pred: str | None, gold: str | None) -> bool:
    """Whether two final math answers are equal: ``"0.5"`` = ``"1/2"`` = ``"\\frac{1}{2}"``,
    ``"12"`` = ``"12.0"``, ``"x+1"`` = ``"1+x"``. Exact rationals first, then math-verify,
    then case- and space-insensitive string equality."""
    if pred is None or gold is None or not str(pred).strip() or not str(gold).strip():
        return False
    pred, gold = str(pred).strip(), str(gold).strip()
    a, b = _as_fraction(pred), _as_fraction(gold)
    if a is not None and b is not None:
        return a == b
    verdict = _math_verify_equal(pred, gold)
    if verdict:
        return True
    return _normalise_text(pred) == _normalise_text(gold)


# ---------------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------------


def answers_agree(
    a: str | None, b: str | None, kind: str = "auto", *, choices: str = "ABCD"
) -> bool | None:
    """Whether responses ``a`` and ``b`` give the same final answer; None if an answer cannot
    be extracted from one of them.

    ``kind="choice"`` compares option letters, ``"math"`` compares math answers, ``"auto"``
    compares letters when both responses commit to one and math answers otherwise.
    """
    if kind not in ANSWER_KINDS:
        raise ValueError(f"kind must be one of {ANSWER_KINDS}, got {kind!r}")
    if kind in ("auto", "choice"):
        x, y = extract_choice(a, choices), extract_choice(b, choices)
        if x is not None and y is not None:
            return x == y
        if kind == "choice":
            return None
    x, y = extract_math_answer(a), extract_math_answer(b)
    if x is None or y is None:
        return None
    return math_equal(x, y)
