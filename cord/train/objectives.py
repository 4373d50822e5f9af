"""Training objectives: CORD and the paper's baselines, each one micro-batch -> loss + metrics.

The paper's Table 3 ladder:

    grpo      (ii)  L_seq only: GRPO over groups of N audio rollouts (T=1.5), binary rewards
                    from a judge comparing each with the teacher's answer to the text prompt
                    (paper eqs. 8-10)
    grpo_opd  (iii) L_tok with alpha = position_beta = 1 (uniform on-policy reverse KL) + w * L_seq
    cord      (iv)  L_tok + w * L_seq: on-policy audio rollouts (T=1.0) scored by the student
                    (audio prompt) and the teacher (text prompt, same tokens), weighted by
                    divergence and position (paper eqs. 2-11)

and the other baselines:

    opd    L_tok, alpha = position_beta = 1, alone   uniform on-policy reverse KL, no L_seq
    sft    -sum_t log p(y_hat_t | y_hat_<t, x^a) / B   on teacher rollouts y_hat ~ p(.|x^t)
    fkl    sum_t KL(q_t || p_t) / B                    on teacher rollouts (paper eq. 13)
    sft_gold  sft on the dataset's reference answers (a diagnostic: imitation of gold answers)
    alarm  sft on the teacher's answer rephrased by the model itself so that it no longer
           mentions reading a text (ALARM's self-rephrasing)

Every loss is summed over tokens and averaged over the sequences of the micro-batch (the
paper's "batchmean"), so averaging gradients over processes and accumulation steps gives the
loss of the global batch. All losses come from the public ``cord_kernels`` API.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import cord_kernels
from cord.config import NEEDS, CordConfig, cord_has_seq
from cord.data.paired import PairedBatch
from cord.models.adapter import CompletionHidden, ModelAdapter, PromptBatch
from cord.models.rollout import Rollouts, sample, text_references
from cord.train.metrics import agreement_stats, kl_stats, reward_stats
from cord.train.teacher import Teacher
from cord_kernels import (
    fused_linear_cord_token_loss,
    fused_linear_distill_loss,
    fused_linear_token_logprobs,
)


@dataclass
class StepContext:
    """What an objective needs: the student (adapter over the prepared model), the teacher,
    the judge (None where the objective needs none) and the config."""

    adapter: ModelAdapter
    teacher: Teacher
    config: CordConfig
    judge: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass
class LossOutput:
    """A micro-batch's differentiable loss, its scalar metrics and its generated-token count."""

    loss: torch.Tensor
    metrics: dict[str, float]
    num_generated_tokens: int


# -- building blocks ---------------------------------------------------------------------------


def _prompts(ctx: StepContext, batch: PairedBatch) -> tuple[PromptBatch, PromptBatch]:
    cfg = ctx.config
    x_a = ctx.adapter.audio_prompts(batch.audios, sampling_rate=batch.sampling_rate,
                                    instruction=cfg.instruction or None,
                                    names=[f"item {i!r}" for i in batch.ids])
    x_t = ctx.adapter.text_prompts(batch.texts, instruction=cfg.instruction or None)
    return x_a.to(ctx.device), x_t.to(ctx.device)


def token_logprobs_of(
    ctx: StepContext, prompts: PromptBatch, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """(B, T) differentiable log p(completion token | prefix, prompt) under the student."""
    labels = ids.masked_fill(~mask, -100)
    if ctx.config.use_fused_linear:
        h = ctx.adapter.completion_hidden(prompts, ids, mask)
        return fused_linear_token_logprobs(h.hidden, h.weight, labels, bias=h.bias)
    logits = ctx.adapter.completion_logits(prompts, ids, mask)
    return cord_kernels.token_logprobs(logits, labels)


def token_kl_loss(
    ctx: StepContext,
    x_a: PromptBatch,
    x_t: PromptBatch,
    rollouts: Rollouts,
    *,
    top_k: int,
    alpha: float,
    position_beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_tok on audio rollouts: (scalar loss, detached (B, T) per-token D for metrics)."""
    cfg = ctx.config
    ids, mask = rollouts.completion_ids, rollouts.completion_mask
    tau = cfg.cord_kl_temperature
    if cfg.use_fused_linear:  # D comes with the loss: the logits are never projected
        hs = ctx.adapter.completion_hidden(x_a, ids, mask)
        ht = ctx.teacher.completion_hidden(x_t, ids, mask)
        return fused_linear_cord_token_loss(
            hs.hidden, ht.hidden, hs.weight, mask, bias=hs.bias, top_k=top_k, alpha=alpha,
            beta=position_beta, temperature=tau, return_per_token=True, **_teacher_head(ctx, ht))
    s = ctx.adapter.completion_logits(x_a, ids, mask)
    u = ctx.teacher.completion_logits(x_t, ids, mask)
    return cord_kernels.cord_token_loss(s, u, mask, top_k=top_k, alpha=alpha,
                                        beta=position_beta, temperature=tau,
                                        reduction="batchmean", return_per_token=True)


def _teacher_head(ctx: StepContext, ht: CompletionHidden) -> dict[str, Any]:
    """The frozen (base/EMA) teacher has its own LM head; the live one shares the student's."""
    if ctx.teacher.kind == "live":
        return {}
    return {"teacher_weight": ht.weight, "teacher_bias": ht.bias}


def judge_rewards(
    ctx: StepContext, questions: list[str], candidates: list[str], references: list[str]
) -> torch.Tensor:
    """Judge verdicts as float rewards, NaN where the judge could not decide (-1); see
    :func:`loss_rewards` for what the loss makes of those."""
    if ctx.judge is None:
        raise ValueError(f"objective {ctx.config.objective!r} needs a judge (config 'judge')")
    judge = getattr(ctx.judge, "judge", ctx.judge)  # a Judge is a callable
    verdicts = list(judge(questions, candidates, references))
    if len(verdicts) != len(candidates):
        raise ValueError(f"the judge returned {len(verdicts)} verdicts for "
                         f"{len(candidates)} candidates")
    bad = [v for v in verdicts if v not in (-1, 0, 1)]
    if bad:
        raise ValueError(f"judge verdicts must be 1, 0 or -1, got {bad[:3]}")
    return torch.tensor([math.nan if v == -1 else float(v) for v in verdicts],
                        device=ctx.device)


def loss_rewards(rewards: torch.Tensor, unjudged: str) -> torch.Tensor:
    """The rewards GRPO sees: an unjudged (NaN) rollout gets 0 for ``unjudged="zero"`` (binary
    rewards, as in the paper: a garbled answer is penalised) and stays NaN for ``"skip"``
    (advantage 0 and left out of its group's mean)."""
    return torch.nan_to_num(rewards, nan=0.0) if unjudged == "zero" else rewards


def sequence_loss(
    ctx: StepContext, batch: PairedBatch, x_a: PromptBatch, references: list[str]
) -> tuple[torch.Tensor, dict[str, float], int, torch.Tensor]:
    """L_seq: GRPO over N audio rollouts per prompt, judged against the text references.
    Returns the loss, its metrics, the generated tokens and the raw verdicts (NaN unjudged)."""
    cfg = ctx.config
    n = cfg.num_generations
    group = sample(ctx.adapter, x_a, num_generations=n, temperature=cfg.grpo_temperature,
                   max_new_tokens=cfg.max_completion_length, device=ctx.device)
    verdicts = judge_rewards(ctx, [q for q in batch.texts for _ in range(n)], group.texts,
                             [r for r in references for _ in range(n)])
    lp = token_logprobs_of(ctx, group.prompts, group.completion_ids, group.completion_mask)
    loss = cord_kernels.grpo_loss(lp, group.completion_mask,
                                  loss_rewards(verdicts, cfg.unjudged_reward), group_size=n)
    stats = reward_stats(verdicts, unjudged=cfg.unjudged_reward)
    stats["group_completion_length"] = float(group.lengths.float().mean())
    return loss, stats, group.num_tokens, verdicts


def teacher_rollouts(ctx: StepContext, x_t: PromptBatch) -> Rollouts:
    """y_hat ~ p_teacher(.|x^t): the targets of the SFT / FKL baselines."""
    cfg = ctx.config
    return sample(ctx.teacher.adapter, x_t, temperature=cfg.temperature,
                  max_new_tokens=cfg.max_completion_length, device=ctx.device)


def _tok_metrics(kl: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    out = kl_stats(kl, mask)
    out["completion_length"] = float(mask.sum(-1).float().mean())
    return out


# -- the objectives ----------------------------------------------------------------------------


def cord_objective(ctx: StepContext, batch: PairedBatch, *, uniform: bool = False,
                   with_tok: bool = True, with_seq: bool = True) -> LossOutput:
    """L_tok (+ w * L_seq): ``uniform`` weights every token 1 (OPD), ``with_tok=False`` is plain
    GRPO. The judge's references are the TEACHER's answers to the text prompts."""
    cfg = ctx.config
    x_a, x_t = _prompts(ctx, batch)
    metrics: dict[str, float] = {}
    loss = torch.zeros((), device=ctx.device)
    tokens = 0
    references = None
    if with_seq or (with_tok and ctx.judge is not None):
        refs = text_references(
            ctx.teacher.adapter, batch.texts, temperature=cfg.reference_temperature,
            max_new_tokens=cfg.max_completion_length, instruction=cfg.instruction or None,
            device=ctx.device)
        references = refs.texts
        tokens += refs.num_tokens
        metrics["reference_length"] = float(refs.lengths.float().mean())
    if with_tok:
        ro = sample(ctx.adapter, x_a, temperature=cfg.temperature,
                    max_new_tokens=cfg.max_completion_length, device=ctx.device)
        top_k, alpha, position_beta = ((1, 1.0, 1.0) if uniform else
                                       (cfg.cord_top_k, cfg.cord_alpha, cfg.cord_position_beta))
        l_tok, kl = token_kl_loss(ctx, x_a, x_t, ro, top_k=top_k, alpha=alpha,
                                  position_beta=position_beta)
        loss = loss + l_tok
        tokens += ro.num_tokens
        metrics["l_tok"] = float(l_tok.detach())
        metrics.update(_tok_metrics(kl, ro.completion_mask))
        if references is not None and ctx.judge is not None:
            metrics.update(agreement_stats(judge_rewards(ctx, batch.texts, ro.texts,
                                                           references)))
    if with_seq:
        l_seq, stats, n_tok, verdicts = sequence_loss(ctx, batch, x_a, references)
        weight = cfg.cord_seq_weight if with_tok else 1.0
        loss = loss + weight * l_seq
        tokens += n_tok
        metrics["l_seq"] = float(l_seq.detach())
        metrics.update(stats)
        if not with_tok:
            metrics.update(agreement_stats(verdicts))
    return LossOutput(loss, metrics, tokens)


def sft_objective(ctx: StepContext, batch: PairedBatch) -> LossOutput:
    """-sum_t log p(y_hat_t | ., x^a) / B on teacher rollouts y_hat ~ p(.|x^t)."""
    x_a, x_t = _prompts(ctx, batch)
    ro = teacher_rollouts(ctx, x_t)
    return _sft_on(ctx, x_a, ro.completion_ids, ro.completion_mask)


def _sft_on(ctx: StepContext, x_a: PromptBatch, ids, mask) -> LossOutput:
    lp = token_logprobs_of(ctx, x_a, ids, mask)
    loss = -torch.where(mask, lp, 0.0).sum() / max(len(ids), 1)
    metrics = {"l_sft": float(loss.detach()), "completion_length": float(mask.sum(-1).float()
                                                                         .mean())}
    return LossOutput(loss, metrics, int(mask.sum()))


def gold_sft_objective(ctx: StepContext, batch: PairedBatch) -> LossOutput:
    """-sum_t log p(y_t | ., x^a) / B on the dataset's reference answers y (its ``answer``
    column, ended with EOS): imitation of gold answers instead of the teacher's samples. A
    diagnostic beside ``sft``: the gap between the two is what imitating a wrong teacher costs."""
    missing = [i for i, a in zip(batch.ids, batch.answers) if not a]
    if missing:
        raise ValueError(f"objective 'sft_gold' trains on the dataset's 'answer' column, but "
                         f"records {missing[:5]} have none")
    x_a, _ = _prompts(ctx, batch)
    tok = ctx.adapter.tokenizer
    rows = [tok(a, add_special_tokens=False)["input_ids"] + [ctx.adapter.eos_token_ids[0]]
            for a in batch.answers]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), ctx.adapter.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return _sft_on(ctx, x_a, ids.to(ctx.device), mask.to(ctx.device))


def fkl_objective(ctx: StepContext, batch: PairedBatch) -> LossOutput:
    """sum_t KL(q_t || p_t) / B on teacher rollouts (the paper's forward-KL baseline)."""
    cfg = ctx.config
    x_a, x_t = _prompts(ctx, batch)
    ro = teacher_rollouts(ctx, x_t)
    ids, mask = ro.completion_ids, ro.completion_mask
    tau = cfg.cord_kl_temperature
    if cfg.use_fused_linear:  # hidden states in; the per-token KL comes with the loss
        hs = ctx.adapter.completion_hidden(x_a, ids, mask)
        ht = ctx.teacher.completion_hidden(x_t, ids, mask)
        loss, fkl = fused_linear_distill_loss(
            hs.hidden, ht.hidden, hs.weight, mask, divergence="forward_kl", bias=hs.bias,
            temperature=tau, return_per_token=True, **_teacher_head(ctx, ht))
    else:
        s = ctx.adapter.completion_logits(x_a, ids, mask)
        u = ctx.teacher.completion_logits(x_t, ids, mask)
        per_token = torch.where(mask, cord_kernels.forward_kl(s, u, temperature=tau), 0.0)
        loss = per_token.sum() / max(len(ids), 1)
        fkl = per_token.detach()
    stats = kl_stats(fkl, mask)  # KL(q || p) per token, the loss's own divergence
    metrics = {"l_fkl": float(loss.detach()), "fkl_mean": stats["kl_mean"],
               "fkl_p80": stats["kl_p80"],
               "completion_length": float(mask.sum(-1).float().mean())}
    return LossOutput(loss, metrics, ro.num_tokens)


def alarm_objective(ctx: StepContext, batch: PairedBatch) -> LossOutput:
    """ALARM self-rephrasing: R0 ~ p(.|x^t), R = the model's rephrasing of R0 that does not
    mention reading text, then SFT of R from the audio prompt."""
    cfg = ctx.config
    x_a, x_t = _prompts(ctx, batch)
    first = teacher_rollouts(ctx, x_t)
    asks = [cfg.alarm_rephrase_prompt.format(answer=r or "(no answer)") for r in first.texts]
    x_r = ctx.teacher.adapter.text_prompts(asks).to(ctx.device)
    rephrased = teacher_rollouts(ctx, x_r)
    out = _sft_on(ctx, x_a, rephrased.completion_ids, rephrased.completion_mask)
    out.num_generated_tokens += first.num_tokens
    out.metrics["first_answer_length"] = float(first.lengths.float().mean())
    return out


@dataclass(frozen=True)
class Objective:
    """One training objective: its loss on a micro-batch and what it needs for a config.

    ``needs_judge(config)``: the loss itself needs judge verdicts (a judge may still be used for
    the agreement metric when it is not needed); ``needs_groups(config)``: the loss compares a
    group of ``num_generations`` rollouts per prompt (GRPO), so ``num_generations >= 2``;
    ``trainable``: the parameter group trained when the config's ``trainable`` is None."""

    name: str
    loss: Callable[[StepContext, PairedBatch], LossOutput]
    needs_judge: Callable[[CordConfig], bool]
    needs_groups: Callable[[CordConfig], bool]
    trainable: str = "all"

    @classmethod
    def of(cls, name: str, loss: Callable[[StepContext, PairedBatch], LossOutput]) -> Objective:
        """The objective ``name`` with its needs from :data:`cord.config.NEEDS`."""
        needs = NEEDS[name]
        return cls(name, loss, needs.needs_judge, needs.needs_groups, needs.trainable)


def _cord(ctx: StepContext, batch: PairedBatch) -> LossOutput:
    return cord_objective(ctx, batch, with_seq=cord_has_seq(ctx.config))


def _opd(ctx: StepContext, batch: PairedBatch) -> LossOutput:
    return cord_objective(ctx, batch, uniform=True, with_seq=False)


def _grpo(ctx: StepContext, batch: PairedBatch) -> LossOutput:
    return cord_objective(ctx, batch, with_tok=False)


def _grpo_opd(ctx: StepContext, batch: PairedBatch) -> LossOutput:
    return cord_objective(ctx, batch, uniform=True)


#: The objective registry: each name of :data:`cord.config.NEEDS` (what config validation reads)
#: with its loss; the trainer and :func:`compute_loss` consult it.
OBJECTIVES: dict[str, Objective] = {name: Objective.of(name, loss) for name, loss in (
    ("grpo", _grpo), ("grpo_opd", _grpo_opd), ("cord", _cord), ("opd", _opd),
    ("sft", sft_objective), ("fkl", fkl_objective), ("sft_gold", gold_sft_objective),
    ("alarm", alarm_objective),
)}


def trainable_group(config: CordConfig) -> str:
    """The parameter group a run trains: ``config.trainable``, or the objective's default."""
    return config.trainable or OBJECTIVES[config.objective].trainable


def compute_loss(ctx: StepContext, batch: PairedBatch) -> LossOutput:
    """Runs ``ctx.config.objective`` on one micro-batch (a :class:`PairedBatch`, as
    :func:`cord.data.paired.collate_paired` makes it)."""
    if not isinstance(batch, PairedBatch):
        raise TypeError(f"batch must be a cord.data.paired.PairedBatch (collate_paired), got "
                        f"{type(batch).__name__}")
    objective = OBJECTIVES[ctx.config.objective]  # the config validated the name
    if ctx.judge is None and objective.needs_judge(ctx.config):
        raise ValueError(f"objective {objective.name!r} needs a judge (config 'judge')")
    return objective.loss(ctx, batch)
