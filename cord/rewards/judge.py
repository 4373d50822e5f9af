"""Judges for CORD's sequence-level reward (paper eq. 8).

A judge compares each audio-conditioned answer with the text-conditioned reference answer
(the model's own answer to the text prompt, not a gold answer) and says 1 (same final answer),
0 (different) or -1 (could not judge; ``grpo_loss`` excludes those from the advantage, the
trainer passes them as NaN rewards)::

    judge = build_judge("match")                       # answer extraction + math-verify
    judge(["What is 7 + 5?"], ["It is 12."], ["7 + 5 = 12"])   # -> [1]

    judge = build_judge("model", model=lm, tokenizer=tok)   # a local causal LM asked yes/no

To add a judge, write any callable with the :class:`Judge` signature.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from cord.rewards.answers import ANSWER_KINDS, answers_agree

__all__ = [
    "Judge",
    "AnswerMatchJudge",
    "LocalModelJudge",
    "build_judge",
    "JUDGES",
    "AGREE",
    "DISAGREE",
    "UNJUDGED",
    "GuardedJudge",
]

AGREE, DISAGREE, UNJUDGED = 1, 0, -1


@runtime_checkable
class Judge(Protocol):
    """``judge(questions, candidates, references) -> verdicts``, all lists of one length B.

    ``questions[i]`` is the text form of prompt i (may be empty), ``candidates[i]`` the audio-
    conditioned response, ``references[i]`` the text-conditioned one. Each verdict is
    ``1`` agree, ``0`` disagree or ``-1`` could not judge.
    """

    def __call__(
        self, questions: list[str], candidates: list[str], references: list[str]
    ) -> list[int]: ...


def _check_lengths(questions: Sequence, candidates: Sequence, references: Sequence) -> None:
    if not (len(questions) == len(candidates) == len(references)):
        raise ValueError(
            "questions, candidates and references must have one length, got "
            f"{len(questions)}, {len(candidates)} and {len(references)}"
        )


class AnswerMatchJudge:
    """Agreement of extracted final answers (:func:`cord.rewards.answers.answers_agree`): option
    letters for multiple choice, math-verify for math. -1 when either answer has no
    extractable final answer.

    Args:
        kind: ``"auto"`` (letters when both responses commit to one, else math), ``"math"`` or
            ``"choice"``.
        choices: the option letters for multiple choice.
    """

    def __init__(self, kind: str = "auto", *, choices: str = "ABCD") -> None:
        if kind not in ANSWER_KINDS:
            raise ValueError(f"kind must be one of {ANSWER_KINDS}, got {kind!r}")
        self.kind = kind
        self.choices = choices

    def __call__(
        self, questions: list[str], candidates: list[str], references: list[str]
    ) -> list[int]:
        _check_lengths(questions, candidates, references)
        verdicts = []
        for candidate, reference in zip(candidates, references, strict=True):
            agree = answers_agree(candidate, reference, self.kind, choices=self.choices)
            verdicts.append(UNJUDGED if agree is None else int(agree))
        return verdicts

    def __repr__(self) -> str:
        return f"AnswerMatchJudge(kind={self.kind!r})"


DEFAULT_JUDGE_PROMPT = (
    "Two responses answer the same question. Decide whether they reach the same final answer; "
    "ignore wording, explanation and formatting.\n\n"
    "Question: {question}\n\n"
    "Response 1: {candidate}\n\n"
    "Response 2: {reference}\n\n"
    "Do Response 1 and Response 2 give the same final answer? Reply with yes or no."
)
_VERDICT = re.compile(r"\b(yes|no|true|false)\b")


class LocalModelJudge:
    """Asks a local causal LM whether two responses give the same final answer.

    The prompt (``prompt``, with ``{question}``, ``{candidate}``, ``{reference}``) goes through
    the tokenizer's chat template when it has one; greedy decoding of ``max_new_tokens`` tokens,
    left-padded batches of ``batch_size``. The first "yes"/"true" or "no"/"false" in the reply
    is the verdict, anything else is -1.

    Args:
        model: a transformers model with ``generate`` (e.g. ``AutoModelForCausalLM``; the policy
            itself works too, it is switched to eval mode for the call and back).
        tokenizer: its tokenizer. Its padding side and pad token are restored after each call.
        max_new_tokens: reply length; a verdict comes in the first word or two.
        batch_size: prompts per ``generate`` call.
        max_response_chars: responses longer than this keep their last characters (where the
            final answer is).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 8,
        batch_size: int = 8,
        prompt: str = DEFAULT_JUDGE_PROMPT,
        max_response_chars: int = 4000,
    ) -> None:
        if not hasattr(model, "generate"):
            raise TypeError(f"model must have a generate method, got {type(model).__name__}")
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be a transformers tokenizer, got {tokenizer!r}")
        for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size),
                            ("max_response_chars", max_response_chars)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        missing = [f for f in ("{question}", "{candidate}", "{reference}") if f not in prompt]
        if missing:
            raise ValueError(f"prompt must contain the fields {missing}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.prompt = prompt
        self.max_response_chars = max_response_chars

    def _clip(self, response: str) -> str:
        response = (response or "").strip()
        if len(response) > self.max_response_chars:
            return "..." + response[-self.max_response_chars :]
        return response

    def build_prompts(
        self, questions: list[str], candidates: list[str], references: list[str]
    ) -> list[str]:
        """The judge prompts as strings, chat template applied when the tokenizer has one."""
        prompts = []
        for question, candidate, reference in zip(questions, candidates, references, strict=True):
            content = self.prompt.format(
                question=(question or "").strip() or "(not given)",
                candidate=self._clip(candidate),
                reference=self._clip(reference),
            )
            if getattr(self.tokenizer, "chat_template", None):
                content = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": content}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
            else:
                content += "\nAnswer:"
            prompts.append(content)
        return prompts

    @staticmethod
    def parse_verdict(reply: str) -> int:
        """``"Yes."`` -> 1, ``"**No**, they differ"`` -> 0, ``"maybe"`` -> -1."""
        m = _VERDICT.search(reply.lower())
        if m is None:
            return UNJUDGED
        return AGREE if m.group(1) in ("yes", "true") else DISAGREE

    def __call__(
        self, questions: list[str], candidates: list[str], references: list[str]
    ) -> list[int]:
        _check_lengths(questions, candidates, references)
        if not candidates:
            return []
        prompts = self.build_prompts(questions, candidates, references)
        tokenizer, model = self.tokenizer, self.model
        saved = (tokenizer.padding_side, tokenizer.pad_token)
        was_training = getattr(model, "training", False)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError("tokenizer needs a pad token or an eos token to batch prompts")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # generation continues from the last real token
        # A chat template already wrote the special tokens into the string.
        add_special = not getattr(tokenizer, "chat_template", None)
        verdicts: list[int] = []
        try:
            model.eval()
            for start in range(0, len(prompts), self.batch_size):
                batch = tokenizer(
                    prompts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=add_special,
                )
                batch = {k: v.to(model.device) for k, v in batch.items()}
                with torch.no_grad():
                    output = model.generate(
                        **batch,
                        max_new_tokens=self.max_new_tokens,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                # (batch, prompt_len + new) -> the new tokens only
                replies = tokenizer.batch_decode(
                    output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
                )
                verdicts.extend(self.parse_verdict(r) for r in replies)
        finally:
            tokenizer.padding_side, tokenizer.pad_token = saved
            if was_training:
                model.train()
        return verdicts


class GuardedJudge:
    """Wraps a judge so that its failures never kill a training step.

    An exception inside ``judge`` (a model judge running out of memory, a tokenizer error), a
    wrong number of verdicts or a verdict outside {1, 0, -1} makes every verdict of that call
    :data:`UNJUDGED` ("could not judge"; the objective's unjudged-reward policy applies), and
    is counted. Verdicts the judge itself could not decide (an unparseable model reply) are
    counted too.

    Attributes:
        errors: calls that raised or returned malformed verdicts, since the last :meth:`pop_counts`.
        unjudged: verdicts returned as UNJUDGED for any reason, since the last :meth:`pop_counts`.
        last_error: the message of the latest failure (for the log), or None.
    """

    def __init__(self, judge: Any) -> None:
        # An object with a ``judge`` method works too, as everywhere a judge is taken.
        fn = getattr(judge, "judge", judge)
        if not callable(fn):
            raise TypeError(f"judge must be callable or have a judge method, got "
                            f"{type(judge).__name__}")
        self.inner = judge
        self._fn = fn
        self.errors = 0
        self.unjudged = 0
        self.last_error: str | None = None

    def __call__(
        self, questions: list[str], candidates: list[str], references: list[str]
    ) -> list[int]:
        _check_lengths(questions, candidates, references)  # a caller's bug still raises
        try:
            verdicts = list(self._fn(questions, candidates, references))
            if len(verdicts) != len(candidates):
                raise ValueError(f"returned {len(verdicts)} verdicts for {len(candidates)} "
                                 "candidates")
            bad = [v for v in verdicts if v not in (AGREE, DISAGREE, UNJUDGED)]
            if bad:
                raise ValueError(f"verdicts must be 1, 0 or -1, got {bad[:3]}")
        except Exception as err:  # noqa: BLE001 -- any judge failure becomes "undecided"
            self.errors += 1
            self.last_error = f"{type(err).__name__}: {err}"
            verdicts = [UNJUDGED] * len(candidates)
        self.unjudged += sum(v == UNJUDGED for v in verdicts)
        return [int(v) for v in verdicts]

    def pop_counts(self) -> dict[str, int]:
        """``{"judge_errors", "unjudged"}`` since the previous call, then resets them."""
        out = {"judge_errors": self.errors, "unjudged": self.unjudged}
        self.errors = self.unjudged = 0
        return out

    def __repr__(self) -> str:
        return f"GuardedJudge({self.inner!r})"


JUDGES: dict[str, type] = {"match": AnswerMatchJudge, "model": LocalModelJudge}


def build_judge(name: str, **kwargs: Any) -> Judge:
    """``"match"`` -> :class:`AnswerMatchJudge` (``kind=``, ``choices=``); ``"model"`` ->
    :class:`LocalModelJudge` (``model=``, ``tokenizer=``, ...)."""
    if name not in JUDGES:
        raise ValueError(f"judge must be one of {sorted(JUDGES)} (a config's judge may also be "
                         f"'none', which builds no judge), got {name!r}")
    return JUDGES[name](**kwargs)
