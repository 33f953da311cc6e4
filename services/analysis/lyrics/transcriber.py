"""What every transcriber backend offers the analysis stage: what it heard, phrase by phrase, word by word.

A transcriber reports what it heard with its own confidences; which phrases are singing and which
are invented over instrumental music is decided afterwards (gather.py), from those confidences,
with thresholds measured on songs made here. It may pass over, unread, what gather.py would drop.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np

from services.common.lifecycle import Backend


@dataclass(frozen=True)
class HeardWord:
    text: str  # as the model wrote it, with its leading space and punctuation
    start: float  # seconds from the song's start
    end: float
    probability: float


@dataclass(frozen=True)
class HeardPhrase:
    """One stretch of text the model wrote, with the confidences that tell singing from invention."""

    start: float
    end: float
    text: str
    no_speech: float  # the model's probability that nobody speaks or sings in the window holding this phrase
    avg_logprob: float  # mean log-probability of its tokens
    words: tuple[HeardWord, ...]
    window: int = 0  # which stretch of audio the model read it in (phrases of one window share no_speech)

    @property
    def word_probability(self) -> float:
        """The mean probability of its words (0 when it has none)."""
        return sum(w.probability for w in self.words) / len(self.words) if self.words else 0.0


@dataclass(frozen=True)
class Transcription:
    model: str  # e.g. "whisper-base"
    language: str  # ISO 639-1: the language the song was read in (detected, or a fallback when unsure)
    language_probability: float  # how sure the detection was (1.0 when the language was given)
    phrases: tuple[HeardPhrase, ...]


class Transcriber(Backend):
    sample_rate: int = 16000  # the rate the stage decodes the song at for this transcriber

    @abstractmethod
    def transcribe(self, samples: np.ndarray, skip_no_speech_above: float | None = None) -> Transcription:
        """Everything heard in `samples` (mono float32 at `sample_rate`), in order. A stretch the model finds
        more likely than `skip_no_speech_above` to hold no voice may be passed over unread (None: read all)."""
