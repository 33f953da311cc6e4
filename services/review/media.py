"""What the review reads from the media: the final video decoded once, small, clip by clip; its audio
against the song's; each clip file's frame count.

The final video holds every clip at its exact frames in order (the assembler's rule), so one decode of
it serves every clip: its frames [first, first + frame_count) are clip i's. The per-frame measures are
ffmpeg's own definitions where ffmpeg has a detector (blackdetect, freezedetect), so that a figure here
means what it means to an editor who runs those filters.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import signal

from services.common import audio, ffmpeg
from services.common.errors import InvalidInputError, StageFailedError

DECODE_HEIGHT = 144  # rows of the sampled frames: enough for the image model (224 px, upscaled) and a strip
# Every frame is measured on every MEASURE_BLOCK-th pixel of each row and column: blackness, flatness and
# change are properties of the whole picture, and the measures then cost little next to the decode.
MEASURE_BLOCK = 4
CHUNK_FRAMES = 128
SAMPLES_PER_CLIP = 4  # frames kept per clip, evenly spread: image features and the storyboard strip
# blackdetect's defaults: a pixel is black below 10% luma; a frame is black when 98% of its pixels are.
BLACK_PIXEL_LUMA = 0.10
BLACK_PICTURE_SHARE = 0.98
# freezedetect's default noise tolerance, -60 dB: a mean absolute change below 0.1% of full scale.
FROZEN_DIFFERENCE = 10 ** (-60 / 20)
# A flat frame holds one colour: its pixels spread no more than 8-bit quantisation and coding noise (2 levels).
FLAT_SPREAD = 2 / 255
AUDIO_RATE = 8000  # Hz: alignment to an eighth of a millisecond is plenty against a frame of 40 ms
MAX_AUDIO_LAG_SECONDS = 0.5
LAG_WINDOW_SECONDS = 30
PROBE_WORKERS = 4
AAC_FRAME_SAMPLES = 1024


@dataclass
class ClipPicture:
    """One clip as the final video shows it."""

    index: int
    frames: int  # decoded from the final video for this clip
    black_share: float  # frames that are black (blackdetect's rule)
    flat_share: float  # frames of one colour
    still_share: float  # consecutive frame pairs that do not change (freezedetect's tolerance)
    pixel_motion: float  # mean absolute luma change between consecutive frames, 0..1
    samples: list[np.ndarray] = field(default_factory=list)  # SAMPLES_PER_CLIP RGB frames, DECODE_HEIGHT rows

    @property
    def black(self) -> bool:
        return self.frames > 0 and self.black_share >= 0.5

    @property
    def flat(self) -> bool:
        return self.frames > 0 and self.flat_share >= 0.5 and not self.black

    @property
    def frozen(self) -> bool:
        """No frame of it moves: a still image held (flat and black clips are also still; they are said first)."""
        return self.frames > 1 and self.still_share >= 1.0


@dataclass(frozen=True)
class AudioMatch:
    """The final video's soundtrack against the song: where it lines up and how alike it is there."""

    offset_ms: float  # the video's audio lags the song by this much (negative: it leads)
    correlation: float  # of the two waveforms at that offset, -1..1 (the AAC encode keeps it near 1)
    duration_difference_ms: float  # the video's audio minus the song
    # An AAC stream ends on a whole frame of 1024 samples, so its decode may run this much past the song.
    padding_ms: float = 0.0


def decode_clips(video: Path, frame_counts: Sequence[int], aspect: float) -> list[ClipPicture]:
    """Decode `video` once at DECODE_HEIGHT rows and measure each clip's frames; `aspect`: width / height.
    Every frame is measured (shrunk to MEASURE_SIZE, whole chunks at a time); SAMPLES_PER_CLIP frames per clip
    are kept for the image model and the storyboard."""
    counts = np.asarray(frame_counts, int)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    wanted = {int(start + count * (j + 0.5) / SAMPLES_PER_CLIP): clip
              for clip, (start, count) in enumerate(zip(starts, counts)) for j in range(SAMPLES_PER_CLIP) if count > 0}
    height = DECODE_HEIGHT
    width = max(MEASURE_BLOCK, int(round(height * aspect / MEASURE_BLOCK)) * MEASURE_BLOCK)
    cmd = [ffmpeg.binary("ffmpeg"), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(video),
           "-map", "0:v:0", "-vf", f"scale={width}:{height}:flags=area,format=rgb24", "-f", "rawvideo", "pipe:1"]
    measures = _Measures(counts)
    samples: dict[int, list[np.ndarray]] = {}
    frame_bytes = width * height * 3
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None
        while True:
            raw = process.stdout.read(frame_bytes * CHUNK_FRAMES)
            usable = len(raw) - len(raw) % frame_bytes
            if usable:
                chunk = np.frombuffer(raw[:usable], np.uint8).reshape(-1, height, width, 3)
                first = measures.position
                for n in range(first, first + len(chunk)):
                    if n in wanted:
                        samples.setdefault(wanted[n], []).append(chunk[n - first].copy())
                measures.add(chunk)
            if len(raw) < frame_bytes * CHUNK_FRAMES:
                break
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        if process.wait() != 0:
            raise InvalidInputError(f"{video.name} cannot be decoded: {stderr.strip()[-300:]}")
    pictures = measures.pictures()
    for clip, frames in samples.items():
        pictures[clip].samples = frames
    return pictures


class _Measures:
    """Per-clip sums of the per-frame measures, chunk by chunk (numpy over whole chunks, not frame by frame)."""

    def __init__(self, counts: np.ndarray):
        self.ends = np.cumsum(counts)
        n = len(counts)
        self.frames = np.zeros(n, int)
        self.black = np.zeros(n, int)
        self.flat = np.zeros(n, int)
        self.still = np.zeros(n, int)
        self.pairs = np.zeros(n, int)
        self.motion = np.zeros(n, float)
        self.position = 0
        self.previous: np.ndarray | None = None  # the last frame's luma, and its clip
        self._previous_clip = -1

    def add(self, chunk: np.ndarray) -> None:
        b = MEASURE_BLOCK
        rgb = chunk[:, b // 2::b, b // 2::b].astype(np.float32) / 255.0
        luma = rgb @ np.array([0.2126, 0.7152, 0.0722], np.float32)  # BT.709, as the clips are tagged
        count = luma.shape[0]
        clip = np.searchsorted(self.ends, np.arange(self.position, self.position + count), side="right")
        keep = clip < len(self.ends)  # frames past the segments' end (none in an exact video) count nowhere
        black = (luma < BLACK_PIXEL_LUMA).reshape(count, -1).mean(axis=1) >= BLACK_PICTURE_SHARE
        flat = rgb.reshape(count, -1, 3).std(axis=1).max(axis=1) <= FLAT_SPREAD
        np.add.at(self.frames, clip[keep], 1)
        np.add.at(self.black, clip[keep], black[keep])
        np.add.at(self.flat, clip[keep], flat[keep])
        # Pairs of consecutive frames inside one clip: the chunk's, and the one across the chunk's start.
        lumas = luma if self.previous is None else np.concatenate([self.previous[None], luma])
        owners = clip if self.previous is None else np.concatenate([[self._previous_clip], clip])
        change = np.abs(np.diff(lumas, axis=0)).reshape(len(lumas) - 1, -1).mean(axis=1)
        same = (owners[1:] == owners[:-1]) & (owners[1:] < len(self.ends))
        np.add.at(self.pairs, owners[1:][same], 1)
        np.add.at(self.still, owners[1:][same], change[same] < FROZEN_DIFFERENCE)
        np.add.at(self.motion, owners[1:][same], change[same])
        self.previous, self._previous_clip = luma[-1], clip[-1]
        self.position += count

    def pictures(self) -> list[ClipPicture]:
        return [ClipPicture(index=i, frames=int(self.frames[i]), black_share=self.black[i] / max(1, self.frames[i]),
                            flat_share=self.flat[i] / max(1, self.frames[i]),
                            still_share=self.still[i] / max(1, self.pairs[i]),
                            pixel_motion=float(self.motion[i] / max(1, self.pairs[i])))
                for i in range(len(self.frames))]


def song_samples(song: Path) -> np.ndarray:
    """The song, mono at AUDIO_RATE: what the soundtrack is compared with and the waveform is drawn from."""
    return audio.decode(song, AUDIO_RATE)


def audio_match(reference: np.ndarray, video: Path) -> AudioMatch:
    """Line the video's soundtrack up against the song's samples (song_samples), by cross-correlation
    within ±MAX_AUDIO_LAG_SECONDS."""
    try:
        heard = audio.decode(video, AUDIO_RATE)
    except InvalidInputError as exc:
        raise InvalidInputError(f"the final video's audio cannot be read: {exc}") from exc
    if heard.size == 0 or reference.size == 0:
        return AudioMatch(offset_ms=0.0, correlation=0.0,
                          duration_difference_ms=(heard.size - reference.size) / AUDIO_RATE * 1000)
    n = min(reference.size, heard.size)
    a, b = reference[:n] - reference[:n].mean(), heard[:n] - heard[:n].mean()
    # The lag is found on a window of the song against the soundtrack around it (±MAX_AUDIO_LAG_SECONDS): a
    # full cross-correlation of a 15-minute song takes FFTs of 2^24 points, hundreds of MB.
    reach = min(int(MAX_AUDIO_LAG_SECONDS * AUDIO_RATE), (n - 1) // 3)  # a short song: smaller lags, a window left
    width = min(n - 2 * reach, LAG_WINDOW_SECONDS * AUDIO_RATE)
    start = (n - width) // 2  # at least `reach` from either end
    xcorr = signal.correlate(b[start - reach:start + width + reach], a[start:start + width], mode="valid",
                             method="fft")
    lag = int(np.argmax(xcorr)) - reach
    shifted_a, shifted_b = (a[:n - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[:n + lag])
    norm = float(np.linalg.norm(shifted_a) * np.linalg.norm(shifted_b))
    correlation = float(np.dot(shifted_a, shifted_b) / norm) if norm > 0 else 0.0
    return AudioMatch(offset_ms=lag / AUDIO_RATE * 1000, correlation=correlation,
                      duration_difference_ms=(heard.size - reference.size) / AUDIO_RATE * 1000,
                      padding_ms=AAC_FRAME_SAMPLES / _audio_rate(video) * 1000)


def _audio_rate(video: Path) -> int:
    """The sample rate of the video's first audio stream (the assembler keeps the song's, up to 48 kHz)."""
    try:
        raw = ffmpeg.run("ffprobe", ["-select_streams", "a:0", "-show_entries", "stream=sample_rate",
                                     "-of", "json", str(video)], timeout=60)
        return int((json.loads(raw).get("streams") or [{}])[0].get("sample_rate") or 48000)
    except (StageFailedError, ValueError):
        return 48000


def video_size(video: Path) -> tuple[int, int]:
    """Width and height of the video's first video stream."""
    try:
        raw = ffmpeg.run("ffprobe", ["-select_streams", "v:0", "-show_entries", "stream=width,height",
                                     "-of", "json", str(video)], timeout=60)
    except StageFailedError as exc:
        raise InvalidInputError(f"{video.name} is not a readable video: {exc}") from exc
    streams = json.loads(raw).get("streams") or []
    if not streams or not streams[0].get("width") or not streams[0].get("height"):
        raise InvalidInputError(f"{video.name} holds no video stream")
    return int(streams[0]["width"]), int(streams[0]["height"])


def clip_frame_counts(clips: Sequence[Path]) -> list[int | None]:
    """Each clip file's video frames, as its container says (None: unreadable or not said). Read from the mp4's
    own sample table (no process per clip: a 7-minute song has a hundred clips); ffprobe where that fails."""
    counts = [mp4_video_frames(clip) for clip in clips]
    unknown = [i for i, n in enumerate(counts) if n is None]
    if unknown:
        with ThreadPoolExecutor(PROBE_WORKERS) as pool:
            for i, n in zip(unknown, pool.map(_frames_of, [clips[i] for i in unknown])):
                counts[i] = n
    return counts


_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


def mp4_video_frames(path: Path) -> int | None:
    """The sample count of the first video track's sample size table (stsz) of an mp4; None if not found."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return _find_video_samples(data, 0, len(data), b"")


def _find_video_samples(data: bytes, start: int, end: int, handler: bytes) -> int | None:
    """Walk the boxes in [start, end); `handler`: the track's handler type, once its mdia/hdlr has been read."""
    position = start
    while position + 8 <= end:
        size = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        header = 8
        if size == 1:
            size, header = int.from_bytes(data[position + 8:position + 16], "big"), 16
        elif size == 0:
            size = end - position
        if size < header or position + size > end:
            return None
        body = position + header
        if kind == b"hdlr":
            handler = data[body + 8:body + 12]
        elif kind == b"stsz" and handler == b"vide":
            return int.from_bytes(data[body + 8:body + 12], "big")
        elif kind in _CONTAINERS:
            found = _find_video_samples(data, body, position + size, handler)
            if found is not None:
                return found
        position += size
    return None


def _frames_of(clip: Path) -> int | None:
    try:
        raw = ffmpeg.run("ffprobe", ["-select_streams", "v:0", "-show_entries", "stream=nb_frames",
                                     "-of", "json", str(clip)], timeout=60)
    except StageFailedError:
        return None
    streams = json.loads(raw).get("streams") or [{}]
    value = streams[0].get("nb_frames")
    return int(value) if isinstance(value, str) and value.isdigit() else None
