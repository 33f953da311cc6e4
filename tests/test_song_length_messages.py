"""What a refused song is told, with real ffmpeg: the real length or "longer than", never a length
equal to the limit it breaks; one rule for every format at the 1 s minimum; and a file that is all
headers is said to hold no audio, not to be empty."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from services.common import audio
from services.common.errors import InvalidInputError
from tests.media import tone

FORMATS = ("song.wav", "song.flac", "song.mp3", "song.ogg", "song.m4a", "song.opus")


def refusal(path: Path, max_seconds: float = 60) -> str:
    with pytest.raises(InvalidInputError) as refused:
        audio.ingest(path, path.parent, max_seconds=max_seconds)
    return str(refused.value)


def quiet_wav(path: Path, seconds: float, rate: int = 8000) -> Path:
    soundfile.write(path, np.zeros(round(seconds * rate), dtype="int16"), rate, subtype="PCM_16")
    return path


@pytest.mark.parametrize("minutes, says", [(16, "the song is 16 min long; the maximum is 15 min"),
                                           (20, "the song is 20 min long; the maximum is 15 min")])
def test_a_song_over_the_limit_is_told_its_real_length(tmp_path, minutes, says):
    # Under 1.5 times the limit, so the samples are decoded (up to the limit and a second) and judged.
    message = refusal(quiet_wav(tmp_path / "long.wav", minutes * 60), max_seconds=900)
    assert message.endswith(says), message


def test_a_song_just_over_the_limit_or_of_unknown_length_is_said_to_be_longer(tmp_path):
    # 15 min 0.4 s cannot be told apart from 15 min at this precision: "longer than", not "15 min long".
    assert refusal(quiet_wav(tmp_path / "just-over.wav", 900.4), max_seconds=900).endswith(
        "the song is longer than 15 min, the maximum")
    # A stream without a duration in its header (raw ADTS AAC from a pipe): only the samples know,
    # and decoding stops a second past the limit.
    adts = tmp_path / "no-header.aac"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=200",
                    "-c:a", "aac", "-b:a", "16k", "-f", "adts", "pipe:1"], check=True, stdout=adts.open("wb"))
    message = refusal(adts, max_seconds=120)
    assert "the maximum" in message and "2 min long" not in message and "2.0 min" not in message, message


@pytest.mark.parametrize("name", FORMATS)
def test_one_second_passes_in_every_format_and_a_shorter_song_is_told_a_length_under_one_second(tmp_path, name):
    info = audio.probe(tone(tmp_path / name, 1.0), max_seconds=60)
    assert info.duration == pytest.approx(1.0, abs=0.05), name
    message = refusal(tone(tmp_path / f"short-{name}", 0.8))
    shown = float(re.search(r"the audio is ([0-9.]+) s long; at least 1 s is needed", message).group(1))
    assert shown < 1.0, message


def test_a_file_of_headers_without_audio_is_said_to_hold_no_audio(tmp_path):
    for name in ("headers-only.ogg", "headers-only.wav", "headers-only.flac"):
        path = tmp_path / name
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", "-t", "0",
                        *(["-c:a", "libvorbis"] if name.endswith(".ogg") else []), str(path)], check=True)
        assert path.stat().st_size > 0
        message = refusal(path)
        assert message.startswith(f"{path}: the file holds no audio"), message
