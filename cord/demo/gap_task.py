"""The demo's task: spoken and written arithmetic, and a tiny audio LM with a real modality gap.

Questions are small sums and differences in words ("what is seven plus two"), asked either as
text or as speech synthesised by eSpeak NG; the answer is written as ``"so the answer is 9"``.

The gap is made the way it arises in real audio LMs: the language model learns the task from
plenty of TEXT, while its audio path gets mostly transcription (it learns to hear the words)
and only a few spoken questions with answers. It then answers written questions well and
spoken ones much worse, although it can hear them: the same knowledge, reached worse from
audio. That is what CORD distils across (the text-conditioned model teaches the audio one).

Audio: each word is synthesised once, its silence trimmed, and placed in a fixed-length slot,
so an utterance is a sequence of word slots (a simplification that lets a 100k-parameter encoder
learn to hear in a couple of minutes on a CPU). Word clips are cached on disk.

Splits (no question is in two of them):

- ``train``: text QA and audio transcription on all of them in pre-training; audio QA only on
  the ``audio_qa`` part. The other part, ``distill``, is the pool of unlabelled audio/text
  pairs that CORD, SFT and forward KL post-train on: questions the model has heard (to
  transcribe) and read (with answers), but never had to answer from audio.
- ``eval``: held-out questions (phrasings never seen with those numbers), scored from audio and
  from text.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cord.data.paired import resample
from cord.data.tts import get_engine
from cord.models.adapter import PromptBatch, Qwen2AudioAdapter, build_adapter
from cord.models.tiny import build_tiny_qwen2_audio
from cord_kernels import token_logprobs

NUMBER_WORDS = "zero one two three four five six seven eight nine".split()
OPERATIONS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b}
TEMPLATES = ("{a} {op} {b}", "what is {a} {op} {b}", "compute {a} {op} {b}",
             "tell me {a} {op} {b}")
ANSWER_FORMAT = "so the answer is {answer}"
TRANSCRIBE_INSTRUCTION = "repeat"
SAMPLING_RATE = 16_000


@dataclass(frozen=True)
class GapTaskConfig:
    """Sizes of the task, the model and the pre-training that opens the gap.

    The defaults are the full demo; :data:`QUICK` is the CI size.
    """

    max_operand: int = 9
    eval_questions: int = 120
    audio_qa: int = 250
    """Spoken questions WITH answers in pre-training; the other training questions are heard
    only for transcription and form the unlabelled pool that post-training distils on."""
    seed: int = 0
    # model (cord.models.tiny.build_tiny_qwen2_audio)
    hidden_size: int = 64
    num_layers: int = 4
    audio_d_model: int = 64
    audio_layers: int = 2
    # audio
    slot_seconds: float = 0.45
    chunk_seconds: int = 3
    tts_rate: int = 175
    # pre-training
    pretrain_steps: int = 700
    batch_size: int = 32
    learning_rate: float = 3e-3
    audio_qa_every: int = 2
    """One audio-QA batch every this many steps (text QA and transcription every step)."""

    def key(self) -> str:
        """A short hash naming the cached pretrained model of this configuration."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


QUICK = GapTaskConfig(eval_questions=40, audio_qa=120, pretrain_steps=400, batch_size=16,
                      hidden_size=64, num_layers=2, audio_d_model=48, audio_layers=1)


# --------------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------------


def all_questions(config: GapTaskConfig) -> list[dict[str, Any]]:
    """Every (template, a, op, b) question with b ≤ a for minus (answers are never negative)."""
    out = []
    for a in range(config.max_operand + 1):
        for b in range(config.max_operand + 1):
            for op, fn in OPERATIONS.items():
                if op == "minus" and b > a:
                    continue
                for t, template in enumerate(TEMPLATES):
                    text = template.format(a=NUMBER_WORDS[a], op=op, b=NUMBER_WORDS[b])
                    out.append({
                        "id": f"t{t}-{a}{op}{b}",
                        "text": text,
                        "answer": str(fn(a, b)),
                        "kind": "math",
                        "transcript": text,
                    })  # fmt: skip
    return out


def make_splits(config: GapTaskConfig) -> dict[str, list[dict[str, Any]]]:
    """``{"train", "eval", "audio_qa", "distill"}``: ``train`` and ``eval`` are disjoint;
    ``audio_qa`` (spoken questions with answers in pre-training) and ``distill`` (the rest of
    ``train``: the unlabelled paired prompts of post-training) split ``train``."""
    questions = all_questions(config)
    if config.eval_questions >= len(questions) // 2:
        raise ValueError(f"eval_questions must be below half of the {len(questions)} questions, "
                         f"got {config.eval_questions}")
    rng = random.Random(config.seed)
    rng.shuffle(questions)
    held_out, train = questions[: config.eval_questions], questions[config.eval_questions :]
    if not 0 < config.audio_qa < len(train):
        raise ValueError(f"audio_qa must be in [1, {len(train) - 1}], got {config.audio_qa}")
    return {"train": train, "eval": held_out, "audio_qa": train[: config.audio_qa],
            "distill": train[config.audio_qa :]}


def completion_text(answer: str) -> str:
    return ANSWER_FORMAT.format(answer=answer)


# --------------------------------------------------------------------------------------------
# Speech
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    root = os.environ.get("CORD_CACHE", str(Path.home() / ".cache" / "cord"))
    return Path(root) / "demo"


class SlottedSpeech:
    """Utterances as fixed-length word slots of eSpeak NG speech at 16 kHz.

    Each distinct word is synthesised once (eSpeak is deterministic), silence-trimmed and
    zero-padded (or cut) to ``slot_seconds``; the clips are cached in ``cache_dir``.
    """

    def __init__(self, *, slot_seconds: float = 0.45, rate: int = 175,
                 cache_dir: str | Path | None = None):
        if slot_seconds <= 0:
            raise ValueError(f"slot_seconds must be > 0, got {slot_seconds}")
        self.slot = int(round(slot_seconds * SAMPLING_RATE))
        self.rate = rate
        self.cache_path = Path(cache_dir or default_cache_dir()) / (
            f"words-espeak-r{rate}-s{self.slot}.npz")
        self.clips: dict[str, np.ndarray] = {}
        if self.cache_path.is_file():
            with np.load(self.cache_path) as z:
                self.clips = {k: z[k] for k in z.files}
        self._engine = None

    def _synthesize(self, word: str) -> np.ndarray:
        if self._engine is None:
            self._engine = get_engine("espeak", rate=self.rate)
        wave = resample(self._engine.synthesize(word), self._engine.sample_rate, SAMPLING_RATE)
        loud = np.nonzero(np.abs(wave) > 1e-3)[0]
        if loud.size:
            wave = wave[loud[0] : loud[-1] + 1]
        wave = wave[: self.slot]
        return np.pad(wave, (0, self.slot - wave.size)).astype(np.float32)

    def prepare(self, words: Sequence[str]) -> None:
        """Synthesises the missing words and saves the cache."""
        missing = sorted({w for w in words if w not in self.clips})
        if not missing:
            return
        for w in missing:
            self.clips[w] = self._synthesize(w)
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(self.cache_path, **self.clips)

    def speak(self, text: str) -> np.ndarray:
        """(len(words) * slot,) float32 at 16 kHz."""
        words = text.split()
        self.prepare(words)
        return np.concatenate([self.clips[w] for w in words])


def attach_audio(records: Sequence[dict], speech: SlottedSpeech) -> list[dict]:
    """Copies of ``records`` with ``audio = {"array", "sampling_rate"}`` of their text."""
    speech.prepare([w for r in records for w in r["text"].split()])
    return [{**r, "audio": {"array": speech.speak(r["text"]), "sampling_rate": SAMPLING_RATE}}
            for r in records]


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def task_words() -> list[str]:
    words = set(NUMBER_WORDS) | set(OPERATIONS) | {TRANSCRIBE_INSTRUCTION}
    for t in TEMPLATES:
        words |= {w for w in t.split() if not w.startswith("{")}
    words |= set(ANSWER_FORMAT.replace("{answer}", "").split())
    return sorted(words)


def build_gap_model(config: GapTaskConfig, *, seed: int | None = None):
    """A random-init tiny Qwen2-Audio (``cord.models.tiny``) sized by ``config``, and its
    adapter."""
    model, processor = build_tiny_qwen2_audio(
        seed=config.seed if seed is None else seed,
        vocab_words=task_words(),
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        audio_d_model=config.audio_d_model,
        audio_layers=config.audio_layers,
        chunk_seconds=config.chunk_seconds,
    )
    return Qwen2AudioAdapter(model, processor)


# --------------------------------------------------------------------------------------------
# Pre-training: opens the gap
# --------------------------------------------------------------------------------------------


class _Batcher:
    """Prompt and completion tensors of one (split, modality, target) built once, sliced per
    batch (the processor runs once per item, not once per step)."""

    def __init__(self, adapter, records, modality: str, target: str):
        self.n = len(records)
        if modality == "audio":
            instruction = TRANSCRIBE_INSTRUCTION if target == "transcript" else None
            self.prompts = adapter.audio_prompts(
                [r["audio"]["array"] for r in records], sampling_rate=SAMPLING_RATE,
                instruction=instruction)
        else:
            self.prompts = adapter.text_prompts([r["text"] for r in records])
        texts = [r["transcript"] if target == "transcript" else completion_text(r["answer"])
                 for r in records]
        tok = adapter.tokenizer
        ids = [tok(t, add_special_tokens=False)["input_ids"] + [adapter.eos_token_ids[0]]
               for t in texts]
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


def pretrain(adapter, splits: dict[str, list[dict]], config: GapTaskConfig, *,
             progress: bool = True, log_every: int = 0) -> list[dict[str, float]]:
    """Trains the tiny model on: text QA (every train question), audio transcription (every
    train question) and audio QA (``splits["audio_qa"]`` only, one batch every
    ``audio_qa_every`` steps). Returns the loss history."""
    model = adapter.model
    model.train()
    gen = torch.Generator().manual_seed(config.seed)
    text_qa = _Batcher(adapter, splits["train"], "text", "answer")
    transcribe = _Batcher(adapter, splits["train"], "audio", "transcript")
    audio_qa = _Batcher(adapter, splits["audio_qa"], "audio", "answer")
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.learning_rate, total_steps=config.pretrain_steps, pct_start=0.1)
    steps = range(config.pretrain_steps)
    bar = None
    if progress:
        steps = bar = tqdm(steps, desc="pre-training (text >> audio)", unit="step")
    history = []

    def draw(b: _Batcher):
        size = min(config.batch_size, b.n)
        return torch.randperm(b.n, generator=gen)[:size]

    for step in steps:
        losses = {"text_qa": nll(adapter, *text_qa.batch(draw(text_qa))),
                  "transcribe": nll(adapter, *transcribe.batch(draw(transcribe)))}
        if step % config.audio_qa_every == 0:
            losses["audio_qa"] = nll(adapter, *audio_qa.batch(draw(audio_qa)))
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        record = {k: float(v.detach()) for k, v in losses.items()}
        history.append(record)
        if bar is not None and step % 10 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items()})
        if log_every and (step + 1) % log_every == 0 and bar is None:
            print(step + 1, {k: round(v, 4) for k, v in record.items()}, flush=True)
    model.eval()
    return history


def pretrained_base(config: GapTaskConfig, splits, *, cache_dir: str | Path | None = None,
                    progress: bool = True, refresh: bool = False):
    """The pretrained gap model's adapter, loaded from ``cache_dir`` if this configuration was
    pretrained before (same key), else pretrained and saved there."""
    path = Path(cache_dir or default_cache_dir()) / f"base-{config.key()}"
    if path.is_dir() and not refresh:
        adapter = build_adapter(path)
        adapter.model.eval()
        return adapter, True
    adapter = build_gap_model(config)
    pretrain(adapter, splits, config, progress=progress)
    path.mkdir(parents=True, exist_ok=True)
    adapter.model.save_pretrained(path)
    adapter.processor.save_pretrained(path)
    return adapter, False
