"""What the review reads from the media, on files made here with the real assembler and ffmpeg: each clip's
frames from the mp4's own sample table, the soundtrack lined up against the song (at a low sample rate, where
AAC's last frame of padding is longer than a video frame), and every frame measured once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from services.assembly.stage import AssemblyStage
from services.common import encoding
from services.common.stage_api import AssembleRequest
from services.common.store import LocalArtifactStore
from services.review import media
from services.review.evaluate import _video_figures
from tests.media import counted_frames

FPS = 12
SIZE = (64, 36)


def clip(path: Path, frames: int, colour: tuple[int, int, int], moving: bool = False) -> None:
    with encoding.RawVideoEncoder(path, *SIZE, FPS) as encoder:
        for n in range(frames):
            frame = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
            frame[:] = colour
            if moving:
                frame[:, (n * 3) % SIZE[0]:(n * 3) % SIZE[0] + 8] = 255
            encoder.write(frame)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 3.95 s song at 22.05 kHz under three clips (16, 16, 15 frames): black, a flat grey, a moving bar. Its
    length is 10 samples past a whole AAC frame, so the soundtrack's last frame is nearly all padding (46 ms,
    more than a frame of video at 24 fps)."""
    work = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    n = 85 * 1024 + 10
    song = 0.2 * np.sin(2 * np.pi * 220 * np.arange(n) / 22050) + 0.05 * rng.standard_normal(n)
    soundfile.write(work / "song.wav", song.astype(np.float32), 22050)
    clip(work / "0.mp4", 16, (0, 0, 0))
    clip(work / "1.mp4", 16, (128, 128, 128))
    clip(work / "2.mp4", 15, (40, 80, 160), moving=True)
    AssemblyStage(LocalArtifactStore(work)).run(AssembleRequest(
        song_key="song.wav", clip_keys=["0.mp4", "1.mp4", "2.mp4"], frame_counts=[16, 16, 15], fps=FPS,
        width=SIZE[0], height=SIZE[1], video_key="final.mp4"))
    return work


def test_frames_are_read_from_the_sample_table(video):
    assert media.clip_frame_counts([video / "0.mp4", video / "final.mp4"]) == [16, counted_frames(video / "final.mp4")]
    assert media.mp4_video_frames(video / "song.wav") is None  # not an mp4: ffprobe's turn


def test_each_clip_is_measured_from_one_decode(video):
    black, grey, moving = media.decode_clips(video / "final.mp4", [16, 16, 15], SIZE[0] / SIZE[1])
    assert (black.frames, grey.frames, moving.frames) == (16, 16, 15)
    assert black.black and not black.flat  # black is said first
    assert grey.flat and grey.frozen and not grey.black
    assert not (moving.black or moving.flat or moving.frozen) and moving.pixel_motion > 0.01
    assert all(len(c.samples) == media.SAMPLES_PER_CLIP for c in (black, grey, moving))


def test_the_soundtrack_is_the_song_at_a_low_sample_rate(video):
    match = media.audio_match(media.song_samples(video / "song.wav"), video / "final.mp4")
    assert match.offset_ms == 0 and match.correlation > 0.99
    assert match.padding_ms == pytest.approx(1024 / 22050 * 1000)
    assert match.duration_difference_ms > 1000 / 24  # the padding, longer than a frame
    figures = {f.key: f.value for f in _video_figures_for(match)}
    assert figures["video.audio_is_song"] is True


def test_a_soundtrack_late_by_200_ms_is_not_the_song(video, tmp_path):
    samples, rate = soundfile.read(video / "song.wav")
    late = np.concatenate([np.zeros(int(0.2 * rate)), samples])[: samples.size]
    soundfile.write(tmp_path / "late.wav", late.astype(np.float32), rate)
    match = media.audio_match(media.song_samples(tmp_path / "late.wav"), video / "final.mp4")
    assert match.offset_ms == pytest.approx(-200, abs=1)  # the video's soundtrack leads this song
    assert {f.key: f.value for f in _video_figures_for(match)}["video.audio_is_song"] is False


def _video_figures_for(match: media.AudioMatch):
    """The video figures at 24 fps, whose frame (41.7 ms) is shorter than an AAC frame at 22.05 kHz (46.4 ms)."""
    from services.review.evaluate import ReviewInputs

    inputs = ReviewInputs(segmentation=None, script=None, labels=None, lyrics=None,  # type: ignore[arg-type]
                          generator="animatic", fps=24, frame_counts=[16, 16, 15], clip_frames=[16, 16, 15],
                          pictures=[], video_frames=47, audio=match)
    return _video_figures(inputs, {})
