"""The demo's pre-trained base: batches of one (split, modality, target), the pre-training
loss, and the base itself (shipped with the package, cached, or pre-trained now by its task)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

from cord.demo.speech import SAMPLING_RATE, default_cache_dir
from cord.demo.task import Task
from cord.models.adapter import PromptBatch, Qwen2AudioAdapter
from cord_kernels import token_logprobs

TRANSCRIBE_INSTRUCTION = "repeat"
"""The instruction of an audio prompt whose target is its transcript (both tasks teach the
audio side to hear with it)."""


class Batcher:
    """Prompt and completion tensors of one (split, modality, target) built once, sliced per
    batch (the processor runs once per item, not once per step)."""

    def __init__(self, adapter, records, modality: str, target: str, *,
                 instruction: str | None = None):
        self.n = len(records)
        if modality == "audio":
            if target == "transcript":
                instruction = TRANSCRIBE_INSTRUCTION
            self.prompts = adapter.audio_prompts(
                [r["audio"]["array"] for r in records], sampling_rate=SAMPLING_RATE,
                instruction=instruction)
        else:
            self.prompts = adapter.text_prompts([r["text"] for r in records])
        tok = adapter.tokenizer
        ids = [tok(r[target], add_special_tokens=False)["input_ids"] + [adapter.eos_token_ids[0]]
               for r in records]
        width = max(map(len, ids))
        self.completion = torch.full((self.n, width), adapter.pad_token_id, dtype=torch.long)
        self.mask = torch.zeros((self.n, width), dtype=torch.bool)
        for i, row in enumerate(ids):
            self.completion[i, : len(row)] = torch.tensor(row)
            self.mask[i, : len(row)] = True

    def batch(self, idx):
        p = self.prompts
        am = p.attention_mask[idx]
        first = int((am.sum(0) > 0).nonzero()[0])  # drop columns that are padding in all rows
        prompts = PromptBatch(p.input_ids[idx, first:], am[:, first:],
                              {k: v[idx] for k, v in p.model_kwargs.items()})
        cols = int(self.mask[idx].sum(-1).max())
        return prompts, self.completion[idx, :cols], self.mask[idx, :cols]


def nll(adapter, prompts, completion, mask):
    """Mean over sequences of the summed negative log-likelihood of the completion tokens."""
    logits = adapter.completion_logits(prompts, completion, mask)
    lp = token_logprobs(logits, completion)
    return -(lp * mask).sum(-1).mean()


def pretrain_schedule(model, config, desc: str, progress: bool):
    """Either task's pre-training optimizer, one-cycle schedule and progress bar over
    ``config.pretrain_steps``."""
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.learning_rate, total_steps=config.pretrain_steps, pct_start=0.1)
    bar = tqdm(range(config.pretrain_steps), desc=desc, unit="step", disable=not progress)
    return opt, sched, bar


def pretrain_step(model, opt, sched, losses: dict[str, torch.Tensor], bar, step: int, *,
                  digits: int) -> dict[str, float]:
    """One pre-training step of either task on the sum of its losses (gradients clipped at
    1); returns the losses as floats, shown on the progress bar every 10 steps."""
    loss = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    record = {k: float(v.detach()) for k, v in losses.items()}
    if step % 10 == 0:
        bar.set_postfix({k: f"{v:.{digits}f}" for k, v in record.items()})
    return record


def load_base(path: str | Path) -> Qwen2AudioAdapter:
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path, local_files_only=True)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model.eval()
    return Qwen2AudioAdapter(model, processor)


SHIPPED_BASES = Path(__file__).with_name("bases")
"""Pre-trained bases committed with the package, one folder per configuration key: the same
weights on every machine, so the default demo needs no pre-training (``--refresh`` redoes it)."""


def pretrained_base(task: Task, splits, *, cache_dir: str | Path | None = None,
                    progress: bool = True, refresh: bool = False):
    """``(adapter, path, source)``: the pre-trained base of ``task``.

    Looked up first among the :data:`SHIPPED_BASES`, then in ``cache_dir``, by the key of the
    task's configuration; otherwise (or with ``refresh``) pre-trained now
    (``task.build_model()`` then ``task.pretrain(adapter, splits)``) and saved to
    ``cache_dir``. Either way the model returned is the one READ BACK from disk, so a cold run
    and a warm run start from bit-identical weights and give the same tables. ``source`` says
    which: "shipped", "cached" or "pre-trained".
    """
    config = task.config
    name = f"base-{config.key()}"
    if not refresh:
        for source, root in (("shipped", SHIPPED_BASES),
                             ("cached", Path(cache_dir or default_cache_dir()))):
            if (root / name / "pretrained.json").is_file():
                return load_base(root / name), root / name, source
    path = Path(cache_dir or default_cache_dir()) / name
    adapter = task.build_model()
    history = task.pretrain(adapter, splits, progress=progress)
    path.mkdir(parents=True, exist_ok=True)
    adapter.model.save_pretrained(path)
    adapter.processor.save_pretrained(path)
    # written last: a folder without it (an interrupted save) is never used
    (path / "pretrained.json").write_text(json.dumps(
        {"key": config.key(), "config": asdict(config), "final_losses": history[-1]}, indent=1))
    return load_base(path), path, "pre-trained"
