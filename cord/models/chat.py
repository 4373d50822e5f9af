"""The chat-template adapter every family builds on (:class:`ChatAdapter`), the batches it
builds and returns (:class:`PromptBatch`, :class:`CompletionHidden`) and ``unwrap_model``.
What an adapter is and how a family overrides it: ``cord.models.adapter``; the families:
``cord.models.families``."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn
from torch.distributed.fsdp import FSDPModule

from cord.data.paired import AudioLimit, resample
from cord.models.encoder_reuse import shared_calls
from cord.models.generation import only_generation_config, sampling_config
from cord.models.options import MODEL_OPTIONS
from cord.models.parameter_contexts import bypassed_lm_head, gathered_parameters


@dataclass
class PromptBatch:
    """A batch of left-padded prompts.

    Attributes:
        input_ids: (B, P) long, left-padded.
        attention_mask: (B, P) long, 0 on the left padding.
        model_kwargs: per-example tensors the model also takes, e.g. Qwen2-Audio's
            ``input_features`` (B, mel, frames) and ``feature_attention_mask`` (B, frames).
        row_keys: the ``model_kwargs`` whose leading dimension counts audio WINDOWS rather than
            prompts (a long clip cut into windows stacked along the batch, as Voxtral and Audio
            Flamingo 3 do); ``item_rows`` (B,) says how many rows each prompt owns.
        feature_source: (R,) for the R rows of the audio features, the row of the batch they
            were copied from (:meth:`repeat_interleave`); equal entries hold equal features, so
            the audio encoder runs once for them. None: every row is distinct.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    model_kwargs: dict[str, torch.Tensor] = field(default_factory=dict)
    row_keys: tuple[str, ...] = ()
    item_rows: torch.Tensor | None = None
    feature_source: torch.Tensor | None = None
    #: Audio encoder outputs already computed for these prompts (``cord.models.encoder_reuse``),
    #: shared by their copies; made by ``audio_prompts``, None: no reuse across calls.
    audio_cache: dict | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> PromptBatch:
        return PromptBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            {k: v.to(device) for k, v in self.model_kwargs.items()},
            self.row_keys, self.item_rows, self.feature_source, self.audio_cache,
        )

    def _row_index(self, n: int) -> torch.Tensor:
        """Rows of the windowed kwargs for each prompt's rows, each prompt ``n`` times."""
        counts = self.item_rows.tolist()
        starts = [sum(counts[:i]) for i in range(len(counts))]
        return torch.tensor([r for s, c in zip(starts, counts, strict=True)
                             for _ in range(n) for r in range(s, s + c)], dtype=torch.long)

    def num_feature_rows(self) -> int:
        """R: rows of the audio features (prompts, or windows for windowed kwargs)."""
        return int(self.item_rows.sum()) if self.row_keys else len(self)

    def repeat_interleave(self, n: int) -> PromptBatch:
        """Each prompt ``n`` times in a row (the layout of a GRPO group); the windows of a
        windowed clip move with their prompt, and :attr:`feature_source` records the copies."""
        if n == 1:
            return self
        rows = self._row_index(n) if self.row_keys else None
        base = (self.feature_source if self.feature_source is not None
                else torch.arange(self.num_feature_rows()))
        kwargs = {k: (v.index_select(0, rows.to(v.device)) if k in self.row_keys
                      else v.repeat_interleave(n, 0)) for k, v in self.model_kwargs.items()}
        return PromptBatch(
            self.input_ids.repeat_interleave(n, 0),
            self.attention_mask.repeat_interleave(n, 0),
            kwargs, self.row_keys,
            None if self.item_rows is None else self.item_rows.repeat_interleave(n),
            base[rows] if rows is not None else base.repeat_interleave(n),
            self.audio_cache,
        )


class CompletionHidden(NamedTuple):
    """Final hidden states on the completion and the LM head that turns them into logits."""

    hidden: torch.Tensor  # (B, T, H), position t predicts completion token t
    weight: torch.Tensor  # (V, H)
    bias: torch.Tensor | None  # (V,) or None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model under DDP/DeepSpeed/compile wrappers (for ``generate`` and the LM head)."""
    return extract_model_from_parallel(model)


class ChatAdapter:
    """A chat-template adapter for ``transformers`` audio LMs with a processor.

    Args:
        model: the model (possibly wrapped by accelerate; ``generate`` uses the bare one).
        processor: its processor (tokenizer + feature extractor + chat template).
        system_prompt: optional system turn; None keeps the template's default.
    """

    #: The family's name in the registry (``cord.models.families``).
    family = "custom"
    #: Longest clip in seconds the processor takes whole (None: no limit); see ``long_audio``.
    window_seconds: float | None = None
    #: Options of the processor's audio side (``padding`` applies to the text otherwise).
    audio_kwargs: dict[str, Any] = {}
    #: Run the audio encoder once per distinct clip in a batch (the N GRPO copies share it);
    #: False recomputes it for every copy (only for timing the difference).
    share_audio_encoder: bool = True
    #: The model class the family takes (FSDP2 subclasses it); None: any model.
    model_class: type | None = None

    def __init__(self, model: nn.Module, processor, *, system_prompt: str | None = None,
                 long_audio: str = MODEL_OPTIONS["long_audio"].default):
        MODEL_OPTIONS["long_audio"].check(long_audio)
        self.long_audio = long_audio
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None:
            raise TypeError("processor must have a .tokenizer (a transformers processor)")
        bare = unwrap_model(model)
        if self.model_class is not None and not isinstance(bare, self.model_class):
            raise TypeError(f"model must be an instance of {self.model_class.__name__}, got "
                            f"{type(bare).__name__}")
        self.model = model
        self.processor = processor
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        gen = getattr(unwrap_model(model), "generation_config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_token_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.eos_token_ids[0])
        #: Never generated: placeholders that would change the meaning of a completion when it
        #: is fed back (an <|AUDIO|> in a completion would be taken for an audio frame).
        self.suppress_token_ids: list[int] = []

    # -- prompts -------------------------------------------------------------------------------

    def audio_message(self, instruction: str | None) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "audio", "audio": "<audio>"}]
        if instruction:
            content.append({"type": "text", "text": instruction})
        return [{"role": "user", "content": content}]

    def text_message(self, text: str, instruction: str | None) -> list[dict[str, Any]]:
        body = text if not instruction else f"{text}\n{instruction}"
        return [{"role": "user", "content": [{"type": "text", "text": body}]}]

    def _render(self, messages: list[dict[str, Any]]) -> str:
        if self.system_prompt is not None:
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )

    def _encode(self, texts: list[str], audios: list | None) -> PromptBatch:
        self.tokenizer.padding_side = "left"
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        if audios is not None:
            kwargs["audio"] = audios
            kwargs["sampling_rate"] = self.sampling_rate
            if self.audio_kwargs:
                kwargs["audio_kwargs"] = dict(self.audio_kwargs)
                kwargs["text_kwargs"] = {"padding": kwargs.pop("padding")}
        enc = self.processor(**kwargs)
        unused = {"input_ids", "attention_mask", *getattr(self.processor, "unused_input_names", ())}
        extra = {k: v for k, v in enc.items() if k not in unused and isinstance(v, torch.Tensor)}
        return PromptBatch(enc["input_ids"], enc["attention_mask"], extra)

    @property
    def sampling_rate(self) -> int:
        return int(self.processor.feature_extractor.sampling_rate)

    def audio_prompts(
        self, audios: Sequence, *, sampling_rate: int, instruction: str | None = None,
        names: Sequence[str] | None = None,
    ) -> PromptBatch:
        """Audio-conditioned prompts x^a: one user turn holding the audio (+ instruction).

        Args:
            audios: B 1-D float waveforms at ``sampling_rate`` (resampled to the model's rate).
            names: the items' ids, for error messages (default ``audios[i]``).

        A clip longer than :attr:`window_seconds` is an error naming it (``long_audio="error"``)
        or goes through the family's own chunking (``long_audio="chunk"``); never cut.
        """
        if len(audios) == 0:
            raise ValueError("audios must hold at least one waveform")
        waves = [resample(a, sampling_rate, self.sampling_rate) for a in audios]
        names = list(names) if names is not None else [f"audios[{i}]" for i in range(len(waves))]
        for name, w in zip(names, waves, strict=True):
            if w.size == 0:
                raise ValueError(f"{name} is empty")
        limit = self.audio_limit()
        if limit is not None:
            for name, w in zip(names, waves, strict=True):
                limit.check(w, self.sampling_rate, name)
        long = [i for i, w in enumerate(waves) if self._too_long(w)]
        prompt = self._render(self.audio_message(instruction))
        batch = self._encode_audio([prompt] * len(waves), waves, chunk=bool(long))
        batch.audio_cache = {}
        return batch

    def audio_limit(self) -> AudioLimit | None:
        """The longest clip :meth:`audio_prompts` takes, at :attr:`sampling_rate` (None: any
        length): the window under ``long_audio="error"``, else what the family's own chunking
        takes (:meth:`chunked_limit`). ``cord train`` checks every clip against it in the data
        pass before step 1 (``cord.data.validate``)."""
        if self.window_seconds is None:
            return None
        if self.long_audio == "error":
            return AudioLimit(
                self._window_samples(),
                f"longer than the {self.window_seconds:g} s window of {self.family}'s processor "
                f"(it would be cut); set long_audio=chunk to use {self.family}'s own chunking, "
                "or shorten the clip")
        return self.chunked_limit()

    def chunked_limit(self) -> AudioLimit | None:
        """The longest clip the family's own chunking takes (``long_audio="chunk"``). A family
        without chunking of its own (this base class) takes one window."""
        return AudioLimit(self._window_samples(),
                          f"{self.family} has no chunking of its own for clips longer than "
                          f"{self.window_seconds:g} s; shorten the clip")

    def _window_samples(self) -> int:
        return round(self.window_seconds * self.sampling_rate)

    def _too_long(self, wave) -> bool:
        return self.window_seconds is not None and wave.size > self._window_samples()

    def _encode_audio(self, texts: list[str], waves: list, *, chunk: bool) -> PromptBatch:
        """Audio prompts; ``chunk`` when a clip is longer than the window (the family's own
        chunking; :meth:`audio_limit` has refused what it cannot take)."""
        return self._encode(texts, waves)

    def text_prompts(self, texts: Sequence[str], *, instruction: str | None = None) -> PromptBatch:
        """Text-conditioned prompts x^t: one user turn holding the text (+ instruction)."""
        if len(texts) == 0:
            raise ValueError("texts must hold at least one prompt")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"texts[{i}] must be a non-empty string, got {t!r}")
        return self._encode([self._render(self.text_message(t, instruction)) for t in texts], None)

    # -- generation ----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompts: PromptBatch,
        *,
        max_new_tokens: int,
        temperature: float,
        num_return_sequences: int = 1,
    ) -> torch.Tensor:
        """Draws completions from the model's own distribution; ``temperature=0`` decodes
        greedily. Nothing comes from the model's ``generation_config`` (see
        :func:`sampling_config`): on-policy samples are draws from p_theta.

        Returns:
            (B * num_return_sequences, T) long ids of the new tokens, the copies of prompt i in
            rows ``i*n .. i*n+n-1``, padded with ``pad_token_id`` after the EOS.
        """
        model = unwrap_model(self.model)
        device = next(model.parameters()).device
        # The copies are made here, not by generate(): windowed audio (several rows per prompt)
        # must move with its prompt, and the copies then share one encoder pass.
        prompts = prompts.repeat_interleave(num_return_sequences).to(device)
        config = sampling_config(
            max_new_tokens=max_new_tokens, temperature=temperature,
            num_return_sequences=1, pad_token_id=self.pad_token_id,
            eos_token_ids=self.eos_token_ids, suppress_token_ids=self.suppress_token_ids)
        extra: dict[str, Any] = {}
        if isinstance(self.model, FSDPModule) and torch.distributed.get_world_size() > 1:
            # Every process keeps stepping until all are done, so that any collective a
            # sharded forward still issues stays matched across processes.
            extra["synced_gpus"] = True
        was_training = model.training
        model.eval()
        try:
            with gathered_parameters(self.model), only_generation_config(model, config), \
                    self.shared_audio(prompts):
                out = model.generate(
                    input_ids=prompts.input_ids, attention_mask=prompts.attention_mask,
                    generation_config=config, **extra, **prompts.model_kwargs,
                )
        finally:
            model.train(was_training)
        return out[:, prompts.input_ids.shape[1]:]

    # -- scoring -------------------------------------------------------------------------------

    def lm_head(self, model: nn.Module) -> nn.Module:
        """The output projection: ``get_output_embeddings()`` (``lm_head`` in transformers 5,
        ``language_model.lm_head`` in 4.x), else a ``lm_head`` attribute."""
        get = getattr(model, "get_output_embeddings", None)
        head = get() if callable(get) else None
        if head is None:
            head = getattr(model, "lm_head", None)
        if not isinstance(head, nn.Module) or not isinstance(getattr(head, "weight", None),
                                                              torch.Tensor):
            raise TypeError(
                f"{type(model).__name__} has no LM head (get_output_embeddings() returned "
                f"{type(head).__name__}); override ChatAdapter.lm_head for this model")
        return head

    def _forward(self, prompts: PromptBatch, completion_ids, completion_mask):
        """Runs prompt + completion; returns the model output and the prompt length P."""
        if completion_ids.dim() != 2 or completion_ids.shape[0] != len(prompts):
            raise ValueError(
                f"completion_ids must have shape ({len(prompts)}, T), got "
                f"{tuple(completion_ids.shape)}"
            )
        if completion_mask.shape != completion_ids.shape:
            raise ValueError(
                f"completion_mask must have shape {tuple(completion_ids.shape)}, got "
                f"{tuple(completion_mask.shape)}"
            )
        device = completion_ids.device
        prompts = prompts.to(device)
        input_ids = torch.cat([prompts.input_ids, completion_ids], dim=1)
        attention_mask = torch.cat(
            [prompts.attention_mask, completion_mask.to(prompts.attention_mask.dtype)], dim=1
        )
        # The positions generate() used for a left-padded prompt.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        with self.shared_audio(prompts):
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=False, **prompts.model_kwargs,
            )
        return out, prompts.input_ids.shape[1]

    # -- one encoder pass per clip --------------------------------------------------------------

    #: The submodules (paths as in :attr:`module_groups`) whose ``forward`` runs the audio
    #: encoder and projector, for :meth:`shared_audio_calls`.
    shared_modules: tuple[str, ...] = ()

    def shared_audio_calls(self, model: nn.Module) -> list[tuple[object, str]]:
        """The calls that run the audio encoder and projector, as ``(owner, method name)``:
        :meth:`shared_audio` runs them once per distinct clip (``cord.models.encoder_reuse``).
        By default the ``forward`` of each of :attr:`shared_modules`."""
        return [(_find(model, path), "forward") for path in self.shared_modules]

    def audio_output_tokens(self, prompts: PromptBatch) -> torch.Tensor | None:
        """(R,) output tokens of each feature row for encoders whose outputs are flattened
        across clips; None when outputs keep a row dimension."""
        return None

    @contextmanager
    def shared_audio(self, prompts: PromptBatch):
        """While active, the audio encoder and projector run once per distinct clip of
        ``prompts`` (the N copies of a GRPO group share one pass), and reuse the outputs an
        earlier call on the same prompts made in the same mode (``PromptBatch.audio_cache``)."""
        if not self.share_audio_encoder or not prompts.model_kwargs:
            yield
            return
        calls = self.shared_audio_calls(unwrap_model(self.model))
        with shared_calls(calls, prompts.feature_source, tokens=self.audio_output_tokens(prompts),
                          cache=prompts.audio_cache, num_rows=prompts.num_feature_rows()):
            yield

    def completion_logits(
        self, prompts: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, T, V) logits; position t is the distribution that predicts ``completion_ids[:, t]``.

        Differentiable (wrap in ``torch.no_grad()`` for a teacher pass).

        The LM head runs on the T completion positions only, never on the P prompt positions:
        the (B, P+T, V) logits of a plain forward (and their zero-filled gradient) are never
        made.
        """
        hidden, head = self._completion_states(prompts, completion_ids, completion_mask)
        return head(hidden)  # the module, so that engine hooks on it (ZeRO-3) still fire

    def completion_hidden(
        self, prompts: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> CompletionHidden:
        """Final hidden states (B, T, H) aligned like :meth:`completion_logits`, plus the head.

        The LM head is bypassed for the forward (the model returns hidden states as its
        "logits"), so the (B, P+T, V) logits are never computed; the forward still goes through
        the (possibly DDP- or FSDP-wrapped) model so gradient hooks fire as usual. Under FSDP2
        the head belongs to the root unit, which stays gathered after its forward: the weight
        returned is the full (V, H) weight, and its gradient is reduce-scattered in backward.
        """
        hidden, head = self._completion_states(prompts, completion_ids, completion_mask)
        return CompletionHidden(hidden, head.weight, head.bias)

    def _completion_states(self, prompts, completion_ids, completion_mask):
        """(B, T, H) final hidden states on the completion and the LM head module."""
        bare = unwrap_model(self.model)
        config = getattr(bare, "config", None)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        softcap = getattr(text, "final_logit_softcapping", None)
        if softcap:
            # The forward would softcap the hidden states (the head is bypassed) and the head
            # applied here would skip the softcap: refuse rather than score other logits.
            raise ValueError(f"{type(bare).__name__} applies final_logit_softcapping={softcap} "
                             "after its LM head, which the completion scoring (and the fused-"
                             "linear losses) would skip; this model is not supported")
        with bypassed_lm_head(bare, self.lm_head(bare)) as head:
            out, p = self._forward(prompts, completion_ids, completion_mask)
        t = completion_ids.shape[1]
        return out.logits[:, p - 1 : p - 1 + t], head

    def decode(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
        """Completions as text (masked tokens and special tokens dropped)."""
        return [
            self.tokenizer.decode(ids[m.bool()].tolist(), skip_special_tokens=True).strip()
            for ids, m in zip(completion_ids.cpu(), completion_mask.cpu(), strict=True)
        ]

    # -- parameter groups ----------------------------------------------------------------------

    #: ``trainable`` group -> names of the bare model's child modules it holds ("all" is every
    #: parameter). Subclasses name their audio encoder and projector here.
    module_groups: dict[str, tuple[str, ...]] = {}

    def parameter_group(self, group: str) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the bare model in ``group``: "all", or one of
        :attr:`module_groups` ("audio" = audio encoder + projector, "projector")."""
        bare = unwrap_model(self.model)
        if group == "all":
            return list(bare.named_parameters())
        if group not in self.module_groups:
            raise ValueError(f"trainable must be one of {['all', *self.module_groups]} for "
                             f"{type(self).__name__}, got {group!r}")
        names = {id(q): n for n, q in bare.named_parameters()}
        out = []
        for child in self.module_groups[group]:
            # transformers 5 nests the parts under ``model``; older layouts had them on top.
            found = [m for prefix in ("", "model.") for m in [_submodule(bare, prefix + child)]
                     if m is not None]
            if not found:
                raise TypeError(f"{type(bare).__name__} has no submodule {child!r} (parameter "
                                f"group {group!r})")
            out += [(names[id(q)], q) for q in found[0].parameters()]
        return out

    def with_model(self, model: nn.Module) -> ChatAdapter:
        """The same adapter over another model (a frozen or EMA teacher, a prepared model)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.model = model
        return new


def _find(model: nn.Module, path: str) -> nn.Module:
    """``model.<path>`` or ``model.model.<path>`` (transformers 5 nests the parts)."""
    for prefix in ("", "model.", "model.thinker."):
        found = _submodule(model, prefix + path)
        if found is not None:
            return found
    raise TypeError(f"{type(model).__name__} has no submodule {path!r}")


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None
