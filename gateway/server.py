"""The public gateway: `MusicVideoService` over grpc.aio (`python -m gateway.server`).

Clients upload songs (streamed through the gateway, or PUT to a presigned URL), create jobs, watch
them and fetch the results by presigned URL. Every call needs a bearer token (gateway/auth.py);
health and reflection stay open. Jobs run in this process through the one Orchestrator, against
whatever StageClients the gateway is given: the stage services over gRPC when deployed, or the
stage logic in-process (MVGEN_STAGES=inprocess, for development and tests).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path, PurePath
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from services.common import audio
from services.common.errors import InvalidInputError, MvgenError, ResourceExhaustedError
from services.common.pb import job_pb2, song_pb2
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.pb import music_video_service_pb2_grpc as api_grpc
from services.common.s3_store import S3ArtifactStore
from services.common.settings import StoreSettings, env_bool, env_float, env_int, env_list, env_str
from services.common.store import ArtifactStore, open_store
from services.common.transport.errors import ErrorMappingInterceptor
from services.common.transport.server import HealthServer, configure_logging
from services.common.untrusted import printable, quoted
from gateway.auth import AuthInterceptor, Authenticator, load_token_digests
from gateway.jobs import (
    AlreadyExistsError,
    BackendChoices,
    JobRegistry,
    NotFoundError,
    PreconditionError,
    resolve_options,
)
from gateway.metrics import GatewayMetrics, MetricsInterceptor
from gateway.stage_clients import StageClients

log = logging.getLogger(__name__)

SERVICE_NAME = api_pb2.DESCRIPTOR.services_by_name["MusicVideoService"].full_name
MIB = 1 << 20
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
UPLOAD_HEADERS = {"Content-Type": "application/octet-stream"}
# ffprobe's format name -> (extension of the stored copy, MIME type).
AUDIO_FORMATS = {
    "wav": (".wav", "audio/wav"), "mp3": (".mp3", "audio/mpeg"), "flac": (".flac", "audio/flac"),
    "ogg": (".ogg", "audio/ogg"), "mov,mp4,m4a,3gp,3g2,mj2": (".m4a", "audio/mp4"), "aiff": (".aiff", "audio/aiff"),
    "matroska,webm": (".webm", "audio/webm"), "aac": (".aac", "audio/aac"),
}
OTHER_AUDIO = (".audio", "application/octet-stream")
SONG_ID = re.compile(r"[0-9a-f]{32}|[0-9a-f]{64}")  # uuid4 hex (reserved uploads) or sha256 (streamed ones)
MAX_FILE_NAME_CHARS = 100  # of the name a song is shown by


@dataclass(frozen=True)
class GatewaySettings:
    store: StoreSettings
    token_digests: tuple[str, ...]  # MVGEN_GATEWAY_TOKENS_SHA256 / MVGEN_GATEWAY_TOKENS_FILE
    host: str = "0.0.0.0"  # MVGEN_HOST
    port: int = 50050  # MVGEN_PORT (0: any free port)
    metrics_port: int = 9090  # MVGEN_METRICS_PORT (0: any free port)
    max_upload_bytes: int = 200 * MIB  # MVGEN_MAX_UPLOAD_BYTES
    max_song_seconds: float = 900.0  # MVGEN_MAX_SONG_SECONDS
    presign_seconds: int = 900  # MVGEN_PRESIGN_SECONDS: how long upload and download URLs work
    max_active_jobs: int = 4  # MVGEN_MAX_ACTIVE_JOBS: jobs run at once; more wait, QUEUED
    grace_seconds: float = 30.0  # MVGEN_GRACE_SECONDS: on SIGTERM, how long calls in progress may finish
    # MVGEN_ANALYZERS, MVGEN_WRITERS, MVGEN_GENERATORS, MVGEN_STORYTELLERS, MVGEN_TRANSCRIBERS: what the
    # stage services serve; first = default. No storytellers: the LALM pipeline is refused. No
    # transcribers: no lyrics, unless a job brings its own.
    backends: BackendChoices = BackendChoices(("descriptors",), ("template",), ("animatic",))
    stages: str = "grpc"  # MVGEN_STAGES: "grpc" (the stage services) or "inprocess" (development)
    # MVGEN_TLS_CERT_FILE, MVGEN_TLS_KEY_FILE: the server's certificate chain and key (PEM); both or neither
    tls_cert_file: str = ""
    tls_key_file: str = ""
    max_jobs_per_client: int = 8  # MVGEN_CLIENT_MAX_JOBS: jobs one client may have queued or running (0: no limit)
    # MVGEN_CLIENT_UPLOAD_BYTES_PER_HOUR: what one client may upload in an hour (0: no limit)
    upload_bytes_per_hour: int = 2048 * MIB
    # MVGEN_SHARED_CACHE: one output cache for all clients (a client then learns, from its job's
    # "cached" stages, that another processed the same song with the same settings); off: one per client
    shared_cache: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.presign_seconds <= MAX_PRESIGN_SECONDS:
            raise InvalidInputError(f"MVGEN_PRESIGN_SECONDS must be between 1 and {MAX_PRESIGN_SECONDS} (7 days, "
                                    f"the most S3 signs for), not {self.presign_seconds}")

    @classmethod
    def from_env(cls) -> GatewaySettings:
        defaults = cls(StoreSettings.from_env(), ())
        return cls(
            store=defaults.store,
            token_digests=load_token_digests(os.environ.get("MVGEN_GATEWAY_TOKENS_SHA256", ""),
                                             os.environ.get("MVGEN_GATEWAY_TOKENS_FILE", "").strip()),
            host=env_str("MVGEN_HOST", defaults.host),
            port=env_int("MVGEN_PORT", defaults.port),
            metrics_port=env_int("MVGEN_METRICS_PORT", defaults.metrics_port),
            max_upload_bytes=env_int("MVGEN_MAX_UPLOAD_BYTES", defaults.max_upload_bytes),
            max_song_seconds=env_float("MVGEN_MAX_SONG_SECONDS", defaults.max_song_seconds),
            presign_seconds=env_int("MVGEN_PRESIGN_SECONDS", defaults.presign_seconds),
            max_active_jobs=env_int("MVGEN_MAX_ACTIVE_JOBS", defaults.max_active_jobs),
            grace_seconds=env_float("MVGEN_GRACE_SECONDS", defaults.grace_seconds),
            backends=BackendChoices(env_list("MVGEN_ANALYZERS", defaults.backends.analyzers),
                                    env_list("MVGEN_WRITERS", defaults.backends.writers),
                                    env_list("MVGEN_GENERATORS", defaults.backends.generators),
                                    env_list("MVGEN_STORYTELLERS", defaults.backends.storytellers),
                                    env_list("MVGEN_TRANSCRIBERS", defaults.backends.transcribers)),
            stages=env_str("MVGEN_STAGES", defaults.stages),
            tls_cert_file=env_str("MVGEN_TLS_CERT_FILE", ""),
            tls_key_file=env_str("MVGEN_TLS_KEY_FILE", ""),
            max_jobs_per_client=env_int("MVGEN_CLIENT_MAX_JOBS", defaults.max_jobs_per_client),
            upload_bytes_per_hour=env_int("MVGEN_CLIENT_UPLOAD_BYTES_PER_HOUR", defaults.upload_bytes_per_hour),
            shared_cache=env_bool("MVGEN_SHARED_CACHE", defaults.shared_cache),
        )

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials from the certificate and key files, or None for plain text."""
        if not (self.tls_cert_file or self.tls_key_file):
            return None
        if not (self.tls_cert_file and self.tls_key_file):
            raise InvalidInputError("TLS needs both MVGEN_TLS_CERT_FILE and MVGEN_TLS_KEY_FILE")
        pem = {}
        for name, path in (("MVGEN_TLS_CERT_FILE", self.tls_cert_file), ("MVGEN_TLS_KEY_FILE", self.tls_key_file)):
            try:
                pem[name] = Path(path).read_bytes()
            except OSError as exc:
                raise InvalidInputError(f"{name}: cannot read {path}: {exc.strerror}") from None
        return grpc.ssl_server_credentials([(pem["MVGEN_TLS_KEY_FILE"], pem["MVGEN_TLS_CERT_FILE"])])


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


# --- songs ---------------------------------------------------------------------------------------------

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


# --- the service ---------------------------------------------------------------------------------------

class MusicVideoServicer(api_grpc.MusicVideoServiceServicer):
    def __init__(self, settings: GatewaySettings, store: ArtifactStore, registry: JobRegistry,
                 songs: SongLibrary, authenticator: Authenticator):
        self.settings = settings
        self.store = store
        self.registry = registry
        self.songs = songs
        self.auth = authenticator

    async def RequestUpload(self, request: api_pb2.RequestUploadRequest,
                            context: grpc.aio.ServicerContext) -> api_pb2.RequestUploadResponse:
        client = self.auth.client_of(context)
        if not isinstance(self.store, S3ArtifactStore):
            raise PreconditionError("this gateway keeps songs in a local folder, which has no upload URL: "
                                    "send the file with UploadSong")
        song = await self.songs.reserve(client, request.file_name, request.content_type, request.size_bytes)
        expires = timedelta(seconds=self.settings.presign_seconds)
        url = await asyncio.to_thread(self.store.presigned_put, song.song_key, expires)
        return api_pb2.RequestUploadResponse(
            song_id=song.song_id, song_key=song.song_key, upload_url=url, upload_headers=UPLOAD_HEADERS,
            expire_time=_after(expires), max_size_bytes=self.settings.max_upload_bytes)

    async def UploadSong(self, request_iterator: AsyncIterator[api_pb2.UploadSongRequest],
                         context: grpc.aio.ServicerContext) -> api_pb2.UploadSongResponse:
        client = self.auth.client_of(context)
        return api_pb2.UploadSongResponse(song=await self.songs.receive(client, request_iterator))

    async def CreateJob(self, request: api_pb2.CreateJobRequest,
                        context: grpc.aio.ServicerContext) -> api_pb2.CreateJobResponse:
        client = self.auth.client_of(context)
        _required(request.song_id, "song_id", "upload the song with UploadSong or RequestUpload first")
        if not SONG_ID.fullmatch(request.song_id):
            raise InvalidInputError("song_id must be the hexadecimal id UploadSong or RequestUpload returned, "
                                    f"not {quoted(request.song_id)}")
        options = resolve_options(request.options, self.settings.backends)
        # What a retry must repeat exactly for its request id to name the same job.
        fingerprint = hashlib.sha256(request.song_id.encode() + b"\0" +
                                     request.options.SerializeToString(deterministic=True)).hexdigest()
        job = await self.registry.create(client, request.request_id, fingerprint,
                                         lambda: self.songs.resolve(client, request.song_id), options)
        return api_pb2.CreateJobResponse(job=job)

    async def GetJob(self, request: api_pb2.GetJobRequest,
                     context: grpc.aio.ServicerContext) -> api_pb2.GetJobResponse:
        job = self.registry.get(self.auth.client_of(context), _required(request.job_id, "job_id")).snapshot()
        response = api_pb2.GetJobResponse(job=job)
        if isinstance(self.store, S3ArtifactStore):  # a local store has no URLs: the keys in `job` say where
            await asyncio.to_thread(self._presign, self.store, response)
        if request.include_artifacts:
            await asyncio.to_thread(self._inline_artifacts, response)
        return response

    async def WatchJob(self, request: api_pb2.WatchJobRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[api_pb2.WatchJobResponse]:
        view = self.registry.get(self.auth.client_of(context), _required(request.job_id, "job_id"))
        async for message in view.watch():
            yield message

    async def CancelJob(self, request: api_pb2.CancelJobRequest,
                        context: grpc.aio.ServicerContext) -> api_pb2.CancelJobResponse:
        return api_pb2.CancelJobResponse(job=await self.registry.cancel(self.auth.client_of(context),
                                                                        _required(request.job_id, "job_id")))

    async def ListJobs(self, request: api_pb2.ListJobsRequest,
                       context: grpc.aio.ServicerContext) -> api_pb2.ListJobsResponse:
        jobs, token = self.registry.list(self.auth.client_of(context), request.state, request.page_size,
                                         request.page_token)
        return api_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    def _presign(self, store: S3ArtifactStore, response: api_pb2.GetJobResponse) -> None:
        expires = timedelta(seconds=self.settings.presign_seconds)
        job = response.job
        for name, key in job.artifact_keys.items():
            response.artifact_urls[name] = store.presigned_get(key, expires)
        for clip in job.clips:
            if clip.clip_key:
                response.clip_urls[clip.index] = store.presigned_get(clip.clip_key, expires)
        if job.state == job_pb2.JOB_STATE_SUCCEEDED and "video" in response.artifact_urls:
            response.video_url = response.artifact_urls["video"]
        response.urls_expire_time.CopyFrom(_after(expires))

    def _inline_artifacts(self, response: api_pb2.GetJobResponse) -> None:
        keys = response.job.artifact_keys
        if "segments" in keys:
            segments = json.loads(self.store.get_bytes(keys["segments"]))
            for segment in segments["segments"]:  # the JSON names reasons in lowercase; the proto as enum values
                segment["end_reason"] = f"SEGMENT_END_REASON_{segment['end_reason'].upper()}"
            json_format.ParseDict(segments, response.segmentation, ignore_unknown_fields=True)
        if "labels" in keys:
            json_format.ParseDict(json.loads(self.store.get_bytes(keys["labels"])), response.labels,
                                  ignore_unknown_fields=True)
        if "script" in keys:
            json_format.ParseDict(json.loads(self.store.get_bytes(keys["script"])), response.script,
                                  ignore_unknown_fields=True)


def _required(value: str, name: str, hint: str = "") -> str:
    if not value:
        raise InvalidInputError(f"{name} is missing{': ' + hint if hint else ''}")
    return value


def _after(delta: timedelta) -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    stamp.FromNanoseconds(stamp.ToNanoseconds() + int(delta.total_seconds() * 1e9))
    return stamp


STATUS_BY_GATEWAY_ERROR = ((NotFoundError, grpc.StatusCode.NOT_FOUND),
                           (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
                           (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION))


# --- the server ----------------------------------------------------------------------------------------

class GatewayServer:
    """The gateway's whole lifecycle: start (read jobs back, resume them, serve) and stop (NOT_SERVING,
    leave running jobs resumable, drain)."""

    def __init__(self, settings: GatewaySettings, store: ArtifactStore, stages: StageClients):
        self.settings = settings
        self.store = store
        self.metrics = GatewayMetrics()
        self.registry = JobRegistry(store, stages, max_active_jobs=settings.max_active_jobs,
                                    observe_stage=lambda stage, seconds: self.metrics.stage_seconds.labels(stage)
                                    .observe(seconds), max_jobs_per_client=settings.max_jobs_per_client,
                                    shared_cache=settings.shared_cache)
        self.metrics.watch(self.registry.counts)
        authenticator = Authenticator(settings.token_digests)
        self.grpc = HealthServer([SERVICE_NAME], f"{settings.host}:{settings.port}", [
            MetricsInterceptor(self.metrics), AuthInterceptor(authenticator),
            ErrorMappingInterceptor(extra=STATUS_BY_GATEWAY_ERROR)], credentials=settings.server_credentials())
        self.server, self.port = self.grpc.server, self.grpc.port
        songs = SongLibrary(store, settings.max_upload_bytes, settings.max_song_seconds,
                            UploadAllowance(settings.upload_bytes_per_hour))
        api_grpc.add_MusicVideoServiceServicer_to_server(
            MusicVideoServicer(settings, store, self.registry, songs, authenticator), self.server)
        self.metrics_port = 0

    async def start(self) -> None:
        await self.grpc.start()
        await self.registry.start()
        self.metrics_port = self.metrics.serve(self.settings.metrics_port, self.settings.host)
        await self.grpc.set_serving(True)
        log.info("gateway serving on port %d (%s), metrics on port %d, output cache %s", self.port,
                 "TLS" if self.settings.tls_cert_file else "plain text", self.metrics_port,
                 "shared among all clients" if self.settings.shared_cache else "per client")

    async def stop(self) -> None:
        await self.grpc.set_serving(False)
        await self.registry.close()  # running jobs stop resumable while the server still answers
        await self.grpc.stop(self.settings.grace_seconds)
        self.metrics.close()


async def serve(settings: GatewaySettings, store: ArtifactStore) -> None:
    """Serve until SIGTERM or SIGINT."""
    async with stage_clients(settings, store) as stages:
        gateway = GatewayServer(settings, store, stages)
        await gateway.start()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        log.info("stopping: NOT_SERVING, running jobs left to resume, draining for up to %.0f s",
                 settings.grace_seconds)
        await gateway.stop()


@asynccontextmanager
async def stage_clients(settings: GatewaySettings, store: ArtifactStore) -> AsyncIterator[StageClients]:
    """The stage clients MVGEN_STAGES names, open for the gateway's lifetime (in its event loop)."""
    if settings.stages == "grpc":
        from gateway.grpc_stages import GrpcStageClients

        async with GrpcStageClients.from_env() as stages:
            yield stages
    elif settings.stages == "inprocess":
        from gateway.inprocess import InProcessStages  # stage logic: development only, never in the gateway image

        backends = settings.backends
        yield InProcessStages(store, analyzer=backends.analyzers[0], transcriber=next(iter(backends.transcribers), ""),
                              scripting=backends.writers + backends.storytellers, generator=backends.generators[0])
    else:
        raise InvalidInputError(f"MVGEN_STAGES must be 'grpc' or 'inprocess', not {settings.stages!r}")


def main() -> None:
    configure_logging()
    try:
        settings = GatewaySettings.from_env()
        store = open_store(settings.store)
        if isinstance(store, S3ArtifactStore):
            store.ensure_bucket()
        asyncio.run(serve(settings, store))
    except MvgenError as exc:  # a configuration error or an unreachable store, said in one line
        print(f"mvgen gateway: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, InvalidInputError) else 1)


if __name__ == "__main__":
    main()
