"""The measurements behind the lyrics thresholds (services/analysis/lyrics/gather.py): what Whisper
base hears in synthesized songs, instrumental and with a voice at known times.

Every phrase Whisper writes is listed with its confidences and whether a voice was there (the
phrase overlaps a spoken line): a threshold must keep the voiced phrases and drop the others.
Whisper reads every window here (no window is skipped for its no-speech probability, as the stage
does), so that all it would write is seen; "kept" applies gather.py's thresholds.
Prints a markdown table (bench/LISTENING.md holds one run's). Takes a few minutes on 2 cores.

    python -m bench.lyrics_calibration [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.signal import resample_poly

from services.analysis.lyrics.gather import GatherThresholds, lyrics_from_transcription
from services.analysis.lyrics.whisper import WhisperTranscriber
from services.common.artifacts import Segment, Segmentation
from tools.sung_song import LINES, sung_song
from tools.synth_song import synthesize_song

RATE = 16000


def to_16k_mono(audio: np.ndarray, rate: int) -> np.ndarray:
    return resample_poly(audio.mean(axis=1), RATE, rate).astype(np.float32)


def cases(quick: bool, voices_only: bool = False):
    """(name, 16 kHz mono audio, [(start, end)] of the voice)."""
    seeds = () if voices_only else (0, 1) if quick else (0, 1, 2, 3, 4, 5)
    for seed in seeds:
        for structure, seconds in (("short", 30.0), ("pop", 60.0)):
            music, truth = synthesize_song(seconds, 100.0 + 10 * seed, seed, structure=structure)
            yield f"instrumental {structure} {seconds:.0f} s seed {seed}", to_16k_mono(music, truth.sample_rate), []
    voices = (("en", 0.8), ("en-us+f3", 0.8), ("en", 0.4)) if not quick else (("en", 0.8),)
    for seed, (voice, level) in enumerate(voices):
        step = 28.0 / len(LINES)
        audio, truth, said = sung_song(30.0, [(1.0 + i * step, text) for i, text in enumerate(LINES)],
                                       seed=seed, voice=voice, voice_level=level)
        yield (f"voice {voice} at {level} seed {seed}", to_16k_mono(audio, truth.sample_rate),
               [(line.start, line.end) for line in said])
    if quick:
        return
    # A voice in part of a 30 s window only: Whisper's no-speech probability is one per window, so
    # what it writes over the instrumental rest of that window is judged by its word probability.
    for name, seconds, structure, lines in (
            ("one line, then 25 s of music", 30.0, "short", [(2.0, LINES[0])]),
            ("music until 32 s, then two lines", 60.0, "pop", [(32.0, LINES[1]), (40.0, LINES[2])]),
            ("quiet voice (0.25) in the chorus", 30.0, "short", [(10.0, LINES[3]), (16.0, LINES[0])])):
        level = 0.25 if "quiet" in name else 0.8
        audio, truth, said = sung_song(seconds, lines, seed=7, voice_level=level, structure=structure)
        yield name, to_16k_mono(audio, truth.sample_rate), [(line.start, line.end) for line in said]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two instrumental seeds and one voice")
    parser.add_argument("--voices-only", action="store_true", help="the songs with a voice only")
    args = parser.parse_args()
    transcriber = WhisperTranscriber()
    transcriber.load()
    print("| song | phrase | voice there | no_speech | avg_logprob | word prob | kept | text |")
    print("|---|---|---|---|---|---|---|---|")
    audio_seconds = spent = 0.0
    thresholds = GatherThresholds()
    for name, audio, voiced in cases(args.quick, args.voices_only):
        began = time.perf_counter()
        heard = transcriber.transcribe(audio)
        spent += time.perf_counter() - began
        audio_seconds += audio.size / RATE
        duration = audio.size / RATE
        kept = {id(p) for p in thresholds.kept(heard.phrases)}
        if not heard.phrases:
            print(f"| {name} | - | - | - | - | - | - | (nothing) |")
        for i, phrase in enumerate(heard.phrases):
            there = any(phrase.start < end and start < phrase.end for start, end in voiced)
            print(f"| {name} | {i} ({phrase.start:.1f}-{phrase.end:.1f} s) | {'yes' if there else 'no'} | "
                  f"{phrase.no_speech:.2f} | {phrase.avg_logprob:.2f} | {phrase.word_probability:.2f} | "
                  f"{'yes' if id(phrase) in kept else 'no'} | {phrase.text.strip()[:60]} |")
        segmentation = Segmentation("even", {}, duration, None, [],
                                    [Segment(i, a, min(a + 5.0, duration), "max")
                                     for i, a in enumerate(np.arange(0.0, duration, 5.0))])
        lyrics = lyrics_from_transcription(heard, segmentation, thresholds)
        print(f"| {name} | **result** | {len(voiced)} lines | | | | "
              f"{lyrics.vocal_segments} vocal segments | language {heard.language} "
              f"{heard.language_probability:.2f} |")
    settings = transcriber.settings
    assert settings is not None  # set by load()
    print(f"\nWhisper base, int8, beam {settings.beam_size}, {settings.threads} threads: "
          f"{spent:.1f} s for {audio_seconds:.0f} s of audio = {60 * spent / audio_seconds:.1f} s per minute")


if __name__ == "__main__":
    main()
