"""The video stage's animatic backend, checked with real ffmpeg/ffprobe on synthesized audio."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from services.common.artifacts import Scene, Script, StyleBible, dumps
from services.common.errors import InvalidInputError, JobCancelledError
from services.common.stage_api import GenerateClipRequest
from services.common.store import LocalArtifactStore
from services.common.timing import frame_count
from services.video.animatic import parse_palette
from services.video.stage import VideoStage, clip_meta_key
from tests.media import decode_frames, top_level_boxes

SAMPLE_RATE = 22050
SILENT = (0.0, 2.5)  # the synthesized song: silence ...
ONSETS = (2.5, 5.0)  # ... then noise bursts every 0.25 s over a tone ...
SONG_SECONDS = 7.0  # ... then the tone alone
PALETTE = ["#1b263b", "#e0a458", "#8c2f39", "#4f772d"]


def synth_song(path: Path) -> None:
    t = np.arange(int(SONG_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    y = np.where(t >= ONSETS[0], 0.1 * np.sin(2 * np.pi * 220 * t), 0.0)
    rng = np.random.default_rng(0)
    burst = rng.standard_normal(2000) * np.exp(-np.arange(2000) / 300)
    for onset in np.arange(ONSETS[0], ONSETS[1], 0.25):
        i = int(onset * SAMPLE_RATE)
        y[i:i + burst.size] += 0.7 * burst
    sf.write(path, y.astype(np.float32), SAMPLE_RATE)


def make_script() -> Script:
    style = StyleBible(palette=PALETTE, look="ink wash", lighting="dusk", camera="slow dolly", atmosphere="calm")
    scenes = [
        Scene(0, "A lighthouse keeper climbs the spiral stairs as a storm gathers over a restless grey sea."),
        Scene(1, "Gulls wheel above the harbour."),
        Scene(2, "The lamp turns, and its beam sweeps across the waves and the sleeping town beyond the cliffs."),
    ]
    return Script(writer="test", title="Lighthouse", style=style, characters=[], scenes=scenes)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> LocalArtifactStore:
    root = tmp_path_factory.mktemp("store")
    synth_song(root / "song.wav")
    store = LocalArtifactStore(root)
    store.put_bytes("script.json", dumps(make_script()))
    return store


@pytest.fixture(scope="module")
def stage(store: LocalArtifactStore) -> VideoStage:
    stage = VideoStage(store)
    stage.load()
    assert stage.ready
    return stage


def request(index: int, start: float, end: float, *, fps: int = 24, width: int = 160, height: int = 90,
            key: str | None = None) -> GenerateClipRequest:
    return GenerateClipRequest(
        index=index, song_key="song.wav", script_key="script.json", start=start, end=end,
        frame_count=frame_count(start, end, fps), fps=fps, width=width, height=height, generator="animatic",
        clip_key=key or f"clips/{index:04d}-{start}-{fps}-{width}.mp4", seed=7,
    )


def ffprobe_video(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,pix_fmt,width,height,r_frame_rate,nb_read_frames", "-of", "json", str(path)],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)["streams"][0]


@pytest.mark.parametrize("start, end, fps, width, height", [
    (0.0, 0.03, 24, 160, 90),  # shorter than a frame: rounds to exactly one frame
    (1.013, 2.377, 24, 640, 360),  # fractional boundaries at the default size
    (2.5, 5.0, 30, 320, 180),
])
def test_clip_has_exact_frames_size_rate_and_codec(stage: VideoStage, store: LocalArtifactStore, start: float,
                                                  end: float, fps: int, width: int, height: int) -> None:
    req = request(1, start, end, fps=fps, width=width, height=height)
    assert req.frame_count >= 1

    result = stage.run(req)

    assert result.keys == {"clip": req.clip_key, "clip_meta": clip_meta_key(req.clip_key)}
    stream = ffprobe_video(store.path(req.clip_key))
    assert int(stream["nb_read_frames"]) == req.frame_count
    assert (stream["codec_name"], stream["pix_fmt"]) == ("h264", "yuv420p")
    assert (stream["width"], stream["height"]) == (width, height)
    assert stream["r_frame_rate"] == f"{fps}/1"
    boxes = top_level_boxes(store.path(req.clip_key))
    assert boxes.index("moov") < boxes.index("mdat"), f"not faststart: {boxes}"
    meta = json.loads(store.get_text(result.keys["clip_meta"]))
    assert meta["generator"] == "animatic" and "not AI video" in meta["kind"]
    assert (meta["frames"], meta["fps"], meta["width"], meta["height"], meta["seed"]) == (
        req.frame_count, fps, width, height, 7)
    assert meta["scene_text"] == make_script().scenes[1].text
    assert meta["seconds"] > 0


def test_palette_colours_dominate_the_frame(stage: VideoStage, store: LocalArtifactStore) -> None:
    req = request(0, *SILENT, width=320, height=180)  # silence: no flashes lighten the background
    stage.run(req)

    frame = decode_frames(store.path(req.clip_key), 320, 180)[10].reshape(-1, 3).astype(int)
    palette = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in PALETTE])
    distance = np.linalg.norm(frame[:, None, :] - palette[None, :, :], axis=2)  # pixel × palette colour
    nearest = distance.argmin(axis=1)
    close = distance.min(axis=1) < 20
    assert close.mean() > 0.4, "most of the background should be in the palette's colours"
    shares = np.bincount(nearest[close], minlength=len(PALETTE)) / len(frame)
    assert (shares > 0.02).all(), f"every palette colour should be visible; shares {shares.round(3)}"


def test_palette_entries_that_are_not_hex_colours_are_skipped() -> None:
    assert parse_palette(["#abc", "teal", " #A0B1C2 ", "12345", "#12345g"]) == [(170, 187, 204), (160, 177, 194)]


def test_motion_follows_the_audio(stage: VideoStage, store: LocalArtifactStore) -> None:
    # Same scene, so palette and caption are equal: only the audio differs.
    quiet = request(2, *SILENT, key="motion/quiet.mp4")
    loud = request(2, *ONSETS, key="motion/loud.mp4")
    stage.run(quiet)
    stage.run(loud)

    def mean_change(key: str) -> float:
        frames = decode_frames(store.path(key), 160, 90).astype(np.int16)
        return float(np.abs(np.diff(frames, axis=0)).mean())

    quiet_change, loud_change = mean_change(quiet.clip_key), mean_change(loud.clip_key)
    assert loud_change > 4 * quiet_change, (quiet_change, loud_change)


def test_progress_rises_to_one(stage: VideoStage) -> None:
    fractions: list[float] = []
    stage.run(request(0, 0.0, 2.0, width=64, height=36, key="progress/clip.mp4"), on_progress=fractions.append)

    assert len(fractions) > 10
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0 and fractions.count(1.0) == 1


def test_clips_rendered_in_parallel_threads_equal_serial_ones(stage: VideoStage, store: LocalArtifactStore) -> None:
    # The in-process orchestrator renders clips on several threads of one VideoStage.
    requests = [request(i, start, start + 1.5, width=96, height=54, key=f"parallel/{i}.mp4")
                for i, start in ((0, 0.2), (1, 2.6), (2, 4.1))]
    with ThreadPoolExecutor(len(requests)) as pool:
        list(pool.map(stage.run, requests))
    for req in requests:
        serial = replace(req, clip_key=req.clip_key.replace("parallel", "serial"))
        stage.run(serial)
        assert np.array_equal(decode_frames(store.path(req.clip_key), 96, 54),
                              decode_frames(store.path(serial.clip_key), 96, 54))


def test_cancelling_mid_clip_leaves_nothing_in_the_store(stage: VideoStage, store: LocalArtifactStore) -> None:
    req = request(0, 0.0, 3.0, width=64, height=36, key="cancelled/clip.mp4")
    polls = 0
    fractions: list[float] = []

    def cancel_after_20_frames() -> bool:
        nonlocal polls
        polls += 1
        return polls > 20

    with pytest.raises(JobCancelledError):
        stage.run(req, on_progress=fractions.append, is_cancelled=cancel_after_20_frames)

    assert polls == 21
    assert 0 < fractions[-1] < 1
    assert not store.exists(req.clip_key) and not store.exists(clip_meta_key(req.clip_key))
    assert list((store.root / "cancelled").iterdir()) == []  # no half-written temporary file either


@pytest.mark.parametrize("change, message", [
    ({"frame_count": 0}, "frame_count"),
    ({"width": 161}, "width"),
    ({"height": 0}, "height"),
    ({"fps": 0}, "fps"),
    ({"start": 3.0, "end": 2.0}, "segment"),
    ({"index": 99}, "no scene 99"),
    ({"generator": "nope"}, "video backend .nope. is not enabled"),
    ({"script_key": "nothing.json"}, "no script"),
    ({"song_key": "nothing.wav"}, "no song"),
])
def test_bad_requests_are_refused(stage: VideoStage, store: LocalArtifactStore, change: dict, message: str) -> None:
    req = replace(request(0, 0.0, 1.0, key="refused/clip.mp4"), **change)
    with pytest.raises(InvalidInputError, match=message):
        stage.run(req)
    assert not store.exists(req.clip_key)


def test_unknown_generator_cannot_be_enabled(store: LocalArtifactStore) -> None:
    with pytest.raises(InvalidInputError, match="animatic"):
        VideoStage(store, enabled=("animatic", "sora"))
