"""The hostile-input corpus: broken, odd and malicious songs, made on demand (nothing binary is committed).

    python -m tests.corpus.make_corpus OUT_DIR      # writes every file, prints what each one is

Each entry says what the gateway must do with the file: refuse it (INVALID_ARGUMENT, with a message
containing `says`) or accept it and make its video (valid audio, however odd). RELIABILITY.md lists
the choices and why. Files are small (at most about 9 MB, most a few KB) and made in about a second.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

RATE = 44100
MAX_SONG_SECONDS = 10  # the longest song the gateway under test accepts (too-long.ogg is over it)


@dataclass(frozen=True)
class Entry:
    name: str  # the file name, as uploaded
    what: str  # for a person
    make: Callable[[Path], None]
    says: str | None  # refused: a phrase of the message; None: accepted


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def _tone(path: Path, seconds: float, rate: int = RATE, channels: int = 2, codec: list[str] | None = None) -> None:
    layout = {1: "mono", 2: "stereo", 8: "7.1"}[channels]
    _ffmpeg("-f", "lavfi", "-i", f"sine=frequency=330:sample_rate={rate}:duration={seconds}",
            "-af", f"aformat=channel_layouts={layout}", *(codec or []), str(path))


def _mp3_bytes(seconds: float) -> bytes:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"sine=frequency=330:duration={seconds}",
                          "-ac", "2", "-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3", "pipe:1"],
                         check=True, capture_output=True).stdout
    return raw


def _syncsafe(size: int) -> bytes:
    return bytes(((size >> shift) & 0x7F) for shift in (21, 14, 7, 0))


def _id3(payload_size: int, declared: int | None = None) -> bytes:
    """An ID3v2.3 tag holding one TXXX frame of `payload_size` bytes; its header may declare another size."""
    frame_body = b"\x00big\x00" + b"x" * payload_size
    frame = b"TXXX" + struct.pack(">I", len(frame_body)) + b"\x00\x00" + frame_body
    size = len(frame) if declared is None else declared
    return b"ID3\x03\x00\x00" + _syncsafe(size) + frame


def _wav_header(rate: int, channels: int, bits: int, data_bytes: int) -> bytes:
    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", min(0xFFFFFFFF, data_bytes + 36)) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits)
            + b"data" + struct.pack("<I", min(0xFFFFFFFF, data_bytes)))


def _pcm16(seconds: float, channels: int = 2) -> bytes:
    t = np.arange(int(RATE * seconds)) / RATE
    mono = (np.sin(2 * np.pi * 330 * t) * 0.3 * 32767).astype("<i2")
    return np.repeat(mono[:, None], channels, axis=1).tobytes()


def _float_wav(path: Path, poison: float) -> None:
    samples = (np.sin(np.arange(RATE * 3) / 10) * 0.3).astype("float32")
    samples[RATE:RATE + 64] = poison
    soundfile.write(path, samples, RATE, subtype="FLOAT")


def empty(path: Path) -> None:
    path.write_bytes(b"")


def truncated_mp3(path: Path) -> None:
    path.write_bytes(_mp3_bytes(6.0)[:2000])  # the first ~0.1 s, cut inside a frame


def truncated_half_mp3(path: Path) -> None:
    data = _mp3_bytes(6.0)
    path.write_bytes(data[:len(data) // 2 + 77])  # about 3 s, cut inside a frame


def zip_renamed(path: Path) -> None:
    wav = io.BytesIO()
    soundfile.write(wav, np.zeros(RATE, "float32"), RATE, format="WAV")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("song.wav", wav.getvalue())
        archive.writestr("readme.txt", "a zip file, renamed .mp3\n" * 50)


def claims_hours(path: Path) -> None:
    # A WAV header that claims 4 GB of samples (6.8 hours) in front of 3 s of them.
    path.write_bytes(_wav_header(RATE, 2, 16, 0xFFFFFFF0) + _pcm16(3.0))


def claims_hours_mp3(path: Path) -> None:
    # A CBR mp3 whose Info (Xing) frame claims 2,000,000 frames: 14.5 hours, in 48 KB.
    _tone(path, 3.0, codec=["-c:a", "libmp3lame", "-b:a", "128k"])
    data = bytearray(path.read_bytes())
    info = data.find(b"Info")
    data[info + 8:info + 12] = struct.pack(">I", 2_000_000)  # after the tag and its flags: the frame count
    path.write_bytes(data)


def too_long(path: Path) -> None:
    _tone(path, MAX_SONG_SECONDS * 2.0, codec=["-c:a", "libvorbis"])


def huge_id3(path: Path) -> None:
    path.write_bytes(_id3(4 << 20) + _mp3_bytes(3.0))  # a 4 MiB tag before 3 s of audio


def id3_claims_more(path: Path) -> None:
    # The tag's header says 256 MB follow; the file ends after a few KB.
    path.write_bytes(_id3(1000, declared=(1 << 28) - 1) + _mp3_bytes(0.5))


def wav_named_mp3(path: Path) -> None:
    path.write_bytes(_wav_header(RATE, 2, 16, RATE * 4 * 3) + _pcm16(3.0))


def silence(path: Path) -> None:
    soundfile.write(path, np.zeros((RATE * 4, 2), "int16"), RATE, subtype="PCM_16")


def mono_8k(path: Path) -> None:
    _tone(path, 4.0, rate=8000, channels=1)


def eight_channels_192k(path: Path) -> None:
    _tone(path, 3.0, rate=192000, channels=8)


def video_only(path: Path) -> None:
    _ffmpeg("-f", "lavfi", "-i", "testsrc=duration=2:size=64x64:rate=10", str(path))


def too_short(path: Path) -> None:
    _tone(path, 0.4)


CORPUS: tuple[Entry, ...] = (
    Entry("empty.mp3", "zero bytes", empty, "the file is empty"),
    Entry("truncated.mp3", "an mp3 cut after 2000 bytes (0.1 s)", truncated_mp3, "at least 1 s is needed"),
    Entry("archive.mp3", "a ZIP archive renamed .mp3", zip_renamed, "not a readable audio file"),
    Entry("nan.wav", "float WAV with NaN samples", lambda p: _float_wav(p, float("nan")), "NaN or infinite"),
    Entry("inf.wav", "float WAV with +Inf samples", lambda p: _float_wav(p, float("inf")), "NaN or infinite"),
    Entry("id3-claims-more.mp3", "an ID3 tag whose header claims 256 MB", id3_claims_more, "not recognised"),
    Entry("video-only.mp4", "a video without a sound track", video_only, "no audio stream"),
    Entry("too-short.wav", "0.4 s of audio", too_short, "at least 1 s is needed"),
    Entry("too-long.ogg", f"{MAX_SONG_SECONDS * 2} s, twice the longest song accepted", too_long, "the maximum is"),
    Entry("claims-hours.mp3", "an mp3 whose Xing header claims 14.5 hours, holding 3 s", claims_hours_mp3, None),
    Entry("claims-hours.wav", "a WAV header claiming 6.8 hours in front of 3 s", claims_hours, None),
    Entry("truncated-half.mp3", "an mp3 cut in the middle of a frame, 3 s left", truncated_half_mp3, None),
    Entry("huge-id3.mp3", "a 4 MiB ID3 tag before 3 s of audio", huge_id3, None),
    Entry("wav-named.mp3", "a WAV file with an .mp3 extension", wav_named_mp3, None),
    Entry("silence.wav", "4 s of digital silence", silence, None),
    Entry("mono-8k.wav", "4 s at 8 kHz, mono", mono_8k, None),
    Entry("surround-192k.wav", "3 s at 192 kHz, 8 channels (7.1)", eight_channels_192k, None),
)


def make_corpus(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for entry in CORPUS:
        entry.make(folder / entry.name)
        made[entry.name] = folder / entry.name
    return made


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus")
    for name, path in make_corpus(folder).items():
        entry = next(e for e in CORPUS if e.name == name)
        verdict = f"refused ({entry.says})" if entry.says else "accepted"
        print(f"{path}  {path.stat().st_size:>9} bytes  {entry.what}: {verdict}")


if __name__ == "__main__":
    main()
