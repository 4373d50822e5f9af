"""A tiny random-init Qwen2-Audio for tests and CPU demos, built entirely offline.

Nothing is downloaded: the tokenizer is a small byte-level BPE trained on the spot with the
``tokenizers`` package over a built-in word list (plus any ``vocab_words``), digits are split one
per token as in Qwen2, and the special tokens of Qwen2-Audio (``<|im_start|>``, ``<|im_end|>``,
``<|AUDIO|>``, ``<|audio_bos|>``, ``<|audio_eos|>``, ``<|endoftext|>``) are added. The feature
extractor is a ``WhisperFeatureExtractor`` built from arguments (80 mel bins, a short window), and
the audio encoder's ``max_source_positions`` is derived from that window, because Qwen2-Audio
requires the mel input to be exactly ``2 * max_source_positions`` frames long.

Example:
    >>> model, processor = build_tiny_qwen2_audio(seed=0)
    >>> adapter = Qwen2AudioAdapter(model, processor)        # cord.models.families.qwen2_audio
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    WhisperFeatureExtractor,
)

#: Words the tiny tokenizer merges into single tokens (a BPE over them, byte fallback for the rest).
DEFAULT_WORDS: tuple[str, ...] = tuple(
    """
    the a an is are was what which who how many much of to in on for and or not no yes it
    this that with as by from at be answer question option choose correct true false
    plus minus times divided equals equal sum difference product of total result number
    zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy
    eighty ninety hundred thousand half point
    A B C D option answer is so therefore the final
    you are helpful assistant system user audio text read listen said says
    apple apples cat dog red blue green big small has have had gives left more less
    """.split()
)

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",  # pad
    "<|im_start|>",
    "<|im_end|>",  # end of turn: the EOS of generation
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
)

#: The chat template of Qwen2-Audio-7B-Instruct (the processor's default, stated here so that the
#: tokenizer alone can render it too).
QWEN2_AUDIO_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content or content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)


def build_tiny_tokenizer(vocab_words=None, *, vocab_size: int | None = None,
                         special_tokens: tuple[str, ...] = SPECIAL_TOKENS,
                         eos_token: str = "<|im_end|>", pad_token: str = "<|endoftext|>",
                         chat_template: str | None = QWEN2_AUDIO_CHAT_TEMPLATE,
                         **tokenizer_kwargs):
    """A fast tokenizer (``PreTrainedTokenizerFast``) with Qwen2-Audio's special tokens.

    Byte-level BPE trained on the built-in words plus ``vocab_words``; every byte is in the
    alphabet, so any text round-trips. ``vocab_size=None`` merges until every listed word (with
    and without a leading space, capitalised or not) is one token; a number caps the
    vocabulary instead. ``eos_token`` is ``<|im_end|>``, ``pad_token`` is ``<|endoftext|>``.

    Other families' tiny tokenizers (``cord.models.families``) pass their own
    ``special_tokens`` (ids 0, 1, ... in that order), ``eos_token``, ``pad_token``,
    ``chat_template`` and any further ``PreTrainedTokenizerFast`` keyword arguments.
    """
    if vocab_words is not None and (
        isinstance(vocab_words, str) or not all(isinstance(w, str) for w in vocab_words)
    ):
        raise TypeError("vocab_words must be an iterable of strings (words), not a single string")
    words = list(DEFAULT_WORDS) + list(vocab_words or ())
    letters = list(string.ascii_letters)
    tok = Tokenizer(models.BPE())
    # Digits one per token (as Qwen2 does), then GPT-2 style byte-level pieces.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size or 1_000_000,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Each word as "word", " word", "Word" and " Word" (sentence-initial, mid-sentence).
    forms = {f for w in words for f in (w, " " + w, w.capitalize(), " " + w.capitalize())}
    corpus = sorted(forms) * 2 + [" ".join(letters), "0123456789 +-*/=.,?!:()"]
    tok.train_from_iterator(corpus, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos_token,
        pad_token=pad_token,
        padding_side="left",
        chat_template=chat_template,
        **tokenizer_kwargs,
    )
    hf.model_max_length = 4096
    return hf


def build_tiny_qwen2_audio(
    *,
    seed: int = 0,
    vocab_words=None,
    vocab_size: int | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int | None = None,
    audio_d_model: int = 32,
    audio_layers: int = 1,
    audio_heads: int = 2,
    num_mel_bins: int = 80,
    sampling_rate: int = 16000,
    hop_length: int = 320,
    chunk_seconds: int = 8,
    tie_word_embeddings: bool = False,
):
    """A random-init ``Qwen2AudioForConditionalGeneration`` and its ``Qwen2AudioProcessor``.

    Args:
        seed: torch seed for the weights (the same seed gives the same model).
        vocab_words: extra words to merge into single tokens (e.g. a dataset's vocabulary).
        vocab_size: cap on the BPE vocabulary (None: every listed word is one token).
        hidden_size, num_layers, num_attention_heads, num_key_value_heads, intermediate_size:
            the Qwen2 language model.
        audio_d_model, audio_layers, audio_heads, num_mel_bins: the Whisper-style audio encoder.
        sampling_rate, hop_length, chunk_seconds: the feature extractor. Audio is padded (or
            cut) to ``chunk_seconds``; that window gives ``chunk_seconds * sampling_rate /
            hop_length`` mel frames and at most a quarter as many audio tokens (50 at defaults).

    Returns:
        ``(model, processor)``; the model is in eval mode, float32, on the CPU.
    """
    for name, value in [
        ("hidden_size", hidden_size), ("num_layers", num_layers), ("audio_d_model", audio_d_model),
        ("audio_layers", audio_layers), ("chunk_seconds", chunk_seconds),
        ("hop_length", hop_length), ("num_attention_heads", num_attention_heads),
    ]:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be divisible by num_attention_heads "
            f"({num_attention_heads}), which must be divisible by num_key_value_heads "
            f"({num_key_value_heads})"
        )

    tokenizer = build_tiny_tokenizer(vocab_words, vocab_size=vocab_size)
    feature_extractor = WhisperFeatureExtractor(
        feature_size=num_mel_bins,
        sampling_rate=sampling_rate,
        hop_length=hop_length,
        chunk_length=chunk_seconds,
        n_fft=400,
        return_attention_mask=True,
    )
    processor = Qwen2AudioProcessor(
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=QWEN2_AUDIO_CHAT_TEMPLATE,
    )
    n_frames = feature_extractor.nb_max_frames
    if n_frames % 2:
        raise ValueError(
            f"chunk_seconds * sampling_rate / hop_length must be even (Qwen2-Audio halves it), "
            f"got {n_frames} frames"
        )
    config = Qwen2AudioConfig(
        audio_config=dict(
            model_type="qwen2_audio_encoder",
            num_mel_bins=num_mel_bins,
            encoder_layers=audio_layers,
            encoder_attention_heads=audio_heads,
            encoder_ffn_dim=4 * audio_d_model,
            d_model=audio_d_model,
            max_source_positions=n_frames // 2,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=intermediate_size or 2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_attention_heads,
            num_key_value_heads=num_key_value_heads,
            max_position_embeddings=2048,
            tie_word_embeddings=tie_word_embeddings,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
        ),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    return seeded_tiny(Qwen2AudioForConditionalGeneration, config, tokenizer, seed), processor


def seeded_tiny(model_class, config, tokenizer, seed: int):
    """``model_class(config)`` with weights drawn from ``seed`` (without touching the caller's
    RNG), generating with ``tokenizer``'s end and padding tokens, in eval mode: the last step of
    every family's ``build_tiny``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = (
        tokenizer.eos_token_id, tokenizer.pad_token_id, None)
    model.eval()
    return model


def chatml_template(audio: str, other_content: str = "") -> str:
    """A ChatML chat template (Qwen's default system turn) whose audio content renders as
    ``audio``; ``other_content``: further ``{% elif content['type'] == ... %}`` branches. The
    tiny Audio Flamingo 3 and Qwen Omni processors use it."""
    return (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'audio' %}" + audio + other_content +
        "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
