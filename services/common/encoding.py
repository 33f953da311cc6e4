"""The one H.264 encoding that every clip and the final video share.

The assembler concatenates clips by stream copy only when their codec parameters (SPS/PPS,
size, pixel format, time base) are identical, so every encoder in the project — the animatic,
the GPU backends and the assembler's normaliser — takes its arguments from here.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import numpy as np

from services.common import ffmpeg
from services.common.errors import StageFailedError

VIDEO_CODEC = "libx264"
PIX_FMT = "yuv420p"
PRESET = "veryfast"  # ~250-300 frames/s at 640x360 on 2 cores; slower presets cost more time than they add
CRF = 20
GOP_SECONDS = 2
AUDIO_CODEC = "aac"
AUDIO_BITRATE = "192k"
TICKS_PER_FRAME = 1000  # mp4 track timescale = fps * 1000, so every frame lasts a whole number of ticks
MAX_FPS = 120  # the highest rate a clip or the final video may have
MAX_SIDE = 4096  # the largest width or height a clip or the final video may have


# Options of ffmpeg's scale filter that convert RGB or any YUV to BT.709 limited range, which the
# encoder arguments below tag, so that players show the intended colours.
COLOUR_CONVERSION = "out_color_matrix=bt709:out_range=tv"
# Every filter chain ends in square pixels: the pixel aspect is written into the stream headers,
# and headers must be identical for clips to join by copy.
RGB_TO_YUV_FILTER = f"scale={COLOUR_CONVERSION},format={PIX_FMT},setsar=1"


def format_problems(fps: int, width: int, height: int) -> list[str]:
    """What is wrong with a video format this encoding is asked for (empty when it is fine)."""
    problems = []
    if not 0 < fps <= MAX_FPS:
        problems.append(f"fps must be between 1 and {MAX_FPS} (got {fps})")
    for side, value in (("width", width), ("height", height)):
        if not 16 <= value <= MAX_SIDE or value % 2:
            problems.append(f"{side} must be even and between 16 and {MAX_SIDE} for yuv420p video (got {value})")
    return problems


def track_timescale(fps: int) -> int:
    return fps * TICKS_PER_FRAME


def h264_encoder_args(fps: int) -> list[str]:
    """libx264 arguments for a stream at `fps` that joins any other stream made with them by copy."""
    return [
        "-c:v", VIDEO_CODEC, "-preset", PRESET, "-crf", str(CRF), "-pix_fmt", PIX_FMT,
        "-g", str(GOP_SECONDS * fps),
        # stitchable: headers (SPS/PPS) that do not depend on the content, so clips encoded apart share
        # them. No B-frames: every clip then starts with dts == pts, and the concat demuxer keeps the
        # timestamps of clips of any length (1 frame included) monotonic.
        "-x264-params", "stitchable=1:bframes=0",
        "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
    ]


def mp4_muxer_args(fps: int) -> list[str]:
    """mp4 muxer arguments for clips and the final video.

    The movie timescale matches the track's: with the default (1000) a clip's duration is rounded to
    the millisecond, and the concat demuxer, which places each clip after the previous one's
    duration, would drift by up to half a millisecond per clip.
    """
    timescale = str(track_timescale(fps))
    return ["-video_track_timescale", timescale, "-movie_timescale", timescale, "-movflags", "+faststart"]


def missing_encoders(*names: str) -> list[str]:
    """Which of the named ffmpeg encoders (e.g. libx264, aac) this ffmpeg build lacks."""
    listing = ffmpeg.run("ffmpeg", ["-encoders"], timeout=30).decode(errors="replace")
    available = {line.split()[1] for line in listing.splitlines() if len(line.split()) > 1}
    return [name for name in names if name not in available]


class RawVideoEncoder:
    """Encode RGB frames (H×W×3 uint8 arrays) into an mp4 at `out_path` with the shared settings.

    Use as a context manager: on an exception inside the block, ffmpeg is killed and the output
    is left incomplete for the caller's store to discard.
    """

    def __init__(self, out_path: Path, width: int, height: int, fps: int):
        self.width, self.height = width, height
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (ffmpeg writes to it until _finish or _abort closes it)
        cmd = [
            ffmpeg.binary("ffmpeg"), "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0",
            "-vf", RGB_TO_YUV_FILTER, *h264_encoder_args(fps), *mp4_muxer_args(fps), "-f", "mp4", str(out_path),
        ]
        # stderr goes to a file: a pipe nobody reads could fill and block ffmpeg while we write frames.
        self._process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr)

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame is {frame.shape} {frame.dtype}; expected ({self.height}, {self.width}, 3) uint8")
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(np.ascontiguousarray(frame).data)
        except BrokenPipeError:
            self._process.wait()
            raise StageFailedError(f"ffmpeg stopped while encoding: {self._last_words()}") from None

    def _finish(self) -> None:
        """Finish the file; raises StageFailedError if ffmpeg failed."""
        assert self._process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self._process.stdin.close()
        returncode = self._process.wait()
        message = self._last_words()
        self._stderr.close()
        if returncode != 0:
            raise StageFailedError(f"ffmpeg failed (exit {returncode}) while encoding: {message}")

    def _abort(self) -> None:
        assert self._process.stdin is not None
        self._process.kill()
        with contextlib.suppress(BrokenPipeError):
            self._process.stdin.close()
        self._process.wait()
        self._stderr.close()

    def __enter__(self) -> RawVideoEncoder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self._finish()
        else:
            self._abort()

    def _last_words(self) -> str:
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no message"
