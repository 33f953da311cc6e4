"""From what a transcriber heard to lyrics.json: which phrases are sung, and which words each segment holds.

Whisper writes text over instrumental music too ("Thank you.", a line in another language, a
repeated word): it was trained on speech, and music with no voice is where it invents. A phrase is
kept as sung only when the model both thinks someone speaks (its no-speech probability is low)
and is sure of the words (their mean probability is high). The thresholds below were chosen by
measuring Whisper base on songs made here, instrumental and with a voice at known times
(bench/lyrics_calibration.py; the figures are in bench/LISTENING.md).

A word belongs to the segment that holds its midpoint; a segment is vocal when it holds a kept
word. An instrumental song thus gets no vocal segment, no words and no language.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.analysis.lyrics.transcriber import HeardPhrase, Transcription
from services.common import envs
from services.common.artifacts import Lyrics, LyricWord, Segment, Segmentation, SegmentLyrics
from services.common.errors import InvalidInputError

# Measured (bench/LISTENING.md) on 12 instrumental songs and 6 with a voice: every phrase Whisper wrote
# over music alone had a no-speech probability of 0.60 or more (29 of 29), every one over a voice 0.40 or
# less (21 of 21); the threshold is the middle of that gap. Over a voice, phrases whose words had a mean
# probability under 0.5 were wrong (the words garbled), and those over 0.55 mostly right; over music
# alone, invented phrases reached 0.62, which the no-speech threshold drops.
NO_SPEECH_MAX = 0.5
WORD_PROBABILITY_MIN = 0.5
NOTHING_HEARD = 1.0  # a segment's no_speech where the model wrote nothing at all
# What Whisper writes over sound that is not speech, learnt from subtitled videos: a phrase that is one of
# these and nothing else is not taken as sung. Over a recorded instrumental (asc-music's time_to_strike),
# "Thank you very much." came with a no-speech probability of 0.44 and words at 0.53, within the
# thresholds; a sung "thank you" inside a longer line stays.
STOCK_PHRASES = frozenset(tuple(p.split()) for p in (
    "you", "thank you", "thank you very much", "thank you so much", "thanks for watching",
    "thank you for watching", "please subscribe", "subscribe to my channel", "bye", "bye bye", "music",
    "applause", "see you in the next video", "we will see you in the next video", "see you next time"))
# What Whisper writes for music rather than words: notes, and annotations in brackets ("[Music]").
_ANNOTATION = re.compile(r"^[\[(*♪].*[\])*♪]$")
_HAS_LETTER = re.compile(r"[^\W_]")


@dataclass(frozen=True)
class GatherThresholds:
    no_speech_max: float = NO_SPEECH_MAX  # MVGEN_LYRICS_NO_SPEECH_MAX
    word_probability_min: float = WORD_PROBABILITY_MIN  # MVGEN_LYRICS_WORD_PROBABILITY_MIN

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatherThresholds:
        """The defaults were measured on speech over synthesized music; real singing may need others."""
        thresholds = cls(envs.get("MVGEN_LYRICS_NO_SPEECH_MAX", environ, default=NO_SPEECH_MAX),
                         envs.get("MVGEN_LYRICS_WORD_PROBABILITY_MIN", environ, default=WORD_PROBABILITY_MIN))
        if not (0 <= thresholds.no_speech_max <= 1 and 0 <= thresholds.word_probability_min <= 1):
            raise InvalidInputError("MVGEN_LYRICS_NO_SPEECH_MAX and MVGEN_LYRICS_WORD_PROBABILITY_MIN are "
                                    "probabilities, from 0 to 1")
        return thresholds

    def sung(self, phrase: HeardPhrase) -> bool:
        return phrase.no_speech <= self.no_speech_max and phrase.word_probability >= self.word_probability_min

    def kept(self, phrases: Iterable[HeardPhrase]) -> list[HeardPhrase]:
        """The phrases taken as sung: voiced and sure, not a stock phrase (STOCK_PHRASES), and not a copy of
        a phrase of its window judged not sung: Whisper copies its own unsure text over the music after
        it, and the copy reads sure (measured: 0.81 over music alone, after the same words at 0.38 over
        a quiet voice)."""
        kept, unsure = [], set()
        for phrase in phrases:
            words = tuple(w for w in (_comparable(x.text) for x in phrase.words) if w)
            if self.sung(phrase) and (phrase.window, words) not in unsure and words not in STOCK_PHRASES:
                kept.append(phrase)
            else:
                unsure.add((phrase.window, words))
        return kept


def _comparable(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum() or ch == "'").strip("'")


def lyric_text(raw: str) -> str:
    """A word as lyrics.json keeps it: stripped, or '' for what is no word (a note sign, '[Music]', '...')."""
    text = raw.strip()
    if not _HAS_LETTER.search(text) or "♪" in text or _ANNOTATION.match(text):
        return ""
    return text


def lyrics_from_transcription(heard: Transcription, segmentation: Segmentation,
                              thresholds: GatherThresholds = GatherThresholds()) -> Lyrics:
    segments = segmentation.segments
    kept = thresholds.kept(heard.phrases)
    words: list[list[LyricWord]] = [[] for _ in segments]
    for phrase in kept:
        for word in phrase.words:
            text = lyric_text(word.text)
            if text:
                words[segment_at(segments, (word.start + word.end) / 2)].append(
                    LyricWord(text, word.start, word.end, word.probability))
    out = [SegmentLyrics(s.index, s.start, s.end, bool(ws), ws, _no_speech(heard.phrases, s))
           for s, ws in zip(segments, words)]
    vocal = sum(1 for s in out if s.vocal)
    dropped = len(heard.phrases) - len(kept)
    note = (f"{heard.model} (read as {heard.language}, detected at {heard.language_probability:.2f}): "
            f"{vocal} of {len(out)} segments sung; "
            f"{dropped} of {len(heard.phrases)} phrases dropped as not sung "
            f"(no-speech probability over {thresholds.no_speech_max} or word probability under "
            f"{thresholds.word_probability_min}); no_speech {NOTHING_HEARD} where nothing was heard")
    return Lyrics(source=heard.model, language=heard.language if vocal else "", segments=out, note=note)


def segment_at(segments: Sequence[Segment], t: float) -> int:
    """The position in `segments` of the one holding time `t` (the first or last one past either end)."""
    for position, segment in enumerate(segments):
        if t < segment.end:
            return position
    return len(segments) - 1


def _no_speech(phrases: Sequence[HeardPhrase], segment: Segment) -> float:
    """The no-speech probability of the phrases over `segment`, weighted by how much of it each covers."""
    total = weight = 0.0
    for phrase in phrases:
        overlap = min(phrase.end, segment.end) - max(phrase.start, segment.start)
        if overlap > 0:
            total += overlap * phrase.no_speech
            weight += overlap
    return total / weight if weight else NOTHING_HEARD
