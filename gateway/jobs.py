"""The gateway's jobs: created idempotently, run by the Orchestrator, watched, cancelled, resumed.

Everything a job needs to run again lives in the store: `jobs/<id>/job.json` (the request: song,
resolved options, client, request id, creation time) and the orchestrator's manifest beside it.
At start the registry reads every job back and starts again each one whose manifest is not
terminal; the orchestrator's fingerprints skip what finished, so nothing finished is redone.

What clients see (job_pb2.Job) is built from the manifest plus the orchestrator's live JobEvents
(clip progress is never written to the store). Store I/O runs in worker threads.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from services.common import timing
from services.common.errors import InvalidInputError, MvgenError, ResourceExhaustedError, TransientError
from services.common.pb import job_pb2, music_video_service_pb2 as api_pb2, song_pb2, stage_pb2
from services.common.stage_api import LISTENING_STORYTELLERS, ScriptInputs, SegmenterParams
from services.common.store import ArtifactStore
from services.common.transport.convert import from_message, to_message
from services.common.untrusted import quoted
from gateway.job import STAGES, JobLayout, JobOptions, Manifest
from gateway.metrics import WorkCounts
from gateway.orchestrator import JobEvent, JobSpec, Orchestrator
from gateway.stage_clients import StageClients

log = logging.getLogger(__name__)
T = TypeVar("T")

TERMINAL_STATES = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)
TERMINAL_BY_MANIFEST = {"succeeded": job_pb2.JOB_STATE_SUCCEEDED, "failed": job_pb2.JOB_STATE_FAILED,
                        "cancelled": job_pb2.JOB_STATE_CANCELLED}
STAGE_ENUMS = dict(zip(STAGES, (job_pb2.STAGE_SEGMENTATION, job_pb2.STAGE_ANALYSIS, job_pb2.STAGE_SCRIPTING,
                                job_pb2.STAGE_VIDEO, job_pb2.STAGE_ASSEMBLY)))
REQUEST_ID_TTL_SECONDS = 24 * 3600
MAX_REQUEST_ID_CHARS = 200
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000
STAGES_RETRY_SECONDS = 5.0  # while the stage services are not ready, jobs wait (QUEUED) and try again this often
WATCH_BACKLOG = 256  # messages a slow watcher may fall behind before it gets a fresh snapshot instead
# Shorter segments are not scenes, and would let one request ask for thousands of clips.
MIN_SEGMENT_SECONDS = 1.0
SEGMENT_LENGTHS = ("min_seconds", "max_seconds", "random_min_seconds", "random_max_seconds")
SETTLE_RETRY_SECONDS = 5.0  # while the store is unreachable, how often a job's end is tried again to be recorded
JOB_ID = re.compile(r"[0-9a-f]{32}")  # what new_job_id makes: checked before any lookup


class NotFoundError(MvgenError):
    """No such job or song for this client. Maps to NOT_FOUND."""


class AlreadyExistsError(MvgenError):
    """A request id reused with another song or options. Maps to ALREADY_EXISTS."""


class PreconditionError(MvgenError):
    """The call cannot work in the current state (e.g. nothing uploaded yet). Maps to FAILED_PRECONDITION."""


# --- options -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BackendChoices:
    """The backends this deployment serves; the first of each is the default."""

    analyzers: tuple[str, ...]
    writers: tuple[str, ...]
    generators: tuple[str, ...]
    storytellers: tuple[str, ...] = ()  # LALM pipeline; none: the pipeline is refused
    transcribers: tuple[str, ...] = ()  # lyrics; first = default; none: no lyrics unless a job gives its own


def resolve_options(requested: job_pb2.JobOptions, choices: BackendChoices) -> job_pb2.JobOptions:
    """The options a job runs with, every default filled in; InvalidInputError for a bad one."""
    defaults = JobOptions()
    for name in SEGMENT_LENGTHS:
        if requested.segmenter.HasField(name) and getattr(requested.segmenter, name) < MIN_SEGMENT_SECONDS:
            raise InvalidInputError(f"segmenter.{name} must be at least {MIN_SEGMENT_SECONDS:g} s "
                                    f"(got {getattr(requested.segmenter, name):g})")
    pipeline = requested.pipeline or job_pb2.PIPELINE_CLAP
    if pipeline not in job_pb2.Pipeline.values():
        raise InvalidInputError(f"unknown pipeline {pipeline}; use PIPELINE_CLAP or PIPELINE_LALM")
    lalm = pipeline == job_pb2.PIPELINE_LALM
    if lalm and not choices.storytellers:
        raise InvalidInputError("this gateway serves no audio-language model, so only the CLAP pipeline "
                                "(PIPELINE_CLAP); its operator can enable one with MVGEN_STORYTELLERS")
    # A CLAP job uses no storyteller, but one it names must be served here, as a writer it names must.
    storyteller = (_backend("storyteller", requested.storyteller, choices.storytellers)
                   if lalm or requested.storyteller else "")
    resolved = job_pb2.JobOptions(
        pipeline=pipeline,
        segmenter=to_message(from_message(requested.segmenter, SegmenterParams), stage_pb2.SegmenterParams),
        analyzer=_backend("analyzer", requested.analyzer, choices.analyzers),
        top_k=requested.top_k or defaults.top_k,
        # In the LALM pipeline an empty writer means the storyteller writes the scenes itself.
        writer=(_backend("writer", requested.writer, choices.writers) if requested.writer or not lalm else ""),
        storyteller=storyteller if lalm else "",
        fallback_writer=(_backend("fallback writer", requested.fallback_writer, choices.writers)
                         if requested.fallback_writer else ""),
        script_inputs=to_message(from_message(requested.script_inputs, ScriptInputs), stage_pb2.ScriptInputs),
        generator=_backend("generator", requested.generator, choices.generators),
        transcriber=_transcriber(requested, choices, lalm and storyteller not in LISTENING_STORYTELLERS),
        lyrics=requested.lyrics,
        seed=requested.seed,
        fps=requested.fps or defaults.fps,
        width=requested.width or defaults.width,
        height=requested.height or defaults.height,
    )
    job_options(resolved).check()
    return resolved


def _transcriber(requested: job_pb2.JobOptions, choices: BackendChoices, hears_itself: bool) -> str:
    """The lyrics transcriber: the one asked for, 'none', or the default where the job has an analysis stage."""
    if requested.transcriber == "none":
        return ""
    if requested.transcriber:
        return _backend("transcriber", requested.transcriber, choices.transcribers)
    return "" if hears_itself or not choices.transcribers else choices.transcribers[0]


def _backend(kind: str, requested: str, served: tuple[str, ...]) -> str:
    name = requested or served[0]
    if name not in served:
        raise InvalidInputError(f"unknown {kind} {quoted(name)}; "
                                f"this gateway serves: {', '.join(served) or 'none'}")
    return name


def job_options(options: job_pb2.JobOptions) -> JobOptions:
    """The orchestrator's form of resolved options."""
    return JobOptions(
        segmenter=from_message(options.segmenter, SegmenterParams),
        pipeline="lalm" if options.pipeline == job_pb2.PIPELINE_LALM else "clap", analyzer=options.analyzer,
        writer=options.writer, storyteller=options.storyteller or JobOptions.storyteller,
        fallback_writer=options.fallback_writer, generator=options.generator,
        script_inputs=from_message(options.script_inputs, ScriptInputs), seed=options.seed,
        top_k=options.top_k, fps=options.fps, width=options.width, height=options.height,
        transcriber=options.transcriber, lyrics=options.lyrics)


# --- the job's record and its view ---------------------------------------------------------------------

@dataclass(frozen=True)
class JobRecord:
    """jobs/<id>/job.json: what was asked, by whom, when."""

    job_id: str
    client: str
    request_id: str
    song: song_pb2.Song
    options: job_pb2.JobOptions
    create_time: Timestamp

    @property
    def layout(self) -> JobLayout:
        return JobLayout(prefix=f"jobs/{self.job_id}/")

    def to_json(self) -> bytes:
        return (json.dumps({
            "job_id": self.job_id, "client": self.client, "request_id": self.request_id,
            "create_time": self.create_time.ToJsonString(),
            "song": json_format.MessageToDict(self.song, preserving_proto_field_name=True),
            "options": json_format.MessageToDict(self.options, preserving_proto_field_name=True),
        }, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> JobRecord:
        d = json.loads(data)
        created = Timestamp()
        created.FromJsonString(d["create_time"])
        return cls(d["job_id"], d["client"], d["request_id"],
                   json_format.ParseDict(d["song"], song_pb2.Song()),
                   json_format.ParseDict(d["options"], job_pb2.JobOptions()), created)

    def spec(self) -> JobSpec:
        song = self.song
        return JobSpec(job_id=self.job_id, layout=self.layout, song_key=song.song_key,
                       song={"sha256": song.sha256, "source_name": song.file_name, "key": song.song_key,
                             "duration": song.duration_seconds, "sample_rate": song.sample_rate_hz,
                             "channels": song.channels},
                       options=job_options(self.options))


@dataclass(frozen=True)
class StoredState:
    """What the store says about a job: its manifest and, once written, segments and script."""

    manifest: dict[str, Any] | None
    segments: list[dict[str, Any]]
    script: dict[str, Any] | None


def read_stored(store: ArtifactStore, layout: JobLayout) -> StoredState:
    """Blocking: call from a worker thread."""
    manifest = _read_json(store, layout.manifest)
    stages = (manifest or {}).get("stages", {})
    segments = script = None
    if stages.get("segmentation", {}).get("state") == "succeeded":
        segments = _read_json(store, layout.segments)
    if stages.get("scripting", {}).get("state") == "succeeded":
        script = _read_json(store, layout.script)
    return StoredState(manifest, (segments or {}).get("segments", []), script)


_RUN_ENDED = object()
_CLOSED = object()


class JobView:
    """One job as clients see it, kept current from the store and the orchestrator's events."""

    def __init__(self, record: JobRecord, store: ArtifactStore, observe_stage: Callable[[str, float], None]):
        self.record = record
        self.store = store
        self.observe_stage = observe_stage
        options = record.options
        backends = (options.segmenter.segmenter, options.analyzer, options.writer, options.generator, "")
        self.job = job_pb2.Job(
            job_id=record.job_id, request_id=record.request_id, state=job_pb2.JOB_STATE_QUEUED,
            options=options, song=record.song, create_time=record.create_time, update_time=record.create_time,
            stages=[job_pb2.StageStatus(stage=STAGE_ENUMS[name], state=job_pb2.STAGE_STATE_PENDING, backend=backend)
                    for name, backend in zip(STAGES, backends)],
            artifact_keys={"song": record.song.song_key})
        self.orchestrator: Orchestrator | None = None
        self.runner: asyncio.Task[None] | None = None  # the whole run, settling included
        self.work: asyncio.Task[Any] | None = None  # the cancellable part: waiting for a slot, the orchestrator
        self.user_cancelled = False
        self.interrupted = False
        # Plain attributes, read by the metrics thread.
        self.state_name = "queued"
        self.clips_pending = 0
        self.clips_in_flight = 0
        self._live_stages: dict[str, int] = {}  # what this run's events said, by stage
        self._live_clips: dict[int, int] = {}
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Queue[Any]] = set()

    @property
    def is_terminal(self) -> bool:
        return self.job.state in TERMINAL_STATES

    def snapshot(self) -> job_pb2.Job:
        job = job_pb2.Job()
        job.CopyFrom(self.job)
        return job

    # What the store says -----------------------------------------------------------------------------

    async def refresh(self) -> None:
        try:
            stored = await asyncio.to_thread(read_stored, self.store, self.record.layout)
        except Exception:  # a store hiccup must not stop the job's reporting; the next event retries
            log.warning("job %s: cannot read its state from the store", self.record.job_id, exc_info=True)
            return
        self.apply_stored(stored)

    def apply_stored(self, stored: StoredState) -> None:
        manifest = stored.manifest or {}
        job = self.job
        recorded = manifest.get("state")
        if recorded in TERMINAL_BY_MANIFEST:
            job.state = TERMINAL_BY_MANIFEST[recorded]
        elif recorded == "running" and self._live_stages:
            job.state = job_pb2.JOB_STATE_RUNNING
        else:
            job.state = job_pb2.JOB_STATE_QUEUED
        terminal = job.state in TERMINAL_STATES
        job.error_message = (manifest.get("error") or "") if job.state == job_pb2.JOB_STATE_FAILED else ""

        stage_records = manifest.get("stages", {})
        for name, status in zip(STAGES, job.stages):
            record = stage_records.get(name, {})
            status.state = self._stage_state(name, record.get("state", "pending"), job.state)
            # Cached: copied from another job's output. What this job made before a restart is its own.
            status.cached = status.state == job_pb2.STAGE_STATE_SUCCEEDED and "reused_from" in record
            status.artifact_keys.clear()
            status.artifact_keys.update(record.get("outputs", {}))
            if name != "video":
                job.artifact_keys.update(record.get("outputs", {}))
            status.error_message = (record.get("error") or "") if status.state == job_pb2.STAGE_STATE_FAILED else ""
            status.info.Clear()
            status.info.update(record.get("info") or {})
            if record.get("started_at") and not status.HasField("start_time"):
                status.start_time.FromJsonString(record["started_at"])
            if (status.state in (job_pb2.STAGE_STATE_SUCCEEDED, job_pb2.STAGE_STATE_FAILED)
                    and not status.HasField("end_time") and status.HasField("start_time") and "seconds" in record):
                status.end_time.FromNanoseconds(status.start_time.ToNanoseconds() + int(record["seconds"] * 1e9))

        self._apply_clips(stored, manifest.get("clips", {}), job.error_message)
        video = job.stages[STAGES.index("video")]
        video.cached = video.state == job_pb2.STAGE_STATE_SUCCEEDED and all(c.cached for c in job.clips)
        if stored.script:
            job.title = stored.script.get("title", "")
        started = [s.start_time for s in job.stages if s.HasField("start_time")]
        if started and not job.HasField("start_time"):
            job.start_time.CopyFrom(min(started, key=lambda t: t.ToNanoseconds()))
        if terminal and not job.HasField("end_time"):
            if manifest.get("updated_at"):
                job.end_time.FromJsonString(manifest["updated_at"])
            else:
                job.end_time.GetCurrentTime()
        self._changed()

    def _stage_state(self, name: str, recorded: str, job_state: int) -> int:
        if recorded == "succeeded":
            return job_pb2.STAGE_STATE_SUCCEEDED
        if recorded == "skipped":
            return job_pb2.STAGE_STATE_SKIPPED
        if job_state == job_pb2.JOB_STATE_CANCELLED:
            return job_pb2.STAGE_STATE_CANCELLED
        if job_state == job_pb2.JOB_STATE_FAILED:
            return job_pb2.STAGE_STATE_FAILED if recorded == "failed" else job_pb2.STAGE_STATE_CANCELLED
        # A live job: a "running" or "failed" record may be left from an interrupted run; this run's events decide.
        return self._live_stages.get(name, job_pb2.STAGE_STATE_PENDING)

    def _apply_clips(self, stored: StoredState, clip_records: dict[str, Any], job_error: str) -> None:
        if not stored.segments:
            return
        fps = self.record.options.fps
        scenes = {s["index"]: s["text"] for s in (stored.script or {}).get("scenes", [])}
        previous = {c.index: c for c in self.job.clips}
        clips = []
        for segment in stored.segments:
            index = segment["index"]
            clip = job_pb2.ClipStatus(index=index, start=segment["start"], end=segment["end"],
                                      frame_count=timing.frame_count(segment["start"], segment["end"], fps))
            if index in previous:  # keeps what only events know: progress, attempts, times, cached
                clip.CopyFrom(previous[index])
            clip.scene_text = scenes.get(index, "")
            record = clip_records.get(f"{index:04d}", {})
            clip.state = self._clip_state(index, record, job_error)
            if clip.state == job_pb2.CLIP_STATE_SUCCEEDED:
                clip.clip_key = record.get("outputs", {}).get("clip") or self.record.layout.clip(index)
                _recorded_history(clip, record)
            clip.error_message = (record.get("error") or "") if clip.state == job_pb2.CLIP_STATE_FAILED else ""
            clips.append(clip)
        del self.job.clips[:]
        self.job.clips.extend(clips)

    def _clip_state(self, index: int, record: dict[str, Any], job_error: str) -> int:
        recorded = record.get("state", "pending")
        if recorded == "succeeded":
            return job_pb2.CLIP_STATE_SUCCEEDED
        if self.job.state == job_pb2.JOB_STATE_FAILED and recorded == "failed" and record.get("error") == job_error:
            return job_pb2.CLIP_STATE_FAILED  # the clip that failed the job; the others were stopped
        if self.job.state in (job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED):
            return job_pb2.CLIP_STATE_CANCELLED
        return self._live_clips.get(index, job_pb2.CLIP_STATE_PENDING)

    # Live events ---------------------------------------------------------------------------------------

    def begin_run(self) -> None:
        self._pump = asyncio.ensure_future(self._pump_events())

    async def end_run(self) -> None:
        """After the run: report what the store says now (the terminal state, or queued if interrupted)."""
        self._events.put_nowait(_RUN_ENDED)
        if self._pump is not None:
            await self._pump

    def on_event(self, event: JobEvent) -> None:
        self._events.put_nowait(event)  # the orchestrator calls this on the event loop, and must not wait

    async def _pump_events(self) -> None:
        while True:
            event = await self._events.get()
            if event is _RUN_ENDED:
                # What this run's events said is over; an interrupted job shows as waiting to resume.
                self._live_stages.clear()
                self._live_clips.clear()
                await self.refresh()
                self._publish_snapshot()
                return
            if event.kind == "clip":
                self._on_clip(event)
            else:
                await self._on_stage(event)

    async def _on_stage(self, event: JobEvent) -> None:
        status = self.job.stages[STAGES.index(event.stage)]
        now = _now()
        if event.state == "progress":  # a part of the stage done (scripting: the plan, a section): no refresh
            detail = event.detail or {}
            status.progress.CopyFrom(stage_pb2.StageProgress(
                done=detail.get("done", 0), total=detail.get("total", 0), fraction=event.fraction,
                detail=detail.get("what", "")))
            self._changed()
            self._publish(api_pb2.WatchJobResponse(event_time=now, stage=status))
            return
        if event.state == "running":
            self._live_stages[event.stage] = job_pb2.STAGE_STATE_RUNNING
            status.start_time.CopyFrom(now)
            status.ClearField("end_time")
        elif event.state in ("succeeded", "cached"):
            self._live_stages[event.stage] = job_pb2.STAGE_STATE_SUCCEEDED
            if event.state == "succeeded":
                status.end_time.CopyFrom(now)
        elif event.state == "failed":
            self._live_stages[event.stage] = job_pb2.STAGE_STATE_FAILED
            status.end_time.CopyFrom(now)
        elif event.state == "skipped":
            self._live_stages[event.stage] = job_pb2.STAGE_STATE_SKIPPED
        state, clip_count, title = self.job.state, len(self.job.clips), self.job.title
        await self.refresh()
        if event.state == "succeeded" and status.HasField("start_time"):
            self.observe_stage(event.stage, (status.end_time.ToNanoseconds() - status.start_time.ToNanoseconds()) / 1e9)
        # A snapshot when the job's state changes, and when the clip list or the title appear (no delta says those).
        if (self.job.state, len(self.job.clips), self.job.title) != (state, clip_count, title):
            self._publish_snapshot()
        else:
            self._publish(api_pb2.WatchJobResponse(event_time=now, stage=status))

    def _on_clip(self, event: JobEvent) -> None:
        clip = next((c for c in self.job.clips if c.index == event.clip_index), None)
        if clip is None:  # not listed yet: the refresh after segmentation brings it
            return
        detail = "done" if event.fraction >= 1.0 else "generating"
        if event.state == "progress":
            if round(event.fraction * 100) <= round(clip.progress.fraction * 100):
                return  # streamed in whole percents
        elif event.state == "retrying":
            # A new generation from nothing, on another replica or on the same one once it is back.
            clip.attempts = event.detail["attempt"]
            clip.start_time.CopyFrom(_now())
            detail = f"retrying after {event.detail['reason']}"
        elif event.state == "running":
            self._live_clips[clip.index] = job_pb2.CLIP_STATE_RUNNING
            clip.state = job_pb2.CLIP_STATE_RUNNING
            clip.attempts = event.detail["attempt"]  # a try lost with a crashed gateway counts too
            clip.start_time.CopyFrom(_now())
            clip.ClearField("end_time")
        elif clip.state != job_pb2.CLIP_STATE_SUCCEEDED or event.state == "succeeded":
            self._live_clips[clip.index] = job_pb2.CLIP_STATE_SUCCEEDED
            clip.state = job_pb2.CLIP_STATE_SUCCEEDED
            clip.cached = event.state == "cached"  # copied from another job's output just now
            clip.clip_key = self.record.layout.clip(clip.index)
            clip.end_time.CopyFrom(_now())
        else:  # finished before this run (the gateway restarted): its recorded history stands
            self._live_clips[clip.index] = job_pb2.CLIP_STATE_SUCCEEDED
        clip.progress.CopyFrom(stage_pb2.ClipProgress(
            fraction=event.fraction, frames_done=round(event.fraction * clip.frame_count),
            total_frames=clip.frame_count, detail=detail))
        self._changed()
        self._publish(api_pb2.WatchJobResponse(event_time=_now(), clip=clip))

    def _changed(self) -> None:
        self.job.update_time.GetCurrentTime()
        self.state_name = job_pb2.JobState.Name(self.job.state).removeprefix("JOB_STATE_").lower()
        live = not self.is_terminal
        self.clips_pending = sum(live and c.state == job_pb2.CLIP_STATE_PENDING for c in self.job.clips)
        self.clips_in_flight = sum(live and c.state == job_pb2.CLIP_STATE_RUNNING for c in self.job.clips)

    # Watchers ------------------------------------------------------------------------------------------

    async def watch(self) -> AsyncIterator[api_pb2.WatchJobResponse]:
        """A snapshot, then changes in order, ending after the snapshot of a terminal state."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=WATCH_BACKLOG)
        queue.put_nowait(self._snapshot_message())
        self._watchers.add(queue)
        try:
            while True:
                message = await queue.get()
                if message is _CLOSED:
                    raise TransientError("the gateway is restarting; watch the job again to resume")
                yield message
                if message.HasField("job") and message.job.state in TERMINAL_STATES:
                    return
        finally:
            self._watchers.discard(queue)

    def show_unrecorded_end(self, error: BaseException | None) -> None:
        """How the run ended, from memory: the store, which would say it, cannot be reached."""
        if self.user_cancelled:
            self.job.state, self.job.error_message = job_pb2.JOB_STATE_CANCELLED, ""
        elif error is None:  # the orchestrator wrote "succeeded" itself; only reading it back failed
            self.job.state, self.job.error_message = job_pb2.JOB_STATE_SUCCEEDED, ""
        else:
            self.job.state = job_pb2.JOB_STATE_FAILED
            self.job.error_message = str(error) if isinstance(error, MvgenError) else f"internal error: {error!r}"
        self.job.end_time.GetCurrentTime()
        self._changed()
        self._publish_snapshot()

    def close_watchers(self) -> None:
        for queue in self._watchers:
            _replace_backlog(queue, _CLOSED)

    def _publish_snapshot(self) -> None:
        self._publish(self._snapshot_message())

    def _snapshot_message(self) -> api_pb2.WatchJobResponse:
        return api_pb2.WatchJobResponse(event_time=_now(), job=self.job)

    def _publish(self, message: api_pb2.WatchJobResponse) -> None:
        for queue in self._watchers:
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:  # a slow watcher: what it missed is summed up by a snapshot
                _replace_backlog(queue, self._snapshot_message())


def _recorded_history(clip: job_pb2.ClipStatus, record: dict[str, Any]) -> None:
    """A finished clip as its manifest record says it went: made here (how many attempts, when) or
    copied from another job's output. A record written before clips kept their history has no end."""
    if "ended_at" not in record:
        return
    clip.cached = "reused_from" in record
    clip.attempts = record.get("attempts", 0)
    if record.get("started_at"):
        clip.start_time.FromJsonString(record["started_at"])
    else:
        clip.ClearField("start_time")
    clip.end_time.FromJsonString(record["ended_at"])
    clip.progress.CopyFrom(stage_pb2.ClipProgress(fraction=1.0, frames_done=clip.frame_count,
                                                  total_frames=clip.frame_count, detail="done"))


def _replace_backlog(queue: asyncio.Queue[Any], message: Any) -> None:
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(message)


# --- the registry ----------------------------------------------------------------------------------

class JobRegistry:
    def __init__(self, store: ArtifactStore, stages: StageClients, *, max_active_jobs: int,
                 observe_stage: Callable[[str, float], None], max_jobs_per_client: int = 0,
                 shared_cache: bool = False):
        """`max_jobs_per_client`: jobs one client may have queued or running at once (0: no limit).
        `shared_cache`: one output cache for every client (see output_cache)."""
        self.store = store
        self.stages = stages
        self.observe_stage = observe_stage
        self.max_jobs_per_client = max_jobs_per_client
        self.shared_cache = shared_cache
        self._creating: dict[str, int] = {}  # per client, jobs being created (their song is probed)
        self._views: dict[str, JobView] = {}
        self._slots = asyncio.Semaphore(max(1, max_active_jobs))
        # Concurrent CreateJob calls with one request id wait for each other; the store record covers restarts.
        self._request_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Read every job back from the store and start again those that had not ended."""
        records = await asyncio.to_thread(self._load_records)
        for record, stored in records:
            view = JobView(record, self.store, self.observe_stage)
            view.apply_stored(stored)
            self._views[record.job_id] = view
            if not view.is_terminal:
                log.info("resuming job %s", record.job_id)
                self._launch(view)

    def _load_records(self) -> list[tuple[JobRecord, StoredState]]:
        loaded = []
        for key in self.store.list("jobs/"):
            parts = key.split("/")
            if len(parts) != 3 or parts[2] != "job.json":
                continue
            try:
                record = JobRecord.from_json(self.store.get_bytes(key))
                loaded.append((record, read_stored(self.store, record.layout)))
            except (ValueError, KeyError):
                log.exception("skipping unreadable job record %s", key)
        return loaded

    async def create(self, client: str, request_id: str, request_fingerprint: str,
                     song: Callable[[], Awaitable[song_pb2.Song]], options: job_pb2.JobOptions) -> job_pb2.Job:
        """A new job, or the one an earlier call with the same request id made. `song` resolves (and
        probes) the song; it is called only when a job is created."""
        if self._closing:
            raise TransientError("the gateway is shutting down; retry")
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidInputError(f"request_id is longer than {MAX_REQUEST_ID_CHARS} characters")
        if not request_id:
            return await self._create_counted(client, request_id, song, options)
        lock = self._request_locks.setdefault((client, request_id), asyncio.Lock())
        async with lock:
            key = f"requests/{client}/{hashlib.sha256(request_id.encode()).hexdigest()}.json"
            earlier = await asyncio.to_thread(_read_json, self.store, key)
            fresh = earlier and time.time() - earlier["created"] < REQUEST_ID_TTL_SECONDS
            if fresh and earlier["job_id"] in self._views:
                if earlier["request_fingerprint"] != request_fingerprint:
                    raise AlreadyExistsError(f"request_id {quoted(request_id)} was used for job {earlier['job_id']} "
                                             "with another song or options")
                return self._views[earlier["job_id"]].snapshot()
            job = await self._create_counted(client, request_id, song, options)
            entry = {"job_id": job.job_id, "request_fingerprint": request_fingerprint, "created": time.time()}
            await asyncio.to_thread(self.store.put_bytes, key, json.dumps(entry).encode())
            return job

    async def _create_counted(self, client: str, request_id: str, song: Callable[[], Awaitable[song_pb2.Song]],
                              options: job_pb2.JobOptions) -> job_pb2.Job:
        """_create within the client's limit; a job being created counts from the start (no await
        between the count and the reservation), so concurrent calls cannot all slip under it."""
        live = self._creating.get(client, 0) + sum(
            v.record.client == client and not v.is_terminal for v in self._views.values())
        if self.max_jobs_per_client and live >= self.max_jobs_per_client:
            raise ResourceExhaustedError(
                f"you have {live} jobs queued or running; one client may have at most {self.max_jobs_per_client} "
                "at once: wait for one to end, or cancel one")
        self._creating[client] = self._creating.get(client, 0) + 1
        try:
            return await self._create(client, request_id, await song(), options)
        finally:
            self._creating[client] -= 1

    async def _create(self, client: str, request_id: str, song: song_pb2.Song,
                      options: job_pb2.JobOptions) -> job_pb2.Job:
        record = JobRecord(new_job_id(), client, request_id, song, options, _now())
        await asyncio.to_thread(self.store.put_bytes, record.layout.key("job.json"), record.to_json())
        view = JobView(record, self.store, self.observe_stage)
        self._views[record.job_id] = view
        log.info("job %s created by client %s for song %s", record.job_id, client, song.song_id)
        self._launch(view)
        return view.snapshot()

    def get(self, client: str, job_id: str) -> JobView:
        if not JOB_ID.fullmatch(job_id):
            raise InvalidInputError("job_id must be the 32 hexadecimal digits CreateJob returned, "
                                    f"not {quoted(job_id)}")
        view = self._views.get(job_id)
        if view is None or view.record.client != client:  # another client's job is as unknown as none
            raise NotFoundError(f"no job {quoted(job_id)}")
        return view

    def list(self, client: str, state: int, page_size: int, page_token: str) -> tuple[list[job_pb2.Job], str]:
        if state and state not in job_pb2.JobState.values():
            raise InvalidInputError(f"unknown job state {state}")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if size < 0:
            raise InvalidInputError("page_size must not be negative")
        views = sorted((v for v in self._views.values()
                        if v.record.client == client and (not state or v.job.state == state)),
                       key=_listing_key, reverse=True)
        if page_token:
            after = _decode_page_token(page_token, state)
            views = [v for v in views if _listing_key(v) < after]
        page = views[:size]
        token = _encode_page_token(_listing_key(page[-1]), state) if len(views) > size else ""
        return [v.snapshot() for v in page], token

    async def cancel(self, client: str, job_id: str) -> job_pb2.Job:
        view = self.get(client, job_id)
        if view.is_terminal or view.runner is None:
            return view.snapshot()
        if not view.user_cancelled:
            view.user_cancelled = True
            if view.orchestrator is not None:
                view.orchestrator.cancel()  # the stage clients stop in-flight clips
            if view.work is not None:
                view.work.cancel()  # stops the stage call in progress and a job still waiting for a slot
        await asyncio.wait([view.runner])
        return view.snapshot()

    async def close(self) -> None:
        """Stop every running job so that it resumes at the next start, and end the watches."""
        self._closing = True
        runners = []
        for view in self._views.values():
            if view.runner is None or view.runner.done():
                continue
            if not view.user_cancelled:
                view.interrupted = True
                if view.orchestrator is not None:
                    view.orchestrator.cancel(interrupted=True)
                if view.work is not None:
                    view.work.cancel()
            runners.append(view.runner)
        if runners:
            await asyncio.wait(runners)
        for task in self._background:
            task.cancel()
        for view in self._views.values():
            view.close_watchers()

    def counts(self) -> WorkCounts:
        views = list(self._views.values())  # called from the metrics thread: take a copy first
        by_state: dict[str, int] = {}
        for view in views:
            by_state[view.state_name] = by_state.get(view.state_name, 0) + 1
        return WorkCounts(by_state, sum(v.clips_pending for v in views), sum(v.clips_in_flight for v in views))

    # Running -------------------------------------------------------------------------------------------

    def _launch(self, view: JobView) -> None:
        view.runner = asyncio.ensure_future(self._run(view))

    async def _run(self, view: JobView) -> None:
        view.begin_run()
        view.work = asyncio.ensure_future(self._work(view))
        await asyncio.wait([view.work])
        error = None if view.work.cancelled() else view.work.exception()
        if error is not None and not isinstance(error, MvgenError):
            log.error("job %s failed", view.record.job_id, exc_info=error)
        view.orchestrator = None
        try:
            await asyncio.to_thread(self._settle, view, error)
            recorded = True
        except MvgenError as exc:  # the store is unreachable: said in a line, no traceback needed
            log.warning("job %s: cannot record how it ended: %s", view.record.job_id, exc)
            recorded = False
        except Exception:
            log.exception("job %s: cannot record how it ended", view.record.job_id)
            recorded = False
        await view.end_run()
        if not recorded and not view.interrupted:
            # The store is unreachable: say how the job ended from memory, and record it once the store is back.
            view.show_unrecorded_end(error)
            self._spawn(self._settle_later(view, error))
        log.info("job %s %s", view.record.job_id, "interrupted" if view.interrupted else view.state_name)

    async def _settle_later(self, view: JobView, error: BaseException | None) -> None:
        while not self._closing:
            await asyncio.sleep(SETTLE_RETRY_SECONDS)
            try:
                await asyncio.to_thread(self._settle, view, error)
            except Exception as exc:
                log.warning("job %s: still cannot record how it ended: %s", view.record.job_id, exc)
                continue
            await view.refresh()
            return

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _work(self, view: JobView) -> None:
        async with self._slots:
            while True:
                try:
                    await self.stages.wait_ready()
                    break
                except TransientError as exc:
                    log.warning("job %s waits for the stages: %s", view.record.job_id, exc)
                    await asyncio.sleep(STAGES_RETRY_SECONDS)
            view.orchestrator = Orchestrator(self.store, self.stages, on_event=view.on_event,
                                             output_cache=output_cache(view.record.client, self.shared_cache))
            await view.orchestrator.run(view.record.spec())

    def _settle(self, view: JobView, error: BaseException | None) -> None:
        """Make the manifest say how the run ended where the orchestrator could not: a job cancelled
        or failed before it started. (A shutdown leaves it as it is: unfinished, so it resumes.)"""
        if view.interrupted:
            return
        record = view.record
        manifest = _read_json(self.store, record.layout.manifest)
        if manifest is not None and manifest["state"] in TERMINAL_BY_MANIFEST:
            return
        spec = record.spec()
        opened = Manifest.open(self.store, spec.layout, spec.job_id, spec.song, spec.options)
        if view.user_cancelled:
            opened.finish_now("cancelled", "cancelled by the user")
        else:
            opened.finish_now("failed", str(error) if isinstance(error, MvgenError) else f"internal error: {error!r}")


def new_job_id() -> str:
    return uuid.uuid4().hex


def output_cache(client: str, shared: bool) -> str:
    """Where a client's jobs publish and find outputs by fingerprint. Each client has its own cache:
    a job reuses only what the same client's jobs made, so a reused output ("cached") tells nobody
    that someone else processed the same song. A deployment may share one cache among all its
    clients (MVGEN_SHARED_CACHE) to save the work, at the cost of that knowledge."""
    return "cache/shared/" if shared else f"cache/clients/{client}/"


def _listing_key(view: JobView) -> tuple[int, str]:
    """Jobs are listed in descending order of this key: newest first, ties broken by id."""
    return view.record.create_time.ToNanoseconds(), view.record.job_id


def _encode_page_token(key: tuple[int, str], state: int) -> str:
    raw = json.dumps({"after": [key[0], key[1]], "state": state}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_page_token(token: str, state: int) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        after = (int(data["after"][0]), str(data["after"][1]))
    except (ValueError, KeyError, IndexError, TypeError):
        raise InvalidInputError("page_token is not one this gateway returned") from None
    if data.get("state") != state:
        raise InvalidInputError("page_token belongs to a listing with another state filter")
    return after


def _read_json(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes(key))
    except KeyError:
        return None


def _now() -> Timestamp:
    now = Timestamp()
    now.GetCurrentTime()
    return now
