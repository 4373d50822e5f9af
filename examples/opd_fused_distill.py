"""Recipe: one on-policy distillation step in plain PyTorch with fused_linear_distill_loss.

The student samples completions, both models score them, and the loss is a weighted
per-token divergence computed from the final hidden states and each model's own LM head,
never materialising (B, T, V) logits. The teacher is a different model (another hidden size,
its own head); the per-token weights are the caller's (here: emphasise the tokens where the
teacher is confident, a common choice; any fixed (B, T) tensor >= 0 works).

    python examples/opd_fused_distill.py      # three steps between two tiny random models
"""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from cord_kernels import fused_linear_distill_loss


def tiny_lm(hidden_size: int, *, vocab_size: int = 97, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden_size,
                      intermediate_size=2 * hidden_size, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      tie_word_embeddings=False)
    return Qwen2ForCausalLM(cfg)


def final_hidden(model, ids, attention_mask):
    """(B, L, H) last hidden states (before the LM head)."""
    out = model.model(input_ids=ids, attention_mask=attention_mask)
    return out.last_hidden_state


def confidence_weights(teacher_hidden, teacher_head, mask):
    """w_t = 1 + max_v q_t(v): more weight where the teacher is sure (fixed: no gradient).
    Computed chunk-free here for clarity; at scale take it from the teacher's own forward."""
    with torch.no_grad():
        q_max = torch.softmax(teacher_hidden @ teacher_head.T, dim=-1).amax(-1)
    return torch.where(mask, 1.0 + q_max, 0.0)


def distill_step(student, teacher, optimizer, prompt_ids, *, max_new_tokens=8,
                 divergence="jsd", jsd_beta=0.5, temperature=1.0):
    """Samples from the student, then one optimizer step on the weighted divergence.

    Returns a dict: loss, the detached per-token divergence (B, T) and the completion mask."""
    student.eval()
    with torch.no_grad():
        seq = student.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                               do_sample=True, max_new_tokens=max_new_tokens, top_k=0,
                               temperature=temperature, pad_token_id=0)
    student.train()
    P = prompt_ids.shape[1]
    attn = torch.ones_like(seq)
    # Position P - 1 + t predicts completion token t: the rows the loss is about.
    mask = torch.ones(seq.shape[0], seq.shape[1] - P, dtype=torch.bool)
    h_s = final_hidden(student, seq, attn)[:, P - 1:-1]           # (B, T, H_s)
    with torch.no_grad():
        h_t = final_hidden(teacher, seq, attn)[:, P - 1:-1]       # (B, T, H_t)
    weights = confidence_weights(h_t, teacher.lm_head.weight, mask)
    loss, per_token = fused_linear_distill_loss(
        h_s, h_t, student.lm_head.weight, mask, divergence=divergence, jsd_beta=jsd_beta,
        token_weights=weights, teacher_weight=teacher.lm_head.weight,
        temperature=temperature, return_per_token=True)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return {"loss": loss.detach(), "per_token": per_token, "mask": mask, "sequences": seq,
            "weights": weights}


if __name__ == "__main__":
    student, teacher = tiny_lm(32, seed=0), tiny_lm(48, seed=1)
    teacher.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    prompts = torch.randint(1, 97, (4, 6), generator=torch.Generator().manual_seed(0))
    for step in range(3):
        out = distill_step(student, teacher, opt, prompts)
        print(f"step {step}: loss {out['loss']:.4f}, mean JSD per token "
              f"{out['per_token'][out['mask']].mean():.4f}")
