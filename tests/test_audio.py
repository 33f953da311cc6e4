"""Probing and decoding: every container we promise, any rate and channel count, bad files refused."""

from __future__ import annotations

import pytest

from services.common import audio
from services.common.errors import InvalidInputError
from tests.media import tone


@pytest.mark.parametrize("name, rate, channels", [
    ("song.mp3", 44100, 2), ("song.wav", 48000, 1), ("song.flac", 96000, 2),
    ("song.ogg", 22050, 1), ("song.m4a", 44100, 2), ("song.wav", 8000, 1), ("surround.flac", 48000, 6),
])
def test_probe_and_decode_every_format(tmp_path, name, rate, channels):
    path = tone(tmp_path / name, 3.0, rate=rate, channels=channels)
    info = audio.probe(path, max_seconds=60)
    assert info.sample_rate == rate
    assert info.channels == channels
    assert info.duration == pytest.approx(3.0, abs=0.06)  # encoder padding of mp3/aac
    samples = audio.decode(path, sample_rate=22050)
    assert samples.dtype.name == "float32" and samples.ndim == 1
    assert samples.size / 22050 == pytest.approx(3.0, abs=0.06)
    assert 0.1 < float(abs(samples).max()) <= 1.0


def test_decode_a_slice(tmp_path):
    path = tone(tmp_path / "song.wav", 5.0)
    part = audio.decode(path, sample_rate=8000, start=1.5, duration=2.0)
    assert part.size == 16000


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"just some text, not audio\n" * 40, "not a readable audio file"),
    (b"PK\x03\x04" + bytes(range(256)) * 40, "not a readable audio file"),
])
def test_bad_files_are_refused(tmp_path, content, message):
    path = tmp_path / "song.mp3"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=message):
        audio.probe(path, max_seconds=60)


def test_too_long_and_too_short(tmp_path):
    with pytest.raises(InvalidInputError, match="maximum is 5.0 s"):
        audio.probe(tone(tmp_path / "long.ogg", 8.0), max_seconds=5)
    with pytest.raises(InvalidInputError, match="at least 1 s"):
        audio.probe(tone(tmp_path / "short.wav", 0.4), max_seconds=5)


def test_a_video_without_audio_is_refused(tmp_path):
    import subprocess

    path = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=duration=2:size=64x64", str(path)],
                   check=True)
    with pytest.raises(InvalidInputError, match="no audio stream"):
        audio.probe(path, max_seconds=60)


def test_nan_samples_are_refused(tmp_path):
    import numpy as np
    import soundfile as sf

    samples = np.sin(np.arange(44100 * 3) / 10).astype("float32")
    samples[1000:1010] = np.nan
    sf.write(tmp_path / "nan.wav", samples, 44100, subtype="FLOAT")
    with pytest.raises(InvalidInputError, match="NaN"):
        audio.probe(tmp_path / "nan.wav", max_seconds=60)
