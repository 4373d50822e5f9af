"""Recipe: distil from a teacher server's top-k log-probs with fused_linear_sparse_teacher_loss.

TRL's server and async distillation trainers ask a vLLM teacher for its top-k log-probs on each
completion token and get back, per batch,

    {"topk_logprobs": (B, T, k) float, -inf at unused slots,
     "topk_token_ids": (B, T, k) long}

aligned with the completion tokens. This step feeds that batch, unchanged, to
``fused_linear_sparse_teacher_loss`` with the student's final hidden states and LM head: the
student's (B, T, V) logits are never materialised, and the defaults (forward KL on the top-k
plus a tail bucket) are TRL's ``loss_add_tail=True`` server loss. TRL's masked "batchmean"
divides by the number of valid tokens: that is our ``reduction="mean"`` (or pass
``num_items_in_batch`` under gradient accumulation).

Here the "server" is a local teacher model whose top-k comes from ``teacher_topk``; in a real
run it is the HTTP response of ``trl vllm-serve``.

    python examples/trl_server_sparse_distill.py      # three steps between two tiny models
"""

from __future__ import annotations

import torch
from opd_fused_distill import tiny_lm  # the same two tiny models as that recipe

from cord_kernels import fused_linear_sparse_teacher_loss, teacher_topk


@torch.no_grad()
def fake_server_batch(teacher, input_ids, prompt_len: int, k: int, *, unused_from: int = 0):
    """What a teacher server returns for the completion tokens input_ids[:, prompt_len:]: the
    top-k log-probs of the positions that predict them, (B, T, k) each. ``unused_from`` > 0
    marks slots from that index on as unused (-inf), as a server with a smaller top-k does."""
    hidden = teacher.model(input_ids=input_ids).last_hidden_state[:, prompt_len - 1:-1]
    lp, ids = teacher_topk((hidden, teacher.lm_head.weight), k)
    if unused_from:
        lp[..., unused_from:] = float("-inf")
    return {"topk_logprobs": lp, "topk_token_ids": ids}


def distill_step(student, optimizer, input_ids, completion_mask, batch, prompt_len: int):
    """One optimizer step on the sparse-teacher loss; returns the detached loss and per-token
    forward KL (B, T)."""
    student.train()
    hidden = student.model(input_ids=input_ids).last_hidden_state[:, prompt_len - 1:-1]
    loss, per_token = fused_linear_sparse_teacher_loss(
        hidden, student.lm_head.weight, batch["topk_logprobs"], batch["topk_token_ids"],
        completion_mask, reduction="mean", return_per_token=True)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach(), per_token


def main() -> None:
    student, teacher = tiny_lm(32, seed=0), tiny_lm(48, seed=1)
    teacher.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, 97, (4, 12), generator=g)
    prompt_len = 5
    completion_mask = torch.ones(4, 12 - prompt_len, dtype=torch.bool)
    completion_mask[1, 4:] = False  # a shorter completion (right padding)
    batch = fake_server_batch(teacher, input_ids, prompt_len, k=8, unused_from=6)
    for step in range(3):
        loss, _ = distill_step(student, opt, input_ids, completion_mask, batch, prompt_len)
        print(f"step {step}: sparse forward KL {loss.item():.4f}")


if __name__ == "__main__":
    main()
