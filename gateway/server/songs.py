"""Songs: uploaded (streamed or by presigned PUT), probed, kept per client."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path, PurePath
from typing import Any

from google.protobuf import json_format

from services.common import audio
from services.common.errors import InvalidInputError, ResourceExhaustedError
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.pb import song_pb2
from services.common.store import ArtifactStore
from services.common.untrusted import printable, quoted
from gateway.server.errors import NotFoundError, PreconditionError
from gateway.server.settings import MIB

log = logging.getLogger(__name__)
# ffprobe's format name -> (extension of the stored copy, MIME type).
AUDIO_FORMATS = {
    "wav": (".wav", "audio/wav"), "mp3": (".mp3", "audio/mpeg"), "flac": (".flac", "audio/flac"),
    "ogg": (".ogg", "audio/ogg"), "mov,mp4,m4a,3gp,3g2,mj2": (".m4a", "audio/mp4"), "aiff": (".aiff", "audio/aiff"),
    "matroska,webm": (".webm", "audio/webm"), "aac": (".aac", "audio/aac"),
}
OTHER_AUDIO = (".audio", "application/octet-stream")
MAX_FILE_NAME_CHARS = 100  # of the name a song is shown by


class UploadAllowance:
    """Bytes each client may upload: a token bucket per client holding an hour's worth, refilled
    continuously, so a client may send its hourly amount at once and then its hourly rate."""

    def __init__(self, bytes_per_hour: int, clock: Callable[[], float] = time.monotonic):
        self.bytes_per_hour = bytes_per_hour
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (bytes allowed now, when)

    def take(self, client: str, size: int) -> None:
        """Count `size` bytes against the client's allowance; ResourceExhaustedError when they exceed it."""
        if not self.bytes_per_hour:
            return
        now = self.clock()
        allowed, then = self._buckets.get(client, (float(self.bytes_per_hour), now))
        allowed = min(float(self.bytes_per_hour), allowed + (now - then) * self.bytes_per_hour / 3600)
        if size > allowed:
            self._buckets[client] = (allowed, now)
            limit = f"one client may upload {self.bytes_per_hour / MIB:.0f} MiB per hour"
            if size > self.bytes_per_hour:
                raise ResourceExhaustedError(f"this upload is larger than the upload limit: {limit}")
            wait = (size - allowed) * 3600 / self.bytes_per_hour
            raise ResourceExhaustedError(f"upload limit reached: {limit}; try again in {_wait_text(wait)}")
        self._buckets[client] = (allowed - size, now)


def _wait_text(seconds: float) -> str:
    return f"{max(1, round(seconds))} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class SongLibrary:
    """Uploaded songs: probed, stored content-addressed per client at songs/<client>/<sha256><ext>,
    recorded at songs/records/<client>/<song_id>.json. Keys never come from the client's file name.
    Per client, so that an upload tells nobody whether another client sent the same bytes (no
    faster upload, no object of another's with its own upload time)."""

    def __init__(self, store: ArtifactStore, max_bytes: int, max_seconds: float,
                 allowance: UploadAllowance | None = None):
        self.store = store
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.allowance = allowance or UploadAllowance(0)

    async def reserve(self, client: str, file_name: str, content_type: str, size_bytes: int) -> song_pb2.Song:
        """A song id and key for a presigned PUT; the file is checked when a job is created."""
        if size_bytes < 0 or size_bytes > self.max_bytes:
            raise InvalidInputError(f"size_bytes {size_bytes} is outside 0..{self.max_bytes}, "
                                    "the largest song accepted")
        self.allowance.take(client, size_bytes)  # the presigned PUT bypasses the gateway: count what it may send
        song_id = uuid.uuid4().hex
        song = song_pb2.Song(song_id=song_id, song_key=f"songs/uploads/{song_id}", file_name=_display_name(file_name),
                             content_type=content_type[:100], size_bytes=size_bytes)
        await asyncio.to_thread(self._save, client, song)
        return song

    async def receive(self, client: str, messages: AsyncIterator[api_pb2.UploadSongRequest]) -> song_pb2.Song:
        """An UploadSong stream: metadata, then chunks, written to a scratch file as they come."""
        first = await anext(aiter(messages), None)
        if first is None or first.WhichOneof("content") != "metadata":
            raise InvalidInputError("the first UploadSong message must carry the metadata")
        meta = first.metadata
        if meta.size_bytes > self.max_bytes:
            raise ResourceExhaustedError(self._too_large(meta.size_bytes))
        digest = hashlib.sha256()
        size = 0
        with tempfile.TemporaryDirectory(prefix="mvgen-upload-") as scratch:
            path = Path(scratch) / "song"
            with path.open("wb") as file:
                async for message in messages:
                    if message.WhichOneof("content") != "chunk":
                        raise InvalidInputError("only the first UploadSong message may carry metadata")
                    size += len(message.chunk)
                    if size > self.max_bytes:  # refused at once; the scratch folder goes with it
                        raise ResourceExhaustedError(self._too_large(size))
                    self.allowance.take(client, len(message.chunk))
                    await asyncio.to_thread(_append, file, digest, message.chunk)
            sha256 = digest.hexdigest()
            if meta.size_bytes and meta.size_bytes != size:
                raise InvalidInputError(f"the upload has {size} bytes, not the {meta.size_bytes} announced")
            if meta.sha256 and meta.sha256.lower() != sha256:
                raise InvalidInputError("the upload's SHA-256 differs from the one announced: it was corrupted")
            return await asyncio.to_thread(self._keep, client, sha256, path, sha256, meta.file_name)

    async def resolve(self, client: str, song_id: str) -> song_pb2.Song:
        """The song for a job, probed; a presigned upload is checked and stored on first use."""
        song = await asyncio.to_thread(self._load, client, song_id)
        if song.sha256:
            return song
        return await asyncio.to_thread(self._check_upload, client, song)

    def _check_upload(self, client: str, song: song_pb2.Song) -> song_pb2.Song:
        try:
            with self.store.local_path(song.song_key) as path:
                size = path.stat().st_size
                if size > self.max_bytes:
                    raise InvalidInputError(self._too_large(size))
                return self._keep(client, song.song_id, path, _sha256_file(path), song.file_name)
        except KeyError:
            raise PreconditionError(f"song {song.song_id} has not been uploaded yet: PUT the file to the "
                                    "upload_url RequestUpload returned, then create the job") from None

    def _keep(self, client: str, song_id: str, path: Path, sha256: str, file_name: str) -> song_pb2.Song:
        """Probe, store content-addressed, record. Blocking: call from a worker thread."""
        name = _display_name(file_name)
        with tempfile.TemporaryDirectory(prefix="mvgen-song-") as scratch:
            try:
                readable, info = audio.ingest(path, Path(scratch), max_seconds=self.max_seconds)
            except InvalidInputError as exc:  # the probe names the upload's scratch file; the client knows its name
                raise InvalidInputError(str(exc).replace(str(path), name)) from None
            return self._store_song(client, song_id, readable, sha256, name, info)

    def _store_song(self, client: str, song_id: str, path: Path, sha256: str, name: str,
                    info: audio.AudioInfo) -> song_pb2.Song:
        extension, mime = AUDIO_FORMATS.get(info.container, OTHER_AUDIO)
        key = f"songs/{client}/{sha256}{extension}"
        if not self.store.exists(key):
            self.store.put_file(key, path)
        song = song_pb2.Song(song_id=song_id, song_key=key, file_name=name, content_type=mime,
                             size_bytes=path.stat().st_size, sha256=sha256, duration_seconds=round(info.duration, 4),
                             sample_rate_hz=info.sample_rate, channels=info.channels)
        self._save(client, song)
        return song

    def _save(self, client: str, song: song_pb2.Song) -> None:
        self.store.put_bytes(_record_key(client, song.song_id), json_format.MessageToJson(song).encode())

    def _load(self, client: str, song_id: str) -> song_pb2.Song:
        try:
            return json_format.Parse(self.store.get_bytes(_record_key(client, song_id)), song_pb2.Song())
        except KeyError:
            raise NotFoundError(f"no song {quoted(song_id)}: upload it with UploadSong or RequestUpload") from None

    def _too_large(self, size: int) -> str:
        return f"the song is larger than {self.max_bytes / MIB:.0f} MiB ({size} bytes or more)"


def _record_key(client: str, song_id: str) -> str:
    return f"songs/records/{client}/{song_id}.json"


def _append(file: Any, digest: Any, chunk: bytes) -> None:
    digest.update(chunk)
    file.write(chunk)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def _display_name(file_name: str) -> str:
    """The name a song is shown by, in messages and listings: the client's file name without its
    folders, escaped and shortened (it is the client's text)."""
    return printable(PurePath(file_name.replace("\\", "/")).name, MAX_FILE_NAME_CHARS) or "the upload"
