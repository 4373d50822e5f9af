"""Spoken-form normalisation of math text, so a TTS engine reads a question the way a person
would say it aloud.

``to_spoken`` turns LaTeX and plain-text math into English words::

    >>> to_spoken(r"What is $\\frac{1}{2} + x^2$?")
    'What is one half plus x squared?'
    >>> to_spoken("Solve 3x - 5 = -11.")
    'Solve three x minus five equals negative eleven.'

It is deterministic and rule based, in four passes, each on the output of the previous:

1. delimiters and Unicode: ``$...$``, ``\\(...\\)`` and ``\\[...\\]`` are dropped, ``\\$5`` is
   money, Unicode symbols (×, ÷, ≤, √, π, ², ½, ...) become their LaTeX spelling;
2. LaTeX: a small recursive reader for ``\\frac``, ``\\sqrt[n]{}``, ``^``, ``_``, ``\\sum_{}^{}``,
   ``\\lim_{}``, formatting commands (``\\text``, ``\\mathbf``, ...) and named symbols;
3. plain-text operators and relations (``+ - * / = < > <= % !``, ``|x|``, option labels ``(A)``),
   telling a binary minus from a negative sign and from a hyphen in a word;
4. numbers: integers (with thousands separators), decimals, ordinals and small fractions become
   words, e.g. ``1,234.5`` -> ``one thousand two hundred thirty-four point five``.

Text that is not math passes through unchanged apart from whitespace.
"""

from __future__ import annotations

import re

__all__ = ["to_spoken", "number_to_words", "ordinal_words", "fraction_words"]

# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (10**3, "thousand"))
_MAX_WORDED = 10**15  # above this, numbers are read digit by digit

_ORDINAL_IRREGULAR = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip


def _below_thousand(n: int) -> str:
    words = []
    if n >= 100:
        words.append(f"{_ONES[n // 100]} hundred")
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else ""))
    elif n or not words:
        words.append(_ONES[n])
    return " ".join(words)


def number_to_words(n: int) -> str:
    """English words for an integer: ``-1042`` -> ``'negative one thousand forty-two'``.

    Magnitudes of 10**15 and above are read digit by digit.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 0:
        return "negative " + number_to_words(-n)
    if n >= _MAX_WORDED:
        return _digits_to_words(str(n))
    words = []
    for scale, name in _SCALES:
        if n >= scale:
            words.append(f"{_below_thousand(n // scale)} {name}")
            n %= scale
    if n or not words:
        words.append(_below_thousand(n))
    return " ".join(words)


def ordinal_words(n: int) -> str:
    """``21`` -> ``'twenty-first'``, ``100`` -> ``'one hundredth'``."""
    words = number_to_words(n)
    head, sep, last = words.rpartition(" ")
    stem, hyphen, unit = last.rpartition("-")
    if unit in _ORDINAL_IRREGULAR:
        unit = _ORDINAL_IRREGULAR[unit]
    elif unit.endswith("y"):
        unit = unit[:-1] + "ieth"
    else:
        unit += "th"
    return head + sep + stem + hyphen + unit


def fraction_words(numerator: int, denominator: int) -> str:
    """``(1, 2)`` -> ``'one half'``, ``(3, 4)`` -> ``'three fourths'``, ``(7, 12)`` -> ``'seven over
    twelve'``: the ordinal form for denominators 2-10, ``over`` otherwise."""
    num = number_to_words(numerator)
    if not 2 <= denominator <= 10:
        return f"{num} over {number_to_words(denominator)}"
    plural = abs(numerator) != 1
    if denominator == 2:
        return f"{num} {'halves' if plural else 'half'}"
    return f"{num} {ordinal_words(denominator)}{'s' if plural else ''}"


def _digits_to_words(digits: str) -> str:
    return " ".join(_ONES[int(d)] for d in digits)


def _numeral_to_words(integer: str, fraction: str | None) -> str:
    """``('1,234', '05')`` -> ``'one thousand two hundred thirty-four point zero five'``."""
    integer = integer.replace(",", "")
    if not integer:
        words = "point"
    elif len(integer) > 1 and integer.startswith("0"):
        words = _digits_to_words(integer)  # a code such as 007, not a quantity
    else:
        words = number_to_words(int(integer))
    if fraction is not None:
        words = (
            f"{words} point {_digits_to_words(fraction)}"
            if integer
            else f"point {_digits_to_words(fraction)}"
        )
    return words


# ---------------------------------------------------------------------------------------------
# Pass 1: delimiters and Unicode
# ---------------------------------------------------------------------------------------------

_UNICODE = {
    "×": r" \times ", "·": r" \cdot ", "⋅": r" \cdot ", "÷": r" \div ", "−": "-", "–": "-",
    "≤": r" \leq ", "≥": r" \geq ", "≠": r" \neq ", "≈": r" \approx ", "±": r" \pm ",
    "∞": r" \infty ", "π": r" \pi ", "θ": r" \theta ", "α": r" \alpha ", "β": r" \beta ",
    "√": r"\sqrt", "∛": r"\sqrt[3]", "°": r"^\circ", "²": "^2", "³": "^3",
    "½": r"\frac{1}{2}", "⅓": r"\frac{1}{3}", "¼": r"\frac{1}{4}", "¾": r"\frac{3}{4}",
    "∠": r" \angle ", "△": r" \triangle ", "∈": r" \in ", "∪": r" \cup ", "∩": r" \cap ",
    "→": r" \to ", "⇒": r" \implies ", "∑": r"\sum", "∫": r"\int", "∆": r" \Delta ",
}  # fmt: skip
_MONEY = re.compile(r"\\\$\s?(\d[\d,]*(?:\.\d+)?)")
_INLINE_MATH = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$", re.S)
_LONE_DOLLAR = re.compile(r"\$\s?(\d[\d,]*(?:\.\d+)?)")


def _money(m: re.Match) -> str:
    """``$5.50`` -> ``five dollars and fifty cents``."""
    integer, _, cents = m.group(1).replace(",", "").partition(".")
    dollars = f"{number_to_words(int(integer))} dollar{'' if integer == '1' else 's'}"
    if len(cents) == 2:
        if cents == "00":
            return dollars
        return f"{dollars} and {number_to_words(int(cents))} cent{'' if cents == '01' else 's'}"
    if cents:
        return f"{_numeral_to_words(integer, cents)} dollars"
    return dollars


_REPEATING = re.compile(r"(\d*)\.\\overline\{?(\d+)\}?")


def _repeating(m: re.Match) -> str:
    """``0.\\overline{3}`` -> ``zero point three repeating``."""
    return f"{_numeral_to_words(m.group(1), m.group(2))} repeating"


def _delimiters_and_unicode(text: str) -> str:
    text = _REPEATING.sub(_repeating, text)
    text = _MONEY.sub(_money, text)
    text = _INLINE_MATH.sub(lambda m: m.group(1) or m.group(2), text)
    text = _LONE_DOLLAR.sub(_money, text)  # an unpaired "$5" is money
    text = re.sub(r"\\[()\[\]]", " ", text)
    return "".join(_UNICODE.get(c, c) for c in text)


# ---------------------------------------------------------------------------------------------
# Pass 2: LaTeX
# ---------------------------------------------------------------------------------------------

_GREEK = (
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi "
    "omicron pi rho sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Pi "
    "Sigma Phi Psi Omega"
).split()
_SYMBOLS = {
    "times": "times", "cdot": "times", "ast": "times", "div": "divided by",
    "pm": "plus or minus", "mp": "minus or plus", "leq": "is less than or equal to",
    "le": "is less than or equal to", "geq": "is greater than or equal to",
    "ge": "is greater than or equal to", "neq": "is not equal to", "ne": "is not equal to",
    "lt": "is less than", "gt": "is greater than", "approx": "is approximately equal to",
    "equiv": "is equivalent to", "sim": "is similar to", "cong": "is congruent to",
    "propto": "is proportional to", "infty": "infinity", "angle": "angle",
    "triangle": "triangle", "parallel": "is parallel to", "perp": "is perpendicular to",
    "in": "is in", "notin": "is not in", "subset": "is a subset of",
    "subseteq": "is a subset of", "cup": "union", "cap": "intersection",
    "emptyset": "the empty set", "varnothing": "the empty set", "cdots": "and so on",
    "ldots": "and so on", "dots": "and so on", "forall": "for all", "exists": "there exists",
    "to": "to", "rightarrow": "implies", "Rightarrow": "implies", "implies": "implies",
    "iff": "if and only if", "Leftrightarrow": "if and only if", "mid": "divides",
    "partial": "partial", "nabla": "del", "prime": "prime", "circ": "composed with",
    "therefore": "therefore", "because": "because", "neg": "not", "land": "and", "wedge": "and",
    "lor": "or", "vee": "or", "percent": "percent", "%": "percent", "degree": "degrees",
    "bmod": "mod", "mod": "mod", "{": "", "}": "", "$": "dollars", "&": "and", "#": "number",
    "lfloor": "the floor of", "rfloor": "", "lceil": "the ceiling of", "rceil": "",
    "sin": "sine", "cos": "cosine", "tan": "tangent", "cot": "cotangent", "sec": "secant",
    "csc": "cosecant", "arcsin": "arc sine", "arccos": "arc cosine", "arctan": "arc tangent",
    "ln": "the natural log of", "exp": "the exponential of", "max": "the maximum of",
    "min": "the minimum of", "gcd": "the greatest common divisor of",
    "lcm": "the least common multiple of", "det": "the determinant of",
}  # fmt: skip
_SYMBOLS.update({g: g.lower() for g in _GREEK})
_UNWRAP = {
    "text", "textbf", "textit", "textrm", "mathrm", "mathbf", "mathit", "mathbb", "mathcal",
    "mathsf", "operatorname", "boxed", "emph", "mbox", "hbox", "underline",
}  # fmt: skip
_DROP = {
    "left", "right", "displaystyle", "textstyle", "big", "Big", "bigg", "Bigg", "bigl", "bigr",
    "Bigl", "Bigr", "limits", "nolimits", "quad", "qquad", "!", ",", ";", ":", " ",
}  # fmt: skip
_ACCENTS = {"overline": "bar", "bar": "bar", "hat": "hat", "tilde": "tilde", "dot": "dot"}
_BIG_OPERATORS = {"sum": "the sum", "prod": "the product", "int": "the integral"}
_ROOTS = {"2": "square", "3": "cube"}
_NUMBER_RUN = re.compile(r"-?\d+(?:\.\d+)?")


class _LatexReader:
    """Recursive reader over one string; ``read()`` returns the text with LaTeX spoken."""

    def __init__(self, source: str) -> None:
        self.s = source
        self.i = 0

    def read(self, stop: str | None = None) -> str:
        out: list[str] = []
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == stop:
                self.i += 1
                break
            if c == "\\":
                out.append(self._command())
            elif c == "{":
                self.i += 1
                out.append(self.read("}"))
            elif c == "^":
                self.i += 1
                out.append(self._power(self._argument(whole_number=True)))
            elif c == "_":
                self.i += 1
                out.append(f" sub {self._argument(whole_number=True)} ")
            elif c in "&~":
                self.i += 1
                out.append(" ")
            else:
                self.i += 1
                out.append(c)
        return "".join(out)

    def _skip_spaces(self) -> None:
        while self.i < len(self.s) and self.s[self.i] == " ":
            self.i += 1

    def _argument(self, *, whole_number: bool = False) -> str:
        """The next argument: a ``{group}``, a ``\\command``, a ``(group)`` (plain-text
        ``sqrt(x+1)``), a whole number when ``whole_number`` (plain-text ``x^10``, ``√16``),
        else one character (LaTeX's ``\\frac12``)."""
        self._skip_spaces()
        if self.i >= len(self.s):
            return ""
        c = self.s[self.i]
        if c == "{":
            self.i += 1
            return self.read("}").strip()
        if c == "(":
            self.i += 1
            return self.read(")").strip()
        if c == "\\":
            return self._command().strip()
        if whole_number:
            m = _NUMBER_RUN.match(self.s, self.i)
            if m:
                self.i = m.end()
                return m.group()
        self.i += 1
        return c

    def _optional_argument(self) -> str | None:
        self._skip_spaces()
        if self.i < len(self.s) and self.s[self.i] == "[":
            self.i += 1
            return self.read("]").strip()
        return None

    def _power(self, exponent: str) -> str:
        exponent = exponent.strip()
        if exponent == "2":
            return " squared "
        if exponent == "3":
            return " cubed "
        if exponent in ("composed with", "degrees"):  # ^\circ
            return " degrees "
        if exponent == "T":
            return " transpose "
        return f" to the power of {exponent} "

    def _command(self) -> str:
        self.i += 1  # the backslash
        m = re.compile(r"[A-Za-z]+").match(self.s, self.i)
        if m:
            name = m.group()
            self.i = m.end()
        else:  # a one-character command: \, \; \% \{ \\
            name = self.s[self.i : self.i + 1]
            self.i += 1
        if name == "\\":
            return ", "
        if name in _DROP:
            return " "
        if name in ("frac", "dfrac", "tfrac"):
            numerator, denominator = self._argument().strip(), self._argument().strip()
            if re.fullmatch(r"-?\d+", numerator) and re.fullmatch(r"\d+", denominator):
                return f" {fraction_words(int(numerator), int(denominator))} "
            return f" {numerator} over {denominator} "
        if name == "binom":
            n, k = self._argument(), self._argument()
            return f" {n} choose {k} "
        if name == "sqrt":
            index = self._optional_argument()
            radicand = self._argument(whole_number=True)
            if index is None or index in _ROOTS:
                return f" the {_ROOTS.get(index or '2')} root of {radicand} "
            if re.fullmatch(r"\d+", index):
                return f" the {ordinal_words(int(index))} root of {radicand} "
            return f" the {index}th root of {radicand} "
        if name in _UNWRAP:
            return self._argument()
        if name in _ACCENTS:
            return f" {self._argument()} {_ACCENTS[name]} "
        if name == "vec":
            return f" vector {self._argument()} "
        if name == "pmod":
            return f" modulo {self._argument()} "
        if name == "log":
            if self._peek("_"):
                self.i += 1
                return f" log base {self._argument(whole_number=True)} of "
            return " log "
        if name == "lim":
            if self._peek("_"):
                self.i += 1
                below = self._argument().replace(" to ", " approaches ")
                return f" the limit as {below} of "
            return " the limit of "
        if name in _BIG_OPERATORS:
            spoken = _BIG_OPERATORS[name]
            if self._peek("_"):
                self.i += 1
                spoken += f" from {self._argument(whole_number=True)}"
            if self._peek("^"):
                self.i += 1
                spoken += f" to {self._argument(whole_number=True)}"
            return f" {spoken} of "
        if name in _SYMBOLS:
            return f" {_SYMBOLS[name]} "
        return f" {name} "  # an unknown command: say its name rather than drop content

    def _peek(self, char: str) -> bool:
        self._skip_spaces()
        return self.i < len(self.s) and self.s[self.i] == char


# ---------------------------------------------------------------------------------------------
# Pass 3: plain-text operators; pass 4: numbers
# ---------------------------------------------------------------------------------------------

_NUM = r"\d[\d,]*(?:\.\d+)?|\.\d+"
_RULES: list[tuple[re.Pattern, object]] = [
    (re.compile(r"\*\*(.+?)\*\*"), r"\1"),  # markdown bold
    (re.compile(r"(^|\s)\(([A-H])\)\s*", re.M), r"\1option \2, "),  # "(A) 5" option labels
    (re.compile(r"^([A-H])[.)]\s+", re.M), r"option \1, "),  # "A. 5" at a line start
    (re.compile(r"\|([^|\n]+)\|"), r" the absolute value of \1 "),
    (re.compile(r"\)\s*\("), ") times ("),  # (31)(30): a product
    (re.compile(r"(\d\s*)([a-zA-Z]{1,3})/([a-zA-Z]{1,3})\b"), r"\1\2 per \3"),  # 60 km/h
    (re.compile(r"\b([fgh])''\("), r"\1 double prime of ("),  # f''(x): derivatives
    (re.compile(r"\b([fgh])'\("), r"\1 prime of ("),
    (re.compile(r"\b([fgh])\("), r"\1 of ("),  # f(x): function application
    (re.compile(r"<=|≤"), " is less than or equal to "),
    (re.compile(r">="), " is greater than or equal to "),
    (re.compile(r"!=|=/="), " is not equal to "),
    (re.compile(r"==?"), " equals "),
    (re.compile(r"<"), " is less than "),
    (re.compile(r">"), " is greater than "),
    (re.compile(r"(\d|\))!"), r"\1 factorial"),
    (re.compile(r"%"), " percent "),
    (re.compile(r"\+"), " plus "),
    (re.compile(r"\*"), " times "),
    (re.compile(r"(?<=\d):(?=\d)"), " to "),  # a ratio 3:4
    (re.compile(r"(?<=\d)\s+x\s+(?=\d)"), " times "),  # "2 x 3"
    (re.compile(r"\s--\s|—"), ", "),  # a dash between clauses
]
# A minus sign is negative when it starts an operand: at the start, or after an operator,
# an opening bracket, a space that is not followed by a space, or a comma.
_NEGATIVE = re.compile(r"(^|[\s(\[{,=/^])-(?=\d|\.\d)")
# A binary minus: spaced out ("a - b"), or tight after a number/bracket ("3-4", ")-x"),
# or between single-letter variables and numbers ("x-1", "x-y"). "well-known" is left alone.
_BINARY_MINUS = [
    re.compile(r"\s-\s"),
    re.compile(r"(?<=[\d)\]])-(?=[\w(.])"),
    re.compile(r"(?<=\b[a-zA-Z])-(?=\d|\()"),
    re.compile(r"(?<=\b[a-zA-Z])-(?=[a-zA-Z]\b)"),
]
_SLASH = re.compile(rf"({_NUM}|\b[a-zA-Z]\b|\))\s*/\s*({_NUM}|\b[a-zA-Z]\b|\()")
_ORDINAL = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b")
_NUMERAL = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+|)(?:\.(\d+))?(?![\d])")


def _slash(m: re.Match) -> str:
    left, right = m.group(1), m.group(2)
    if " " in m.group():  # "100 / 7" is a division, "3/4" a fraction
        return f"{left} divided by {right}"
    if re.fullmatch(r"\d+", left) and re.fullmatch(r"\d+", right) and int(right) > 0:
        return fraction_words(int(left), int(right))
    return f"{left} over {right}"


def _operators(text: str) -> str:
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    text = _SLASH.sub(_slash, text)
    text = _NEGATIVE.sub(r"\1negative ", text)
    for pattern in _BINARY_MINUS:
        text = pattern.sub(" minus ", text)
    return text


def _numeral(m: re.Match) -> str:
    integer, fraction = m.group(1), m.group(2)
    if not integer and fraction is None:
        return m.group()
    return f" {_numeral_to_words(integer, fraction)} "


def _numbers(text: str) -> str:
    text = _ORDINAL.sub(lambda m: ordinal_words(int(m.group(1))), text)
    text = re.sub(r"(\d)(?=[A-Za-z])|(?<=[A-Za-z])(?=\d)", r"\1 ", text)  # 2x -> 2 x, x2 -> x 2
    return _NUMERAL.sub(_numeral, text)


def _tidy(text: str) -> str:
    # Line breaks end a spoken phrase: a period unless the line already ends in punctuation.
    text = re.sub(r"\s*\n+\s*", lambda m: "\n", text.strip())
    text = re.sub(r"(?<=[^.?!:;,])\n", ". ", text).replace("\n", " ")
    text = re.sub(r"[()\[\]{}]", " ", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.?!;:])", r"\1", text)
    text = re.sub(r",(?=[,.?!;:])", "", text)  # "five,." -> "five."
    return text.strip()


def to_spoken(text: str) -> str:
    """Spoken English for math text (LaTeX or plain), e.g. ``r'\\sqrt{16} = 4'`` ->
    ``'the square root of sixteen equals four'``. Deterministic; non-math text is unchanged
    apart from whitespace."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text = _delimiters_and_unicode(text)
    text = _LatexReader(text).read()
    text = _operators(text)
    text = _numbers(text)
    return _tidy(text)
