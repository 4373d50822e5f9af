"""Recipe: TRL's DistillationTrainer on cord_kernels' loss, with and without CORD's weights.

One line switches TRL's ``DistillationTrainer`` to this project's fused-linear loss (the same
values, 4 GEMMs instead of TRL's 6); a second form puts the CORD token weights into it:

    from cord_kernels.integrations import trl as cord_trl
    cord_trl.enable()                                          # TRL's loss, computed here
    cord_trl.enable(cord_trl.cord_loss(top_k=20, alpha=2.0, position_beta=2.0))   # + CORD

    python examples/trl_distillation_cord.py         # 3 steps each way, tiny random models, CPU

The CORD weights (arXiv 2601.16547, eqs. 4-6: alpha on each sequence's top-K positions of
largest divergence, times a linear decay from position_beta to 1) are computed from the
divergence of the same pass over the vocabulary, and TRL's reduction is kept (sum /
num_items_in_batch, else / valid tokens). What this is NOT, compared with ``cord train``:

- no cross-modal self-teacher: TRL's teacher is a separate model on the same text prompt,
  not the same model conditioned on the text form of an audio prompt (``cord train``'s
  text-conditioned teacher, audio-conditioned student);
- no sequence-level GRPO term (L_seq, the judge's rewards over a group of rollouts);
- TRL's divergence (its beta; beta = 1 is the paper's reverse KL) and TRL's rollouts
  (its sampling settings), not the paper's group of 4 rollouts at temperature 1.5.

So it is CORD's token-level weighting inside TRL's on-policy distillation, not the paper's method.
"""

from __future__ import annotations

import tempfile

from datasets import Dataset
from trl import DistillationConfig, DistillationTrainer
from trl_gkd_jsd import quiet_upstream_deprecations, tiny_causal_lm, tiny_tokenizer

from cord_kernels.integrations import trl as cord_trl


def build_distillation_trainer(output_dir: str, *, beta: float = 0.5, steps: int = 3,
                               completion_length: int = 8) -> DistillationTrainer:
    """A DistillationTrainer on two tiny random-init Qwen2 models built offline: the teacher is
    wider (48) than the student (32) and has its own head."""
    tokenizer = tiny_tokenizer("what is two plus three five four one the answer".split())
    rows = [{"prompt": "what is two plus three"}, {"prompt": "what is one plus three"}] * 4
    with quiet_upstream_deprecations():
        args = DistillationConfig(output_dir=output_dir, beta=beta, max_steps=steps,
                                  per_device_train_batch_size=2, learning_rate=1e-2,
                                  report_to=[], logging_steps=1, save_strategy="no",
                                  use_cpu=True, max_completion_length=completion_length, seed=0)
    vocab = len(tokenizer)
    return DistillationTrainer(
        model=tiny_causal_lm(vocab, 32, seed=0), teacher_model=tiny_causal_lm(vocab, 48, seed=1),
        args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def logged_losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for name, loss in (("TRL's own loss", False), ("cord_kernels", None),
                           ("cord_kernels + CORD weights", cord_trl.cord_loss())):
            trainer = build_distillation_trainer(tmp, beta=1.0)
            with quiet_upstream_deprecations():
                if loss is False:
                    trainer.train()
                else:
                    with cord_trl.patched(loss):
                        trainer.train()
            runs[name] = logged_losses(trainer)
        for name, losses in runs.items():
            print(f"{name:30s}", " ".join(f"{x:.6f}" for x in losses))
