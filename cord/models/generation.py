"""The explicit generation config of every sampling call, and the context that makes it the
only one ``generate`` sees: on-policy samples are draws from p_theta, whatever the model's own
``generation_config`` asks for."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

from torch import nn
from transformers import GenerationConfig


def sampling_config(
    *,
    max_new_tokens: int,
    temperature: float,
    num_return_sequences: int = 1,
    pad_token_id: int,
    eos_token_ids: Sequence[int],
    suppress_token_ids: Sequence[int] = (),
) -> GenerationConfig:
    """The explicit generation config of every sampling call: a draw from softmax(logits / T)
    (greedy for ``temperature=0``) and nothing else.

    Every logits processor ``generate`` knows is set to its neutral value: no top-k / top-p /
    min-p / typical / epsilon / eta truncation, no repetition penalty, no n-gram blocking, no
    forced minimum length, no bad words or sequence bias, no forced BOS/EOS, one beam. The
    one deliberate exception is ``suppress_token_ids``: placeholders (Qwen2-Audio's
    ``<|AUDIO|>``) that would change the meaning of a completion fed back, so the samples are
    p_theta conditioned on never emitting them (their mass is ~0 in a trained model).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    sample = temperature > 0
    return GenerationConfig(
        max_new_tokens=max_new_tokens, min_new_tokens=0,
        do_sample=sample, num_beams=1, num_beam_groups=1,
        num_return_sequences=num_return_sequences,
        temperature=float(temperature) if sample else 1.0,
        # top_k=0 disables top-k when sampling; greedy takes None (transformers warns that a
        # sampling flag is ignored otherwise, and nothing can be inherited: see below)
        top_k=0 if sample else None, top_p=1.0, typical_p=1.0, epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0, encoder_repetition_penalty=1.0, length_penalty=1.0,
        no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0,
        renormalize_logits=False, remove_invalid_values=False, use_cache=True,
        pad_token_id=int(pad_token_id), eos_token_id=[int(e) for e in eos_token_ids],
        suppress_tokens=[int(t) for t in suppress_token_ids] or None,
    )


@contextmanager
def only_generation_config(model: nn.Module, config: GenerationConfig):
    """Makes ``config`` the model's ``generation_config`` for one ``generate`` call.

    ``generate`` fills every field a passed config leaves None from ``model.generation_config``
    (transformers 5), and fields such as ``min_p``, ``bad_words_ids``, ``sequence_bias``,
    ``forced_eos_token_id`` or ``top_h`` are neutral only as None: the one way to inherit
    nothing is to have nothing to inherit from."""
    saved = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = saved
