"""What clients see of a job (job_pb2.Job): built from the manifest plus the orchestrator's live
JobEvents (clip progress is never written to the store), streamed to WatchJob callers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from services.common.errors import MvgenError, TransientError
from services.common.pb import job_pb2, music_video_service_pb2 as api_pb2, stage_pb2
from services.common.store import ArtifactStore
from gateway.pipeline.events import JobEvent
from gateway.pipeline.manifest import STAGES
from gateway.pipeline.orchestrator import RunState
from gateway.server.records import OUTPUT_STAGES, outputs_of, unread_outputs, JobRecord, StoredState, read_stored


log = logging.getLogger(__name__)
T = TypeVar('T')

TERMINAL_STATES = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)
TERMINAL_BY_MANIFEST = {"succeeded": job_pb2.JOB_STATE_SUCCEEDED, "failed": job_pb2.JOB_STATE_FAILED,
                        "cancelled": job_pb2.JOB_STATE_CANCELLED}
STAGE_ENUMS = dict(zip(STAGES, (job_pb2.STAGE_SEGMENTATION, job_pb2.STAGE_ANALYSIS, job_pb2.STAGE_SCRIPTING,
                                job_pb2.STAGE_VIDEO, job_pb2.STAGE_ASSEMBLY)))
WATCH_BACKLOG = 256  # messages a slow watcher may fall behind before it gets a fresh snapshot instead

_RUN_ENDED = object()
_CLOSED = object()


class JobStatus:
    """One job as clients see it (job_pb2.Job), kept current from the store and the orchestrator's
    events, and streamed to its watchers."""

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
        # Plain attributes, read by the metrics thread.
        self.state_name = "queued"
        self.clips_pending = 0
        self.clips_in_flight = 0
        self._live_stages: dict[str, int] = {}  # what this run's events said, by stage
        self._live_clips: dict[int, int] = {}
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Queue[Any]] = set()
        self.live: RunState | None = None  # the run in this process, while there is one
        self._stored = StoredState(None)  # what the view was last built from

    @property
    def is_terminal(self) -> bool:
        return self.job.state in TERMINAL_STATES

    def snapshot(self) -> job_pb2.Job:
        job = job_pb2.Job()
        job.CopyFrom(self.job)
        return job

    # What the store says -----------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Bring the job up to date: from the run in this process while there is one (its manifest and
        what it read, typed: nothing is read again), else from the store. An output the run has not
        handed over yet is read once, and kept while its stage's fingerprint stands."""
        live, layout, fps = self.live, self.record.layout, self.record.options.fps
        try:
            if live is not None and live.manifest is not None:
                manifest = live.manifest
                known = self._known_from(live, manifest)
                if unread_outputs(manifest, known):  # read from a worker thread, given only what it needs
                    outputs = await asyncio.to_thread(outputs_of, self.store, layout, fps,
                                                      {"stages": _fingerprints(manifest)}, known)
                else:
                    outputs = outputs_of(self.store, layout, fps, manifest, known)
                stored = StoredState(manifest, **outputs)
            else:
                stored = await asyncio.to_thread(read_stored, self.store, layout, fps)
        except Exception:  # a store hiccup must not stop the job's reporting; the next event retries
            log.warning("job %s: cannot read its state from the store", self.record.job_id, exc_info=True)
            return
        self.apply_stored(stored)

    def _known_from(self, live: RunState, manifest: dict[str, Any]) -> StoredState:
        """What this view already holds, and what the run has read, at the manifest's fingerprints."""
        known = self._stored
        fingerprints = _fingerprints(manifest)
        read_at = dict(known.read_at)
        segmentation, script, frames = known.segmentation, known.script, known.frames
        if live.segmentation is not None and "segmentation" in fingerprints:
            segmentation, frames = live.segmentation, live.frames
            read_at["segmentation"] = fingerprints["segmentation"]["fingerprint"]
        if live.script is not None and "scripting" in fingerprints:
            script = live.script
            read_at["scripting"] = fingerprints["scripting"]["fingerprint"]
        return StoredState(manifest, segmentation, script, frames, read_at)

    def apply_stored(self, stored: StoredState) -> None:
        self._stored = stored
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
            job.title = stored.script.title
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
        if stored.segmentation is None:
            return
        scenes = {scene.index: scene.text for scene in stored.script.scenes} if stored.script else {}
        previous = {c.index: c for c in self.job.clips}
        clips = []
        for segment in stored.segmentation.segments:
            index = segment.index
            clip = job_pb2.ClipStatus(index=index, start=segment.start, end=segment.end,
                                      frame_count=stored.frames[index])
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
                self.live = None  # the store says how it ended (a run that never started is settled there)
                await self.refresh()
                self._publish_snapshot()
                return
            if event.kind == "clip":
                self._on_clip(event)
            else:
                await self._on_stage(event)

    async def _on_stage(self, event: JobEvent) -> None:
        status = self.job.stages[STAGES.index(event.stage)]
        now = timestamp_now()
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
            clip.start_time.CopyFrom(timestamp_now())
            detail = f"retrying after {event.detail['reason']}"
        elif event.state == "running":
            self._live_clips[clip.index] = job_pb2.CLIP_STATE_RUNNING
            clip.state = job_pb2.CLIP_STATE_RUNNING
            clip.attempts = event.detail["attempt"]  # a try lost with a crashed gateway counts too
            clip.start_time.CopyFrom(timestamp_now())
            clip.ClearField("end_time")
        elif clip.state != job_pb2.CLIP_STATE_SUCCEEDED or event.state == "succeeded":
            self._live_clips[clip.index] = job_pb2.CLIP_STATE_SUCCEEDED
            clip.state = job_pb2.CLIP_STATE_SUCCEEDED
            clip.cached = event.state == "cached"  # copied from another job's output just now
            clip.clip_key = self.record.layout.clip(clip.index)
            clip.end_time.CopyFrom(timestamp_now())
        else:  # finished before this run (the gateway restarted): its recorded history stands
            self._live_clips[clip.index] = job_pb2.CLIP_STATE_SUCCEEDED
        clip.progress.CopyFrom(stage_pb2.ClipProgress(
            fraction=event.fraction, frames_done=round(event.fraction * clip.frame_count),
            total_frames=clip.frame_count, detail=detail))
        self._changed()
        self._publish(api_pb2.WatchJobResponse(event_time=timestamp_now(), clip=clip))

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

    def show_unrecorded_end(self, error: BaseException | None, *, cancelled: bool) -> None:
        """How the run ended, from memory: the store, which would say it, cannot be reached."""
        if cancelled:
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
        return api_pb2.WatchJobResponse(event_time=timestamp_now(), job=self.job)

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


def timestamp_now() -> Timestamp:
    now = Timestamp()
    now.GetCurrentTime()
    return now


def _fingerprints(manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The state and fingerprint of the stages whose outputs a job shows, copied from the live manifest."""
    stages = manifest.get("stages", {})
    return {stage: {"state": stages[stage].get("state", ""), "fingerprint": stages[stage].get("fingerprint", "")}
            for stage in OUTPUT_STAGES if stage in stages}
