"""ffprobe readings that tests assert on."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import numpy as np


def probe_streams(path: str | Path, count_frames: bool = False) -> dict:
    args = ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json"]
    if count_frames:
        args.append("-count_frames")
    out = subprocess.run([*args, str(path)], capture_output=True, check=True, text=True).stdout
    return json.loads(out)


def video_stream(info: dict) -> dict:
    (stream,) = [s for s in info["streams"] if s["codec_type"] == "video"]
    return stream


def audio_stream(info: dict) -> dict:
    (stream,) = [s for s in info["streams"] if s["codec_type"] == "audio"]
    return stream


def counted_frames(path: str | Path) -> int:
    return int(video_stream(probe_streams(path, count_frames=True))["nb_read_frames"])


def tone(path: Path, seconds: float, *, rate: int = 44100, channels: int = 2, extra: list[str] | None = None) -> Path:
    """A sine tone in whatever format `path`'s extension names, made by ffmpeg."""
    layout = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}[channels]
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
         f"sine=frequency=440:sample_rate={rate}:duration={seconds}",
         "-af", f"aformat=channel_layouts={layout}", *(extra or []), str(path)],
        check=True)
    return path


def top_level_boxes(path: Path) -> list[str]:
    """The MP4's top-level box types in file order (faststart puts moov before mdat)."""
    boxes, data, offset = [], path.read_bytes(), 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8:offset + 16])[0]
        boxes.append(kind.decode("latin-1"))
        offset = len(data) if size == 0 else offset + size
    return boxes


def decode_frames(path: Path, width: int, height: int) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)
