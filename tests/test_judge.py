"""Judges: answer matching on hand-made cases, and the local-model judge's plumbing on a tiny
random-init causal LM with a tokenizer built here (nothing downloaded)."""

from __future__ import annotations

import pytest
import torch

from cord.rewards.judge import (
    AGREE,
    DEFAULT_JUDGE_PROMPT,
    DISAGREE,
    UNJUDGED,
    AnswerMatchJudge,
    GuardedJudge,
    Judge,
    LocalModelJudge,
    build_judge,
)

# ---------------------------------------------------------------------------------------------
# Answer matching
# ---------------------------------------------------------------------------------------------


def test_answer_match_judge_hand_cases():
    judge = build_judge("match")
    assert isinstance(judge, Judge)
    questions = ["What is 7 + 5?", "Which is a fruit?", "What is 1/2 as a decimal?", "Q", "Q"]
    candidates = ["It is 12.", "I choose (B).", "0.5", "The answer is 9", "No idea."]
    references = ["7 + 5 = \\boxed{12}", "B. mango", "The answer is $\\frac{1}{2}$", "It's 8", "4"]
    assert judge(questions, candidates, references) == [AGREE, AGREE, AGREE, DISAGREE, UNJUDGED]


def test_answer_match_judge_kinds():
    assert AnswerMatchJudge("choice")(["q"], ["The answer is 12"], ["B"]) == [UNJUDGED]
    assert AnswerMatchJudge("math")(["q"], ["x = 3"], ["3.0"]) == [AGREE]
    assert AnswerMatchJudge("choice", choices="ABCDE")(["q"], ["(E)"], ["Option E"]) == [AGREE]
    with pytest.raises(ValueError, match="kind must be one of"):
        AnswerMatchJudge("fuzzy")


def test_judges_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="one length, got 2, 1 and 1"):
        AnswerMatchJudge()(["a", "b"], ["1"], ["1"])


def test_build_judge_unknown_name():
    with pytest.raises(ValueError, match="judge must be one of"):
        build_judge("gpt")


# ---------------------------------------------------------------------------------------------
# Local-model judge on a tiny model
# ---------------------------------------------------------------------------------------------

MARKERS = {"cat": "yes", "dog": "no , they differ", "bird": "maybe"}


def _tokenizer(chat_template: str | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [DEFAULT_JUDGE_PROMPT, "Answer : yes no maybe they differ ( not given ) ...",
              "What is 7 + 5 ? cat dog bird 12 13 user assistant"]  # fmt: skip
    trainer = trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "</s>", "<s>"])
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>", bos_token="<s>"
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def _tiny_model(vocab_size: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        eos_token_id=2,
        pad_token_id=0,
    )
    return Qwen2ForCausalLM(config)


@pytest.fixture
def tokenizer():
    return _tokenizer()


@pytest.fixture
def model(tokenizer):
    return _tiny_model(len(tokenizer))


def _scripted_generate(tokenizer, calls):
    """A ``generate`` that answers each prompt by the marker word in its candidate."""

    def generate(input_ids, attention_mask, max_new_tokens, **kwargs):
        calls.append({"input_ids": input_ids, "attention_mask": attention_mask, **kwargs})
        rows = []
        for ids in input_ids:
            prompt = tokenizer.decode(ids, skip_special_tokens=True)
            candidate = prompt.split("Response 1 :")[1].split("Response 2")[0]
            marker = next(m for m in MARKERS if m in candidate)
            reply = tokenizer(MARKERS[marker], add_special_tokens=False)["input_ids"]
            rows.append(reply[:max_new_tokens] + [tokenizer.pad_token_id] * 3)
        width = max(len(r) for r in rows)
        new = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)

    return generate


def test_local_model_judge_parses_scripted_replies(model, tokenizer, monkeypatch):
    calls = []
    monkeypatch.setattr(model, "generate", _scripted_generate(tokenizer, calls))
    model.train()
    judge = build_judge("model", model=model, tokenizer=tokenizer, batch_size=2)
    questions = ["What is 7 + 5 ?", "", "What is 7 + 5 ?"]
    candidates = ["cat 12", "dog 13", "bird"]
    references = ["12", "12", "12"]
    assert judge(questions, candidates, references) == [AGREE, DISAGREE, UNJUDGED]

    assert len(calls) == 2  # batches of 2 then 1
    first = calls[0]
    # No pad token: the eos token pads during the call.
    assert first["do_sample"] is False and first["pad_token_id"] == tokenizer.eos_token_id
    # Left padding: every row ends in a real token, so generation continues from the prompt.
    assert bool(first["attention_mask"][:, -1].all())
    assert bool((first["attention_mask"][:, 0] == 0).any())  # the shorter prompt was padded
    # The model and tokenizer are left as they were.
    assert model.training
    assert tokenizer.padding_side == "right" and tokenizer.pad_token is None


def test_local_model_judge_prompt_contents(model, tokenizer):
    judge = LocalModelJudge(model, tokenizer, max_response_chars=10)
    (prompt,) = judge.build_prompts([""], ["x" * 50 + " final 12"], ["13"])
    assert "Question: (not given)" in prompt
    assert "Response 1: ...x final 12" in prompt  # long responses keep their end
    assert "Response 2: 13" in prompt and prompt.endswith("\nAnswer:")

    chat = _tokenizer(chat_template="<s>user: {{ messages[0]['content'] }} assistant:")
    (templated,) = LocalModelJudge(model, chat).build_prompts(["Q?"], ["cat"], ["dog"])
    assert templated.startswith("<s>user: Two responses") and templated.endswith("assistant:")


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("Yes.", AGREE),
        ("yes, both say 12", AGREE),
        ("**No**, they differ", DISAGREE),
        ("True", AGREE),
        ("false", DISAGREE),
        ("maybe", UNJUDGED),
        ("", UNJUDGED),
        ("Not sure", UNJUDGED),
    ],
)
def test_parse_verdict(reply, verdict):
    assert LocalModelJudge.parse_verdict(reply) == verdict


def test_local_model_judge_real_generate_on_tiny_model(model, tokenizer):
    # A random model says anything: the point is the real generate path (padding, devices,
    # slicing off the prompt) runs and returns one valid verdict per pair.
    judge = LocalModelJudge(model, tokenizer, max_new_tokens=3, batch_size=4)
    verdicts = judge(["What is 7 + 5 ?"] * 5, ["12", "13", "cat", "dog", "bird"], ["12"] * 5)
    assert len(verdicts) == 5 and set(verdicts) <= {AGREE, DISAGREE, UNJUDGED}
    assert judge([], [], []) == []


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens must be a positive int"),
        ({"batch_size": 1.5}, ValueError, "batch_size must be a positive int"),
        ({"prompt": "Q: {question}"}, ValueError, r"\['\{candidate\}', '\{reference\}'\]"),
    ],
)
def test_local_model_judge_bad_options(model, tokenizer, kwargs, error, message):
    with pytest.raises(error, match=message):
        LocalModelJudge(model, tokenizer, **kwargs)


def test_local_model_judge_needs_a_generating_model(tokenizer):
    with pytest.raises(TypeError, match="generate"):
        LocalModelJudge(object(), tokenizer)


# ---------------------------------------------------------------------------------------------
# A judge that raises: GuardedJudge (the trainer's own step is in test_trainer.py)
# ---------------------------------------------------------------------------------------------


def test_guarded_judge_turns_failures_into_unjudged():
    def broken(q, c, r):
        raise RuntimeError("CUDA out of memory")

    g = GuardedJudge(broken)
    assert g(["q"] * 2, ["a", "b"], ["a", "c"]) == [UNJUDGED, UNJUDGED]
    assert g.last_error == "RuntimeError: CUDA out of memory"
    assert GuardedJudge(lambda q, c, r: [1])(["q"] * 2, ["a", "b"], ["a", "b"]) == [-1, -1]
    assert GuardedJudge(lambda q, c, r: [1, 7])(["q"] * 2, ["a", "b"], ["a", "b"]) == [-1, -1]

    class WithMethod:
        def judge(self, q, c, r):
            return [1, -1]

    ok = GuardedJudge(WithMethod())
    assert ok(["q"] * 2, ["a", "b"], ["a", "b"]) == [1, -1]
    assert ok.pop_counts() == {"judge_errors": 0, "unjudged": 1}
    assert g.pop_counts() == {"judge_errors": 1, "unjudged": 2} and g.errors == 0
    with pytest.raises(TypeError, match="judge must be callable"):
        GuardedJudge(42)
