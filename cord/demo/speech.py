"""Speech for the demo tasks: utterances as fixed-length word slots of eSpeak NG speech.

Each word is synthesised once, its silence trimmed, and placed in a fixed-length slot, so an
utterance is a sequence of word slots (a simplification that lets a small encoder learn to hear
in a couple of minutes on a CPU). Word clips are cached on disk; they are a pure function of the
word and the eSpeak settings, so the cache never changes a result.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cord.data.paired import resample
from cord.data.tts import get_engine

SAMPLING_RATE = 16_000


def default_cache_dir() -> Path:
    from cord import settings

    return settings.get().cache_dir / "demo"


def describe_cache(cache_dir: str | Path | None) -> str:
    """The line each demo prints first: where its word clips and bases live, and how to move
    them."""
    return (f"cache: {Path(cache_dir or default_cache_dir())} (word clips and pre-trained "
            "bases; --cache-dir or the CORD_CACHE variable moves it)")


class SlottedSpeech:
    """Utterances as fixed-length word slots of eSpeak NG speech at 16 kHz.

    Each distinct word is synthesised once (eSpeak is deterministic), silence-trimmed and
    zero-padded (or cut) to ``slot_seconds``; the clips are cached in ``cache_dir``.
    """

    def __init__(self, *, slot_seconds: float = 0.48, rate: int = 175,
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
