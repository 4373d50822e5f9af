"""A TRL ``DistillationTrainer`` step with TRL's own loss and with ``cord_kernels`` (the
``cord_kernels.integrations.trl.enable()`` switch), side by side in one process.

    python -m bench.trl_step                        # V=151,936, H=896, 8 x 128 completion tokens
    python -m bench.trl_step --vocab 4096 --completion 64   # a quick look

The models: tiny Qwen2 backbones (one decoder layer) with a Qwen2-0.5B-sized head (V=151,936,
H=896, tied embeddings as in Qwen2-0.5B), built offline from a config; a word-level tokenizer
with V entries, so every sampled id decodes. Completions are forced to the full length
(``min_new_tokens``), so each step has batch x completion valid tokens. 8 x 128 rather than
2 x 512: the same 1024 tokens in the loss, a quarter of the sequential generation steps. The
optimizer is SGD (no Adam state: the peak memory is the step's, not the optimizer's). beta = 1
(reverse KL), ``DistillationConfig``'s default: TRL's function then runs 6 GEMMs (8 for a
JSD).

Per backend (interleaved: TRL, ours, TRL, ours ... each for ``--steps`` trainer steps, the
first one a warm-up that is not reported):

- step: the wall time of the trainer step (TRL's own ``step_time`` metric: generation,
  both forwards, the loss, backward, the optimizer);
- loss fwd / loss bwd: the loss function's call, and its backward (from the gradient reaching
  the loss to the gradient reaching the student's hidden states, timed by tensor hooks);
- peak RSS: the process's peak resident set over the last step (``bench.measure.CpuPeakRss``:
  the kernel's high-water mark reset just before), absolute and above the RSS before it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch

from bench.config import QWEN2_0_5B_HIDDEN, QWEN2_VOCAB
from bench.measure import CpuPeakRss

BACKENDS = ("trl", "cord_kernels")
LABELS = {"trl": "TRL `_chunked_divergence_loss`",
          "cord_kernels": "`cord_kernels.integrations.trl.enable()`"}


@dataclass
class StepRun:
    backend: str
    step_s: list[float] = field(default_factory=list)
    loss_fwd_s: list[float] = field(default_factory=list)
    loss_bwd_s: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    delta_bytes: int | None = None

    def median(self, name: str) -> float:
        values = getattr(self, name)[1:] or getattr(self, name)  # the first step warms up
        return statistics.median(values)


def _tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # One word per id ("w3" ... "w{V-1}"), so every id the model samples decodes.
    names = ["<pad>", "<eos>", "<unk>", *(f"w{i}" for i in range(3, vocab))]
    tok = Tokenizer(models.WordLevel(dict(zip(names, range(vocab))), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = {"pad_token": "<pad>", "eos_token": "<eos>", "unk_token": "<unk>"}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def _model(vocab: int, hidden: int, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    heads = max(1, hidden // 64)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=1, num_attention_heads=heads,
                      num_key_value_heads=1 if heads % 2 else 2, max_position_embeddings=4096,
                      tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg)


def build_trainer(output_dir: str, *, vocab: int, hidden: int, completion: int, batch: int,
                  steps: int, beta: float = 1.0):
    """TRL's DistillationTrainer at the bench shape (see the module docstring)."""
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    tok = _tokenizer(vocab)
    rows = [{"prompt": " ".join(f"w{3 + (7 * i + j) % (vocab - 3)}" for j in range(8))}
            for i in range(batch * steps)]
    args = DistillationConfig(
        output_dir=output_dir, beta=beta, max_steps=steps, per_device_train_batch_size=batch,
        learning_rate=1e-4, optim="sgd", report_to=[], logging_steps=1, save_strategy="no",
        use_cpu=True, max_completion_length=completion, seed=0,
        generation_kwargs={"min_new_tokens": completion})
    return DistillationTrainer(
        model=_model(vocab, hidden, seed=0), teacher_model=_model(vocab, hidden, seed=1),
        args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)


def _timed(fn, run: StepRun):
    """``fn`` (a loss with TRL's signature) timing its call and its backward into ``run``."""

    def loss(student_hidden_states, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(student_hidden_states, *args, **kwargs)
        run.loss_fwd_s.append(time.perf_counter() - t0)
        if out[0].requires_grad and student_hidden_states.requires_grad:
            mark = {}
            out[0].register_hook(lambda g: mark.__setitem__("t", time.perf_counter()))
            student_hidden_states.register_hook(
                lambda g: run.loss_bwd_s.append(time.perf_counter() - mark["t"]))
        return out

    return loss


def _peak_callback(run: StepRun, last_step: int):
    from transformers import TrainerCallback

    class PeakRss(TrainerCallback):
        rss = CpuPeakRss()

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == last_step - 1:
                self.rss.start()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == last_step:
                mem = self.rss.stop()
                run.peak_bytes, run.delta_bytes = mem.get("peak_bytes"), mem.get("delta_bytes")

    return PeakRss()


def measure(*, vocab: int = QWEN2_VOCAB, hidden: int = QWEN2_0_5B_HIDDEN, completion: int = 128,
            batch: int = 8, steps: int = 2, repeats: int = 1, beta: float = 1.0
            ) -> dict[str, StepRun]:
    """Runs ``steps`` trainer steps per backend, ``repeats`` times interleaved."""
    from trl.trainer import distillation_trainer as trl_dt

    from cord_kernels.integrations import trl as cord_trl

    trl_loss = trl_dt._chunked_divergence_loss
    runs = {b: StepRun(b) for b in BACKENDS}
    for _ in range(repeats):
        for backend in BACKENDS:
            run = runs[backend]
            with tempfile.TemporaryDirectory() as tmp:
                trainer = build_trainer(tmp, vocab=vocab, hidden=hidden, completion=completion,
                                        batch=batch, steps=steps, beta=beta)
                trainer.add_callback(_peak_callback(run, steps))
                base = trl_loss if backend == "trl" else cord_trl.chunked_divergence_loss
                with cord_trl.patched(_timed(base, run), trainers=["distillation"]):
                    trainer.train()
                logs = [h for h in trainer.state.log_history if "step_time" in h]
                run.step_s += [h["step_time"] for h in logs]
                run.losses += [h["loss"] for h in logs]
                del trainer
    return runs


def markdown(runs: dict[str, StepRun], *, vocab: int, hidden: int, completion: int,
             batch: int, beta: float = 1.0) -> str:
    trl, ours = runs["trl"], runs["cord_kernels"]
    lines = [
        f"TRL DistillationTrainer step, V={vocab:,}, H={hidden}, {batch} x {completion} = "
        f"{batch * completion} completion tokens, beta={beta:g}"
        f"{' (reverse KL, TRL' + chr(39) + 's default)' if beta == 1.0 else ''}, "
        f"fp32, CPU, {torch.get_num_threads()} threads; median over the steps after the first",
        "",
        "| loss backend | step (s) | loss fwd (s) | loss bwd (s) | loss fwd+bwd (s) | "
        "peak RSS over the step | above the RSS before it |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in (trl, ours):
        loss_t = run.median("loss_fwd_s") + run.median("loss_bwd_s")
        peak = "-" if run.peak_bytes is None else f"{run.peak_bytes / 2**30:.2f} GiB"
        delta = "-" if run.delta_bytes is None else f"{run.delta_bytes / 2**30:.2f} GiB"
        lines.append(f"| {LABELS[run.backend]} | {run.median('step_s'):.2f} | "
                     f"{run.median('loss_fwd_s'):.2f} | {run.median('loss_bwd_s'):.2f} | "
                     f"{loss_t:.2f} | {peak} | {delta} |")
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    loss_ours = ours.median("loss_fwd_s") + ours.median("loss_bwd_s")
    loss_trl = trl.median("loss_fwd_s") + trl.median("loss_bwd_s")
    lines += ["", f"ours / TRL: step x{ratio(ours.median('step_s'), trl.median('step_s')):.2f}, "
              f"loss x{ratio(loss_ours, loss_trl):.2f}"
              + (f", peak RSS x{ratio(ours.peak_bytes, trl.peak_bytes):.2f}"
                 if ours.peak_bytes and trl.peak_bytes else "")
              + "; logged losses "
              + ", ".join(f"{a:.6g} / {b:.6g}" for a, b in zip(trl.losses, ours.losses))]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=QWEN2_VOCAB)
    ap.add_argument("--hidden", type=int, default=QWEN2_0_5B_HIDDEN)
    ap.add_argument("--completion", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--json", help="also write the runs here")
    a = ap.parse_args(argv)
    shape = dict(vocab=a.vocab, hidden=a.hidden, completion=a.completion, batch=a.batch)
    runs = measure(**shape, steps=a.steps, beta=a.beta)
    print(markdown(runs, **shape, beta=a.beta))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"shape": shape, "runs": {k: asdict(v) for k, v in runs.items()}}, f,
                      indent=1)


if __name__ == "__main__":
    main()
