"""The `whisper` lyrics transcriber's speed on this machine's CPU, for `make bench` (bench/run.py calls
`lyrics_rows`).

Whisper base (int8, CTranslate2) runs through the analysis stage's lyrics step (decode at 16 kHz,
transcribe, keep the sung phrases, write lyrics.json) on the rules segmenter's segments, beside the
descriptors analyser measured in the same call on the same song, so that both read as seconds per
minute of audio. Twice: on the benchmark song as given (instrumental: Whisper's invented phrases
are decoded again at higher temperatures before they are dropped, which costs time), and on the same
music with a voice saying a sentence every few seconds (tools/sung_song), where it writes words.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import soundfile

from services.analysis.lyrics.listening import write_lyrics
from services.analysis.lyrics.whisper import WhisperTranscriber
from services.analysis.stage import AnalysisStage
from services.common.artifacts import Segmentation
from services.common.stage_api import AnalyzeRequest
from services.common.store import LocalArtifactStore
from bench.songs import Row, run_alone, segmented_song
from bench.timing import best_of
from tools.sung_song import LINES, sung_song
from tools.synth_song import RING_OUT_SECONDS

SENTENCE_EVERY_SECONDS = 8.0  # a voice about half the time, as in a song with verses and breaks


def lyrics_rows(song_path: Path, minutes: float) -> list[Row]:
    """Seconds per minute of audio of the whisper lyrics step (on the song, and on it with a voice) and of
    the descriptors analyser on the same song."""
    with tempfile.TemporaryDirectory(prefix="mvgen-lyrics-bench-") as scratch:
        work = Path(scratch)
        store = LocalArtifactStore(work / "store")
        song_key = segmented_song(song_path, store)
        segments = Segmentation.from_dict(json.loads(store.get_text("segments.json")))

        stage = AnalysisStage(store, enabled=("descriptors", "whisper"))
        stage.load()
        descriptors_s = best_of(3, lambda: stage.run(
            AnalyzeRequest(song_key=song_key, segments_key="segments.json", analyzer="descriptors",
                           labels_key="labels.json")))
        transcriber = stage.transcribers.get("whisper")

        def lyrics_of(key: str) -> None:
            write_lyrics(store, AnalyzeRequest(song_key=key, segments_key="segments.json", analyzer="descriptors",
                                               labels_key="labels.json", transcriber="whisper",
                                               lyrics_key=f"{key}.lyrics.json"),
                         segments, transcriber)

        instrumental_s = best_of(1, lambda: lyrics_of(song_key))
        sung_key = _sung_version(song_path, minutes, store, work)
        sung_s = best_of(1, lambda: lyrics_of(sung_key))
        assert isinstance(transcriber, WhisperTranscriber) and transcriber.settings is not None  # loaded
        settings = transcriber.settings

    what = (f"lyrics (whisper base, int8, {settings.threads} threads, beam {settings.beam_size}) on CPU, "
            f"s per min of audio")
    return [
        (f"{what}: the song", instrumental_s / minutes, "analysis (descriptors)", descriptors_s / minutes),
        (f"{what}: with a voice {SENTENCE_EVERY_SECONDS:g} s apart", sung_s / minutes,
         "analysis (descriptors)", descriptors_s / minutes),
    ]


def _sung_version(song_path: Path, minutes: float, store: LocalArtifactStore, work: Path) -> str:
    """The benchmark's music (tools/synth_song, seed 1, as bench/run.py renders it) with sentences said over it."""
    seconds = minutes * 60
    starts = [1.0 + SENTENCE_EVERY_SECONDS * i for i in range(int((seconds - 8.0) // SENTENCE_EVERY_SECONDS))]
    lines = [(start, LINES[i % len(LINES)]) for i, start in enumerate(starts)]
    music_seconds = soundfile.info(str(song_path)).duration - RING_OUT_SECONDS  # the length render_song was asked
    audio, truth, _ = sung_song(music_seconds, lines, seed=1)
    soundfile.write(str(work / "sung.wav"), audio, truth.sample_rate, subtype="PCM_16")
    store.put_file("sung.wav", work / "sung.wav")
    return "sung.wav"


if __name__ == "__main__":
    run_alone(lyrics_rows, __doc__.splitlines()[0])
