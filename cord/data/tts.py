"""Text-to-speech engines that make the audio side of a paired dataset.

Two engines behind one small protocol:

- :class:`EspeakEngine` (default): eSpeak NG driven through ctypes from the shared library and
  voice data that the ``espeakng-loader`` wheel ships, so nothing has to be installed on the
  system. Formant synthesis: robotic but intelligible, bit-for-bit deterministic and fast on
  one CPU core.
- :class:`KokoroEngine`: the neural TTS the paper used (Kokoro-82M). Used only when the
  ``kokoro`` package and its weights are present on disk; it never downloads anything.

Example::

    engine = get_engine("espeak", voice="en-us", rate=175)
    wav = engine.synthesize("What is two plus three?")   # float32, mono, engine.sample_rate Hz
"""

from __future__ import annotations

import _ctypes
import atexit
import contextlib
import ctypes
import importlib.util
import inspect
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["TTSEngine", "EspeakEngine", "KokoroEngine", "get_engine", "ENGINES"]


@runtime_checkable
class TTSEngine(Protocol):
    """Anything that turns a string into a mono waveform at a fixed sampling rate."""

    sample_rate: int

    def synthesize(self, text: str) -> np.ndarray:
        """Return ``(num_samples,)`` float32 audio in [-1, 1] at ``self.sample_rate`` Hz."""
        ...


# ---------------------------------------------------------------------------------------------
# eSpeak NG through ctypes
# ---------------------------------------------------------------------------------------------

# Constants from espeak-ng's public header speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # synthesis runs inside espeak_Synth and hands samples to a callback
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1  # words per minute
_EE_OK = 0


class _EspeakVoice(ctypes.Structure):
    """``espeak_VOICE`` from speak_lib.h, used to select a voice by language."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


# int callback(short *wav, int numsamples, espeak_EVENT *events); return 0 to continue.
_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def _declare_prototypes(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_EspeakVoice)]
    lib.espeak_SetVoiceByProperties.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,  # text
        ctypes.c_size_t,  # size in bytes, including the terminating NUL
        ctypes.c_uint,  # position
        ctypes.c_int,  # position type
        ctypes.c_uint,  # end position (0 = none)
        ctypes.c_uint,  # flags
        ctypes.c_void_p,  # unsigned int *unique_identifier
        ctypes.c_void_p,  # user data
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_Terminate.restype = ctypes.c_int


# dlclose on POSIX, FreeLibrary on Windows: unloading is what resets the library's statics.
_unload_library = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)


class _EspeakLibrary:
    """Process-wide access to libespeak-ng, loaded afresh for every utterance.

    libespeak-ng keeps synthesis state in C statics that ``espeak_Terminate`` and
    ``espeak_Initialize`` do not reset (the pitch "flutter" and wave-generator phases), so a
    sentence would come out a little different depending on what was spoken before it. Loading
    the library for each utterance and unloading it afterwards resets all of it: the same text,
    voice and rate give bit-identical samples in any order, for a small overhead per
    utterance. The library loaded is a private copy, so a libespeak-ng that another package in
    the process uses (phonemizer, Kokoro's G2P) is never re-initialised under it. One lock
    serialises synthesis: the library's state is global.
    """

    _instance: _EspeakLibrary | None = None
    _create_lock = threading.Lock()

    def __init__(self) -> None:
        try:  # local: the error below says how to install it
            import espeakng_loader
        except ImportError as e:  # pragma: no cover - it is a dependency of the train extra
            raise ImportError(
                "EspeakEngine needs the `espeakng-loader` package (pip install espeakng-loader)"
            ) from e
        private_dir = tempfile.mkdtemp(prefix="cord-espeak-")
        atexit.register(shutil.rmtree, private_dir, ignore_errors=True)
        source = Path(espeakng_loader.get_library_path())
        self.library_path = str(Path(private_dir) / source.name)
        shutil.copyfile(source, self.library_path)
        self.data_path = os.fsencode(espeakng_loader.get_data_path())
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        # ctypes frees the C trampoline when the Python callable is garbage collected, and
        # libespeak-ng would then call into freed memory: keep it on the instance.
        self._callback = _SynthCallback(self._collect)
        with self._loaded() as (_, sample_rate):
            self.sample_rate = sample_rate

    @classmethod
    def get(cls) -> _EspeakLibrary:
        with cls._create_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    @contextlib.contextmanager
    def _loaded(self) -> Iterator[tuple[ctypes.CDLL, int]]:
        """A freshly loaded and initialised library; terminated and unloaded on exit."""
        lib = ctypes.CDLL(self.library_path)
        initialised = False
        try:
            _declare_prototypes(lib)
            sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path, 0)
            if sample_rate <= 0:
                raise RuntimeError(f"espeak_Initialize failed (data path {self.data_path!r})")
            initialised = True
            lib.espeak_SetSynthCallback(self._callback)
            yield lib, int(sample_rate)
        finally:
            if initialised:
                lib.espeak_Terminate()  # frees what the library allocated before it goes away
            if _unload_library is not None:
                _unload_library(lib._handle)

    def _collect(self, wav, num_samples, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    @staticmethod
    def _set_voice(lib: ctypes.CDLL, voice: str) -> bool:
        """Select ``voice`` by voice name or file (``"en-us"``, ``"en-us+f3"``), else by
        language (``"en-gb"`` is the language of the voice file ``gmw/en``)."""
        if lib.espeak_SetVoiceByName(voice.encode("utf-8")) == _EE_OK:
            return True
        spec = _EspeakVoice(languages=voice.encode("utf-8"))
        return lib.espeak_SetVoiceByProperties(ctypes.byref(spec)) == _EE_OK

    def synthesize(self, text: str, voice: str, rate: int) -> np.ndarray:
        """``(num_samples,)`` int16 samples of ``text`` at ``self.sample_rate``."""
        data = text.encode("utf-8") + b"\0"
        with self.lock, self._loaded() as (lib, _):
            if not self._set_voice(lib, voice):
                raise ValueError(
                    f"voice must be an eSpeak NG voice name such as 'en-us' or 'en-gb', "
                    f"got {voice!r}"
                )
            lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
            self._chunks = []
            status = lib.espeak_Synth(
                data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status} for text {text[:60]!r}")
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(chunks)


class EspeakEngine:
    """eSpeak NG (22,050 Hz) from the ``espeakng-loader`` wheel; no system install needed.

    Args:
        voice: an eSpeak NG voice name (``"en-us"``, ``"en-gb"``, ``"en-us+f3"`` for a variant).
        rate: speaking rate in words per minute, 80-450 (eSpeak's default is 175).
    """

    MIN_RATE, MAX_RATE = 80, 450

    def __init__(self, voice: str = "en-us", rate: int = 175) -> None:
        if not isinstance(voice, str) or not voice:
            raise ValueError(f"voice must be a non-empty string, got {voice!r}")
        if isinstance(rate, bool) or not isinstance(rate, int):
            raise TypeError(f"rate must be an int (words per minute), got {type(rate).__name__}")
        if not self.MIN_RATE <= rate <= self.MAX_RATE:
            raise ValueError(
                f"rate must be in [{self.MIN_RATE}, {self.MAX_RATE}] words per minute, got {rate}"
            )
        self._lib = _EspeakLibrary.get()
        self.voice = voice
        self.rate = rate
        self.sample_rate: int = self._lib.sample_rate
        # Fail now, not on the first record, if the voice does not exist.
        self._lib.synthesize("", voice, rate)

    def synthesize(self, text: str) -> np.ndarray:
        """``(num_samples,)`` float32 mono audio in [-1, 1] at 22,050 Hz."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        pcm = self._lib.synthesize(text, self.voice, self.rate)
        return (pcm.astype(np.float32) / 32768.0).clip(-1.0, 1.0)

    def __repr__(self) -> str:
        return f"EspeakEngine(voice={self.voice!r}, rate={self.rate})"


# ---------------------------------------------------------------------------------------------
# Kokoro (optional, local weights only)
# ---------------------------------------------------------------------------------------------


class KokoroEngine:
    """Kokoro-82M (24,000 Hz), the TTS the paper used, from weights already on disk.

    It never downloads: the model checkpoint, its ``config.json`` and a voice ``.pt`` file must
    be local paths (the model is built from them and handed to the pipeline, so Kokoro has
    nothing to fetch). For American/British English (``lang_code`` ``"a"``/``"b"``) Kokoro's
    grapheme-to-phoneme step (misaki) also needs the spaCy model ``en_core_web_sm`` installed.

    Args:
        model_path: the ``kokoro-v1_0.pth`` checkpoint.
        config_path: its ``config.json``.
        voice: a voice file such as ``voices/af_heart.pt`` (or several joined by ``,``, which
            Kokoro averages).
        lang_code: Kokoro's language code (``"a"`` American English, ``"b"`` British, ...).
        speed: speaking speed multiplier.
        device: torch device for the model (``"cpu"``, ``"cuda"``).
    """

    sample_rate = 24_000
    REPO_ID = "hexgrad/Kokoro-82M"

    def __init__(
        self,
        model_path: str | os.PathLike,
        config_path: str | os.PathLike,
        voice: str | os.PathLike,
        *,
        lang_code: str = "a",
        speed: float = 1.0,
        device: str = "cpu",
    ) -> None:
        if importlib.util.find_spec("kokoro") is None:
            raise ImportError(
                "KokoroEngine needs the `kokoro` package (pip install kokoro) and its weights on "
                "disk; use engine 'espeak' for a TTS that needs neither"
            )
        for name, path in (("model_path", model_path), ("config_path", config_path)):
            if path is None or not Path(path).is_file():
                raise FileNotFoundError(
                    f"{name} must be an existing local file (Kokoro weights are never "
                    f"downloaded), got {path!r}"
                )
        voices = [v for v in str(voice).split(",") if v]
        if not voices or not all(v.endswith(".pt") and Path(v).is_file() for v in voices):
            raise FileNotFoundError(
                f"voice must be one or more existing local .pt voice files joined by ',', "
                f"got {voice!r}"
            )
        if lang_code in ("a", "b") and importlib.util.find_spec("en_core_web_sm") is None:
            raise ImportError(
                "Kokoro's English G2P needs the spaCy model en_core_web_sm installed locally "
                "(it would otherwise try to download it)"
            )
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        from kokoro import KModel, KPipeline  # local: kokoro is an optional extra

        # With a local config, checkpoint and voice file, and a model instance handed to the
        # pipeline, Kokoro has nothing to fetch. ``repo_id`` only names the model (newer
        # releases warn without it); older releases do not take it.
        kwargs: dict[str, Any] = {"config": str(config_path), "model": str(model_path)}
        if "repo_id" in inspect.signature(KModel).parameters:
            kwargs["repo_id"] = self.REPO_ID
        model = KModel(**kwargs).to(device).eval()
        self._pipeline = KPipeline(lang_code=lang_code, repo_id=self.REPO_ID, model=model)
        self.voice = ",".join(voices)
        self.speed = float(speed)

    def synthesize(self, text: str) -> np.ndarray:
        """``(num_samples,)`` float32 mono audio in [-1, 1] at 24,000 Hz."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        pieces = []
        for result in self._pipeline(text, voice=self.voice, speed=self.speed):
            audio = result[2]
            if audio is not None:
                pieces.append(np.asarray(audio.detach().cpu(), dtype=np.float32).reshape(-1))
        if not pieces:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(pieces).clip(-1.0, 1.0)


ENGINES: dict[str, type] = {"espeak": EspeakEngine, "kokoro": KokoroEngine}


def get_engine(name: str, **kwargs: Any) -> TTSEngine:
    """Build the engine called ``name`` (``"espeak"`` or ``"kokoro"``) with ``kwargs``."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {name!r}")
    return ENGINES[name](**kwargs)
