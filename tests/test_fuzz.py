"""Fuzzing the upload and probe path: what the gateway does with a stream of UploadSong messages
(SongLibrary.receive: size limit, hashing, probing with ffprobe/ffmpeg, storing), with hypothesis.

Inputs are random bytes, and real small songs (wav, mp3, flac, ogg) with bytes flipped, cut short
or spliced together, under random file names and announced sizes and hashes. Whatever comes in,
the upload is either stored as a song whose every field is sane, or refused with InvalidInputError
or ResourceExhaustedError and a message that names no server path; nothing else may happen.

Derandomized, so `make test` runs the same examples every time (MVGEN_FUZZ_EXAMPLES, default 25,
a few seconds); `make soak` runs many more.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidInputError, ResourceExhaustedError
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.store import LocalArtifactStore
from gateway.server.songs import SongLibrary

MAX_BYTES = 32 * 1024  # some spliced seeds are larger
MAX_SECONDS = 30.0
EXAMPLES = int(os.environ.get("MVGEN_FUZZ_EXAMPLES", "25"))
SEED_FORMATS = {"wav": ["-c:a", "pcm_s16le"], "mp3": ["-c:a", "libmp3lame", "-b:a", "32k"],
                "flac": ["-c:a", "flac"], "ogg": ["-c:a", "libvorbis", "-q:a", "0"]}
STORED_KEY = re.compile(r"songs/fuzzer/[0-9a-f]{64}\.(wav|mp3|flac|ogg|m4a|aiff|webm|aac|audio)")


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    """Small valid songs (1.5 s, 8 kHz mono) to mutate."""
    folder = tmp_path_factory.mktemp("seeds")
    made = {}
    for ext, codec in SEED_FORMATS.items():
        path = folder / f"seed.{ext}"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000:"
                        "duration=1.5", "-ac", "1", *codec, str(path)], check=True)
        made[ext] = path.read_bytes()
    return made


@st.composite
def uploads(draw: st.DrawFn) -> tuple[str, str, list[tuple[float, int]], float | None, int]:
    """What to send: a seed (or "random"), its mutations, and the metadata, as plain values; the
    bytes are built from the seeds in the test."""
    source = draw(st.sampled_from(["random", *SEED_FORMATS]))
    name = draw(st.one_of(st.sampled_from(["song.mp3", "song.wav", "../../etc/passwd", "a/b\\c.flac", ""]),
                          st.text(max_size=300)))
    flips = draw(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=12))
    cut = draw(st.one_of(st.none(), st.floats(0, 1)))
    splice = draw(st.integers(0, len(SEED_FORMATS)))  # > 0: append the body of another seed
    return source, name, flips, cut, splice


def build(seeds: dict[str, bytes], source: str, flips: list[tuple[float, int]], cut: float | None,
          splice: int, noise: bytes) -> bytes:
    data = bytearray(noise if source == "random" else seeds[source])
    for where, value in flips:
        if data:
            data[min(len(data) - 1, int(where * len(data)))] = value
    if cut is not None:
        data = data[:int(cut * len(data))]
    if splice:
        other = list(seeds.values())[splice - 1]
        data += other[len(other) // 3:]
    return bytes(data)


def messages(name: str, data: bytes, size_bytes: int, sha256: str):
    async def stream():
        yield api_pb2.UploadSongRequest(metadata=api_pb2.UploadSongMetadata(file_name=name, size_bytes=size_bytes,
                                                                            sha256=sha256))
        for start in range(0, len(data), 16 * 1024):
            yield api_pb2.UploadSongRequest(chunk=data[start:start + 16 * 1024])

    return stream()


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(upload=uploads(), noise=st.binary(max_size=4096),
       announced=st.sampled_from(["right", "none", "wrong"]), hashed=st.sampled_from(["right", "none", "wrong"]))
def test_an_upload_is_stored_sane_or_refused_with_a_message(seeds, upload, noise, announced, hashed):
    source, name, flips, cut, splice = upload
    data = build(seeds, source, flips, cut, splice, noise)
    size_bytes = {"right": len(data), "none": 0, "wrong": len(data) + 7}[announced]
    sha256 = {"right": hashlib.sha256(data).hexdigest(), "none": "", "wrong": "ab" * 32}[hashed]
    with tempfile.TemporaryDirectory(prefix="mvgen-fuzz-") as root:
        store = LocalArtifactStore(Path(root) / "store")
        library = SongLibrary(store, MAX_BYTES, MAX_SECONDS)
        try:
            song = asyncio.run(library.receive("fuzzer", messages(name, data, size_bytes, sha256)))
        except (InvalidInputError, ResourceExhaustedError) as exc:
            message = str(exc)
            event(f"refused: {type(exc).__name__}")  # counted by --hypothesis-show-statistics
            assert message and "mvgen-" not in message and root not in message, message
            if len(data) > MAX_BYTES or size_bytes > MAX_BYTES:
                assert isinstance(exc, ResourceExhaustedError), message
            assert not store.list("songs/"), "a refused upload left something in the store"
            return
        event(f"stored: {source}")
        assert len(data) <= MAX_BYTES and announced != "wrong" and hashed != "wrong"
        assert STORED_KEY.fullmatch(song.song_key) and store.exists(song.song_key), song.song_key
        assert song.sha256 == hashlib.sha256(data).hexdigest() == song.song_id
        assert 1.0 <= song.duration_seconds <= MAX_SECONDS and math.isfinite(song.duration_seconds)
        assert song.sample_rate_hz > 0 and song.channels > 0
        # A name without a path, one line: a backslash only in an escape (services/common/untrusted.py).
        unescaped = re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[nrt\\])", "", song.file_name)
        assert "/" not in unescaped and "\\" not in unescaped and song.file_name.isprintable(), song.file_name
        assert len(song.file_name) <= 200
        assert sorted(store.list("")) == sorted([song.song_key, f"songs/records/fuzzer/{song.song_id}.json"])
