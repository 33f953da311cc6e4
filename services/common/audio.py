"""Probing and decoding songs. Every stage reads audio through here, so all agree on what a song is.

ffprobe/ffmpeg decode every container we accept (mp3, wav, flac, ogg, m4a, ...) at any rate and
channel count; the decoded sample count, not the header, is the truth about a song's length.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common import ffmpeg
from services.common.errors import InvalidInputError
from services.common.untrusted import printable

ANALYSIS_SAMPLE_RATE = 22050
MIN_SONG_SECONDS = 1.0
# Codecs add or drop a few hundredths of a second at a song's edges (an encoder's delay or padding,
# a Vorbis decoder's first half-block): lengths are compared with the limits allowing this much, so
# that a 1.000 s song passes in every format.
CODEC_EDGE_SECONDS = 0.05
DECODED_PAST_LIMIT_SECONDS = 1.0  # a song is decoded up to its limit and this much more, never further
# Below this many bytes per second of claimed duration (8 kbit/s, the lowest MP3 bitrate) a header's
# duration is not believed: a 50 KB file "of 14 hours" is a lying header, and its samples decide.
MIN_PLAUSIBLE_BYTES_PER_SECOND = 1000
# ffmpeg's words for "this is not a format I know" (errno text, not meant for a person).
UNRECOGNISED = ("Invalid argument", "Invalid data found when processing input")


class UnreadableAudioError(InvalidInputError):
    """ffmpeg cannot read the file at all (as opposed to: it is audio, but too long or too short)."""


@dataclass(frozen=True)
class AudioInfo:
    duration: float  # seconds, from the decoded samples
    sample_rate: int  # of the file's audio stream
    channels: int
    codec: str
    container: str


def probe(path: str | Path, max_seconds: float) -> AudioInfo:
    """Check that `path` is a decodable song no longer than `max_seconds`, or raise InvalidInputError."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file")
    if not path.is_file():
        raise InvalidInputError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path}: the file is empty")
    try:
        raw = ffmpeg.run(
            "ffprobe",
            ["-show_entries", "format=format_name,duration:stream=codec_type,codec_name,sample_rate,channels",
             "-of", "json", str(path)],
            timeout=60,
        )
        meta = json.loads(raw)
    except ffmpeg.ToolError as exc:
        raise UnreadableAudioError(f"{path}: not a readable audio file ({_short(exc.stderr)})") from exc
    streams = [s for s in meta.get("streams", []) if s.get("codec_type") == "audio"]
    if not streams:
        raise InvalidInputError(f"{path}: the file holds no audio stream")
    stream = streams[0]
    header_seconds = _float(meta.get("format", {}).get("duration"))
    # Headers lie (VBR mp3, a forged Xing frame count): one is believed only when the file could hold that much.
    believed = header_seconds if header_seconds is not None and \
        path.stat().st_size >= header_seconds * MIN_PLAUSIBLE_BYTES_PER_SECOND else None
    if believed is not None and believed > max_seconds * 1.5:
        # Refuse early, before decoding, when the header is far over. Decoding below is bounded anyway.
        raise InvalidInputError(_too_long(path, believed, max_seconds))
    samples = decode(path, sample_rate=8000, max_seconds=max_seconds + DECODED_PAST_LIMIT_SECONDS)
    if not samples.size:
        raise InvalidInputError(f"{path}: the file holds no audio (a header without any sound after it)")
    duration = samples.size / 8000
    if duration < MIN_SONG_SECONDS - CODEC_EDGE_SECONDS:
        shown = math.floor(duration * 100) / 100  # rounded down: a refused length never shows as the minimum
        raise InvalidInputError(f"{path}: the audio is {shown:.2f} s long; "
                                f"at least {MIN_SONG_SECONDS:.0f} s is needed")
    if duration > max_seconds + CODEC_EDGE_SECONDS:
        # Decoding stopped past the limit: then only a believable header knows how long the song is.
        length: float | None = duration
        if duration >= max_seconds + DECODED_PAST_LIMIT_SECONDS:
            length = believed if believed is not None and believed > max_seconds else None
        raise InvalidInputError(_too_long(path, length, max_seconds))
    return AudioInfo(
        duration=duration,
        sample_rate=int(stream.get("sample_rate") or 0),
        channels=int(stream.get("channels") or 0),
        codec=str(stream.get("codec_name", "unknown")),
        container=str(meta.get("format", {}).get("format_name", "unknown")),
    )


def ingest(path: Path, scratch: Path, max_seconds: float) -> tuple[Path, AudioInfo]:
    """Probe a song as it comes in; return the file the stages should use, and what it is.

    Some real Ogg Vorbis files (e.g. written by old encoders) fail ffmpeg's header parsing but play
    everywhere else: such a file is converted once to FLAC in `scratch`, so every stage keeps using
    ffmpeg. Errors name `path`, never the scratch copy."""
    try:
        return path, probe(path, max_seconds)
    except UnreadableAudioError:
        copy = _libsndfile_copy(path, scratch)
        if copy is None:
            raise
    try:
        return copy, probe(copy, max_seconds)
    except InvalidInputError as exc:
        raise InvalidInputError(str(exc).replace(str(copy), str(path))) from None


def _libsndfile_copy(path: Path, scratch: Path) -> Path | None:
    """A FLAC copy of `path` made by libsndfile, or None when libsndfile cannot read it either."""
    with path.open("rb") as head:
        id3 = head.read(3) == b"ID3"
    if path.suffix.lower() == ".mp3" or id3:
        return None  # MP3 is ffmpeg's to judge; libsndfile's mpg123 would only print its notes on stderr
    import soundfile

    copy = scratch / f"{path.stem}.flac"
    try:
        with soundfile.SoundFile(str(path)) as source:
            if not source.frames:  # an Ogg of headers alone: ffmpeg stops at its end, libsndfile finds no sound
                raise InvalidInputError(f"{path}: the file holds no audio (a header without any sound after it)")
            with soundfile.SoundFile(str(copy), "w", source.samplerate, source.channels, format="FLAC") as target:
                for block in source.blocks(blocksize=1 << 16, dtype="float32"):
                    target.write(block)
    except (RuntimeError, soundfile.LibsndfileError, ValueError):
        return None
    return copy


def decode(
    path: str | Path,
    sample_rate: int = ANALYSIS_SAMPLE_RATE,
    start: float = 0.0,
    duration: float | None = None,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Decode to mono float32 at `sample_rate`, optionally only [start, start+duration)."""
    args: list[str] = []
    if start > 0:
        args += ["-ss", f"{start:.6f}"]
    args += ["-i", str(path)]
    limit = duration if duration is not None else max_seconds
    if limit is not None:
        args += ["-t", f"{limit:.6f}"]
    args += ["-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
    try:
        raw = ffmpeg.run("ffmpeg", args, timeout=600)
    except ffmpeg.ToolError as exc:
        raise InvalidInputError(f"{path}: the audio cannot be decoded ({_short(exc.stderr)})") from exc
    samples = np.frombuffer(raw, dtype=np.float32)
    if samples.size and not np.isfinite(samples).all():
        raise InvalidInputError(f"{path}: the audio contains NaN or infinite samples")
    return samples


def _float(value: object) -> float | None:
    """A number from ffprobe's JSON (a string or a number); None for anything else."""
    if not isinstance(value, str | int | float):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _too_long(path: Path, seconds: float | None, max_seconds: float) -> str:
    """`seconds`: the song's length, None when unknown. A length that reads as the maximum is no answer."""
    if seconds is None or _span(seconds) == _span(max_seconds):
        return f"{path}: the song is longer than {_span(max_seconds)}, the maximum"
    return f"{path}: the song is {_span(seconds)} long; the maximum is {_span(max_seconds)}"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def _short(stderr: str) -> str:
    """ffmpeg's last line, for a person: without the file's path or the demuxer's address."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown format"
    last = re.sub(r"^\[[^]]*@ 0x[0-9a-f]+\]\s*", "", lines[-1])
    last = last.rsplit(": ", 1)[-1] if last.endswith(UNRECOGNISED) else last
    return "its format is not recognised, or its data is corrupt" if last in UNRECOGNISED else printable(last, 160)
