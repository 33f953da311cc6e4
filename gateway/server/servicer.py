"""MusicVideoService's methods: each checks its request, then asks the songs or the job registry."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.artifacts import Labels, Lyrics, Script, Segmentation, read_artifact
from services.common.errors import InvalidInputError
from services.common.pb import job_pb2, song_pb2
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.pb import music_video_service_pb2_grpc as api_grpc
from services.common.s3_store import S3ArtifactStore
from services.common.store import ArtifactStore
from services.common.untrusted import quoted
from gateway.pipeline.states import JobState
from gateway.server.auth import Authenticator
from gateway.server.errors import PreconditionError
from gateway.server.options import resolve_options
from gateway.server.registry import JobRegistry
from gateway.server.revisions import check_revision, job_revision, requested_changes
from gateway.server.settings import GatewaySettings
from gateway.server.songs import SongLibrary
from gateway.server.status import JobStatus

log = logging.getLogger(__name__)
SERVICE_NAME = api_pb2.DESCRIPTOR.services_by_name["MusicVideoService"].full_name
UPLOAD_HEADERS = {"Content-Type": "application/octet-stream"}
SONG_ID = re.compile(r"[0-9a-f]{32}|[0-9a-f]{64}")  # uuid4 hex (reserved uploads) or sha256 (streamed ones)


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

    async def ReviseJob(self, request: api_pb2.ReviseJobRequest,
                        context: grpc.aio.ServicerContext) -> api_pb2.ReviseJobResponse:
        client = self.auth.client_of(context)
        parent = self.registry.get(client, _required(request.job_id, "job_id"))  # another client's: NOT_FOUND
        changes = requested_changes(request)
        if parent.job.state != job_pb2.JOB_STATE_SUCCEEDED:
            state = JobState.from_proto(parent.job.state, "unspecified")
            raise PreconditionError(f"job {parent.record.job_id} is {state}: only a job that has succeeded can be "
                                    "revised" + ("; wait for it to end" if not parent.is_terminal else ""))
        script, lyric_lines = await asyncio.to_thread(self._script_of, parent)
        check_revision(request, changes, script, lyric_lines,
                       await asyncio.to_thread(self._edit_of, parent) if changes.cuts else None)
        revision = job_revision(parent.record.job_id, changes, parent.record.revision)
        asked = api_pb2.ReviseJobRequest()
        asked.CopyFrom(request)
        asked.ClearField("request_id")
        # What a retry must repeat exactly for its request id to name the same job.
        fingerprint = hashlib.sha256(b"revise\0" + asked.SerializeToString(deterministic=True)).hexdigest()

        async def song() -> song_pb2.Song:
            return parent.record.song

        job = await self.registry.create(client, request.request_id, fingerprint, song, parent.record.options,
                                         revision)
        return api_pb2.ReviseJobResponse(job=job)

    def _script_of(self, parent: JobStatus) -> tuple[Script, list[str]]:
        """The script of a finished job, as it is, and the song's words (for the rule that no scene quotes them)."""
        layout = parent.record.layout
        try:
            script = read_artifact(self.store, layout.script, Script)
        except InvalidInputError as exc:
            raise PreconditionError(f"job {parent.record.job_id} cannot be revised: its script cannot be read "
                                    f"({exc})") from None
        lines: list[str] = []
        if "lyrics" in parent.job.artifact_keys:
            try:
                lyrics = read_artifact(self.store, parent.job.artifact_keys["lyrics"], Lyrics)
                lines = [s.text for s in lyrics.segments if s.vocal and s.text]
            except InvalidInputError:
                log.warning("job %s: its lyrics cannot be read; a revision is checked without them",
                            parent.record.job_id)
        return script, lines

    def _edit_of(self, parent: JobStatus) -> dict[str, Any] | None:
        """The edit (edit.json) of a finished job; None when it was made with hard cuts (transitions none)."""
        try:
            edit = json.loads(self.store.get_text(parent.record.layout.edit))
        except (KeyError, ValueError):
            return None
        return edit if isinstance(edit, dict) else None

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
        response.storyboard_url = response.artifact_urls.get("storyboard", "")
        response.evaluation_url = response.artifact_urls.get("evaluation", "")
        response.urls_expire_time.CopyFrom(_after(expires))

    def _inline_artifacts(self, response: api_pb2.GetJobResponse) -> None:
        keys = response.job.artifact_keys
        if "segments" in keys:
            segments = read_artifact(self.store, keys["segments"], Segmentation).to_dict()
            for segment in segments["segments"]:  # the JSON names reasons in lowercase; the proto as enum values
                segment["end_reason"] = f"SEGMENT_END_REASON_{segment['end_reason'].upper()}"
            json_format.ParseDict(segments, response.segmentation, ignore_unknown_fields=True)
        if "labels" in keys:
            json_format.ParseDict(read_artifact(self.store, keys["labels"], Labels).to_dict(), response.labels,
                                  ignore_unknown_fields=True)
        if "script" in keys:
            json_format.ParseDict(read_artifact(self.store, keys["script"], Script).to_dict(), response.script,
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
