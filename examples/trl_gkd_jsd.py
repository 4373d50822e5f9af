"""Recipe: TRL's GKDTrainer with cord_kernels.jsd as its loss.

TRL's ``GKDTrainer.compute_loss`` materialises log-softmax of both models' logits and the
mixture (several (B, T, V) fp32 tensors). Subclassing it and calling ``cord_kernels.jsd``
instead gives the same loss (TRL's ``generalized_jsd_loss``: the same beta, beta = 0 forward
KL, beta = 1 reverse KL, normalised by ``num_items_in_batch`` or the number of completion
tokens) from one streaming Triton kernel per direction on a GPU.

    python examples/trl_gkd_jsd.py                # two steps on a tiny random-init model (CPU)
    python examples/trl_gkd_jsd.py --device cuda  # the same through the compiled kernel

Everything else of GKD (on-policy generation with probability ``lmbda``, ``seq_kd``, the
teacher's eval mode) is TRL's own. Like TRL's compute_loss, the divergence is taken at
temperature 1 (``GKDConfig.temperature`` is the sampling temperature).
"""

from __future__ import annotations

import tempfile
import warnings
from contextlib import contextmanager

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

import cord_kernels

#: What TRL 1.16 makes transformers 5 say on every config and every train(): TRL's configs and
#: trainers still use the gradient-checkpointing names transformers renamed to
#: activation_checkpointing. Nothing here calls them; filtered only around the TRL calls below.
UPSTREAM_DEPRECATIONS = r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated"


@contextmanager
def quiet_upstream_deprecations():
    """Hides :data:`UPSTREAM_DEPRECATIONS` (and no other warning) inside the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", UPSTREAM_DEPRECATIONS, FutureWarning)
        yield


with warnings.catch_warnings():  # GKD lives in trl.experimental in TRL 1.16; we know
    warnings.filterwarnings("ignore", "You are importing from 'trl.experimental'")
    from trl.experimental.gkd import GKDConfig, GKDTrainer


class CordJSDGKDTrainer(GKDTrainer):
    """GKDTrainer whose loss is ``cord_kernels.jsd`` (same value as TRL's)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        student = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        self.teacher_model.eval()
        with torch.no_grad():
            teacher = self.teacher_model(input_ids=inputs["input_ids"],
                                         attention_mask=inputs["attention_mask"])
        # Logits at position i predict token i + 1; labels are -100 off the completion.
        labels = inputs["labels"][:, 1:]
        mask = labels != -100
        per_token = cord_kernels.jsd(student.logits[:, :-1], teacher.logits[:, :-1],
                                     beta=self.beta)  # (B, T - 1) fp32
        total = torch.where(mask, per_token, 0.0).sum()
        if num_items_in_batch is not None:
            loss = total / torch.as_tensor(num_items_in_batch, device=total.device)
        else:
            loss = total / mask.sum().clamp_min(1)
        return (loss, student) if return_outputs else loss


# ------------------------------------------------------------- a tiny run, no downloads


def tiny_tokenizer(words: list[str]):
    """A word-level fast tokenizer with pad / eos tokens, built in memory."""
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")


def tiny_causal_lm(vocab_size: int, hidden_size: int, seed: int):
    """A random-init Qwen2 causal LM from a config (no weights downloaded)."""
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden_size,
                      intermediate_size=2 * hidden_size, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=64, tie_word_embeddings=False)
    return Qwen2ForCausalLM(cfg)


def collate(tokenizer, rows: list[dict]) -> dict:
    """Prompt + completion, labels -100 on the prompt and the padding."""
    ids, labels = [], []
    for r in rows:
        p = tokenizer(r["prompt"])["input_ids"]
        c = tokenizer(r["completion"])["input_ids"] + [tokenizer.eos_token_id]
        ids.append(p + c)
        labels.append([-100] * len(p) + c)
    n = max(map(len, ids))
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([x + [pad] * (n - len(x)) for x in ids]),
        "attention_mask": torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in ids]),
        "labels": torch.tensor([x + [-100] * (n - len(x)) for x in labels]),
    }


def build_trainer(output_dir: str, *, beta: float = 0.5, steps: int = 1,
                  device: str = "cpu", trainer_class=None) -> GKDTrainer:
    words = "what is two plus three five four one the answer".split()
    tokenizer = tiny_tokenizer(words)
    rows = [{"prompt": "what is two plus three", "completion": "the answer is five"},
            {"prompt": "what is one plus three", "completion": "four"}] * 2
    with quiet_upstream_deprecations():
        args = GKDConfig(output_dir=output_dir, beta=beta, lmbda=0.0, max_steps=steps,
                         per_device_train_batch_size=2, learning_rate=1e-3, report_to=[],
                         logging_steps=1, save_strategy="no", use_cpu=device == "cpu",
                         disable_dropout=True)
    vocab = len(tokenizer)
    return (trainer_class or CordJSDGKDTrainer)(
        model=tiny_causal_lm(vocab, 32, seed=0), teacher_model=tiny_causal_lm(vocab, 32, seed=1),
        args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        data_collator=lambda batch: collate(tokenizer, batch),
    )


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Two GKD steps with cord_kernels.jsd as the loss.")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(tmp, steps=2, device=ap.parse_args().device)
        with quiet_upstream_deprecations():
            trainer.train()
        print("final loss", trainer.state.log_history[-1].get("train_loss"))
