"""The assembly stage, checked with real ffmpeg/ffprobe: clips + song → one mp4 that never drifts."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from services.assembly.stage import AssemblyStage
from services.common import encoding
from services.common.artifacts import Scene, Script, StyleBible, dumps
from services.common.errors import InvalidInputError
from services.common.stage_api import AssembleRequest, GenerateClipRequest
from services.common.store import LocalArtifactStore
from services.common.timing import frame_at, frame_count
from services.video.stage import VideoStage
from tests.media import decode_frames, top_level_boxes

FPS = 24
WIDTH, HEIGHT = 160, 90
SONG_SECONDS = 6.0
BOUNDARIES = [0.0, 1.3, 2.71, 5.3, 6.0]  # fractional on purpose: frame counts 31, 34, 62, 17


def synth_song(path: Path, seconds: float, sample_rate: int) -> None:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    tone = 0.2 * np.sin(2 * np.pi * 330 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
    sf.write(path, np.stack([tone, tone[::-1]], axis=1).astype(np.float32), sample_rate)


def expected_counts(boundaries: list[float]) -> list[int]:
    return [frame_count(a, b, FPS) for a, b in zip(boundaries, boundaries[1:])]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> LocalArtifactStore:
    root = tmp_path_factory.mktemp("store")
    synth_song(root / "song.flac", SONG_SECONDS, 44100)  # any format ffmpeg decodes
    store = LocalArtifactStore(root)
    style = StyleBible(["#0d3b66", "#faf0ca", "#f4d35e", "#ee964b"], "paper cut-out", "soft", "static", "warm")
    scenes = [Scene(i, f"Scene number {i} unfolds.") for i in range(len(BOUNDARIES) - 1)]
    store.put_bytes("script.json", dumps(Script("test", "T", style, [], scenes)))
    return store


@pytest.fixture(scope="module")
def animatic_clips(store: LocalArtifactStore) -> list[str]:
    video = VideoStage(store)
    keys = []
    for i, (start, end) in enumerate(zip(BOUNDARIES, BOUNDARIES[1:])):
        req = GenerateClipRequest(index=i, song_key="song.flac", script_key="script.json", start=start, end=end,
                                  frame_count=frame_count(start, end, FPS), fps=FPS, width=WIDTH, height=HEIGHT,
                                  generator="animatic", clip_key=f"clips/{i:04d}.mp4")
        keys.append(video.run(req).keys["clip"])
    return keys


@pytest.fixture(scope="module")
def assembly(store: LocalArtifactStore) -> AssemblyStage:
    stage = AssemblyStage(store)
    stage.load()
    assert stage.ready
    return stage


def probe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_type,codec_name,width,height,nb_read_frames:format=duration", "-of", "json", str(path)],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def video_packet_hashes(path: Path) -> list[str]:
    """md5 of every video packet, as stored (no decoding): equal lists mean the bytes were copied."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "framemd5",
                          "-"], check=True, capture_output=True, text=True).stdout
    return [line.rsplit(",", 1)[1].strip() for line in out.splitlines() if line and not line.startswith("#")]


def check_final_video(path: Path, frames: int, song_seconds: float) -> dict:
    info = probe(path)
    kinds = sorted((s["codec_type"], s["codec_name"]) for s in info["streams"])
    assert kinds == [("audio", "aac"), ("video", "h264")]
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert int(video["nb_read_frames"]) == frames
    assert abs(float(info["format"]["duration"]) - song_seconds) <= 1 / FPS
    boxes = top_level_boxes(path)
    assert boxes.index("moov") < boxes.index("mdat"), f"not faststart: {boxes}"
    return video


def test_matching_clips_are_joined_by_stream_copy(store: LocalArtifactStore, animatic_clips: list[str],
                                                  assembly: AssemblyStage) -> None:
    counts = expected_counts(BOUNDARIES)
    req = AssembleRequest(song_key="song.flac", clip_keys=animatic_clips, frame_counts=counts, fps=FPS, width=WIDTH,
                          height=HEIGHT, video_key="final/copied.mp4")

    result = assembly.run(req)

    assert result.keys == {"video": "final/copied.mp4"}
    assert result.info["clips_reencoded"] == 0
    assert result.info["frames"] == sum(counts) == frame_at(SONG_SECONDS, FPS)
    final = store.path(req.video_key)
    video = check_final_video(final, sum(counts), SONG_SECONDS)
    assert (video["width"], video["height"]) == (WIDTH, HEIGHT)
    copied = [h for key in animatic_clips for h in video_packet_hashes(store.path(key))]
    assert video_packet_hashes(final) == copied


def test_clips_that_do_not_fit_are_conformed_alone(store: LocalArtifactStore, animatic_clips: list[str],
                                                   assembly: AssemblyStage, tmp_path: Path) -> None:
    counts = expected_counts(BOUNDARIES)
    # Clip 1: the shared encoding but three frames too many.
    video = VideoStage(store)
    start, end = BOUNDARIES[1], BOUNDARIES[2]
    video.run(GenerateClipRequest(index=1, song_key="song.flac", script_key="script.json", start=start, end=end,
                                  frame_count=counts[1] + 3, fps=FPS, width=WIDTH, height=HEIGHT, generator="animatic",
                                  clip_key="odd/long.mp4"))
    # Clip 2: what a GPU model gives: 16 fps, 33 frames, 4:3, another encoder's settings — and shorter
    # (2.06 s) than its 62-frame (2.58 s) segment, so its last frame must be held.
    foreign = tmp_path / "foreign.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=16",
                    "-frames:v", "33", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(foreign)], check=True)
    store.put_file("odd/foreign.mp4", foreign)
    clips = [animatic_clips[0], "odd/long.mp4", "odd/foreign.mp4", animatic_clips[3]]
    req = AssembleRequest(song_key="song.flac", clip_keys=clips, frame_counts=counts, fps=FPS, width=WIDTH,
                          height=HEIGHT, video_key="final/conformed.mp4")

    result = assembly.run(req)

    assert result.info["reencoded_indices"] == [1, 2]
    final = store.path(req.video_key)
    video_info = check_final_video(final, sum(counts), SONG_SECONDS)
    assert (video_info["width"], video_info["height"]) == (WIDTH, HEIGHT)
    hashes = video_packet_hashes(final)
    assert hashes[:counts[0]] == video_packet_hashes(store.path(animatic_clips[0]))  # untouched clips: copied
    assert hashes[-counts[3]:] == video_packet_hashes(store.path(animatic_clips[3]))

    frames = decode_frames(final, WIDTH, HEIGHT).astype(np.int16)
    first, last = sum(counts[:2]), sum(counts[:3])  # clip 2's frames in the video
    picture = frames[first]
    assert picture[:, :15].mean() < 20 and picture[:, -15:].mean() < 20, "4:3 in 16:9 should be pillarboxed"
    assert picture[:, 30:-30].mean() > 60
    # 33 frames at 16 fps fill 49.5 frames at 24 fps; the rest of the 62 hold the last picture.
    assert np.abs(np.diff(frames[first:first + 45], axis=0)).max() > 30, "the test pattern moves"
    assert np.abs(frames[last - 10:last] - frames[last - 1]).max() <= 3, "the last frame is held"


@pytest.mark.slow
def test_many_short_segments_do_not_drift(tmp_path: Path) -> None:
    seconds, clip_count, size = 60.0, 150, 32
    rng = np.random.default_rng(3)
    durations = rng.uniform(0.1, 0.7, clip_count)
    boundaries = [0.0, *np.cumsum(durations / durations.sum() * seconds)[:-1].tolist(), seconds]
    counts = expected_counts(boundaries)
    assert min(counts) >= 1 and sum(counts) == frame_at(seconds, FPS)
    store = LocalArtifactStore(tmp_path)
    synth_song(tmp_path / "song.wav", seconds, 8000)
    # Each clip a flat colour that names it; made in one ffmpeg run with the shared encoding (fast).
    colours = [(20 + (i % 12) * 19, 20 + (i // 12) * 17, 128) for i in range(clip_count)]
    (tmp_path / "clips").mkdir()
    args = ["ffmpeg", "-nostdin", "-v", "error"]
    for (r, g, b), n in zip(colours, counts):
        args += ["-f", "lavfi", "-i",
                 f"color=c=0x{r:02x}{g:02x}{b:02x}:size={size}x{size}:rate={FPS}:d={(n + 0.5) / FPS}"]
    for i, n in enumerate(counts):
        args += ["-map", f"{i}:v", "-frames:v", str(n), "-vf", encoding.RGB_TO_YUV_FILTER,
                 *encoding.h264_encoder_args(FPS), *encoding.mp4_muxer_args(FPS), str(tmp_path / f"clips/{i:04d}.mp4")]
    subprocess.run(args, check=True)
    stage = AssemblyStage(store)
    req = AssembleRequest(song_key="song.wav", clip_keys=[f"clips/{i:04d}.mp4" for i in range(clip_count)],
                          frame_counts=counts, fps=FPS, width=size, height=size, video_key="final.mp4")

    result = stage.run(req)

    assert result.info["clips_reencoded"] == 0
    final = tmp_path / "final.mp4"
    check_final_video(final, sum(counts), seconds)
    # Every frame shows the clip that timing.py assigns to it ...
    shown = decode_frames(final, size, size).reshape(-1, size * size, 3).mean(axis=1)
    owner = np.repeat(np.arange(clip_count), counts)
    assert np.abs(shown - np.array(colours)[owner]).max() < 8
    # ... at the time it should: no timestamp wanders from frame/fps.
    pts = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time",
                          "-of", "csv=p=0", str(final)], check=True, capture_output=True, text=True).stdout.split()
    times = np.sort(np.array(pts, float))
    assert np.abs(times - np.arange(len(times)) / FPS).max() < 0.001


@pytest.mark.parametrize("change, message", [
    ({"frame_counts": [31, 34, 62]}, "4 clips but 3 frame counts"),
    ({"frame_counts": [31, 34, 0, 79]}, "at least 1"),
    ({"frame_counts": [31, 34, 62, 40]}, "the song lasts"),
    ({"clip_keys": ["clips/0000.mp4", "clips/0001.mp4", "clips/none.mp4", "clips/0003.mp4"]}, "clips/none.mp4"),
    ({"song_key": "none.flac"}, "none.flac"),
    ({"fps": 0}, "fps"),
    ({"width": 161}, "width must be even"),
])
def test_bad_requests_are_refused(store: LocalArtifactStore, animatic_clips: list[str], assembly: AssemblyStage,
                                  change: dict, message: str) -> None:
    req = replace(AssembleRequest(song_key="song.flac", clip_keys=animatic_clips,
                                  frame_counts=expected_counts(BOUNDARIES), fps=FPS, width=WIDTH, height=HEIGHT,
                                  video_key="final/refused.mp4"), **change)
    with pytest.raises(InvalidInputError, match=message):
        assembly.run(req)
    assert not store.exists(req.video_key)
