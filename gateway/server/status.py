"""What clients see of a job (job_pb2.Job): built from the manifest plus the orchestrator's live
JobEvents (clip progress is never written to the store), streamed to WatchJob callers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from services.common.errors import MvgenError, TransientError
from services.common.pb import job_pb2, stage_pb2
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.store import ArtifactStore
from gateway.pipeline.events import JobEvent
from gateway.pipeline.orchestrator import RunState
from gateway.pipeline.states import STAGES, ClipState, EventKind, EventState, JobState, Stage, StageState
from gateway.server.records import JobRecord, StoredState, read_stored

log = logging.getLogger(__name__)
T = TypeVar('T')

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
        backends = (options.segmenter.segmenter, options.analyzer, options.writer, options.generator, "", "review")
        self.job = job_pb2.Job(
            job_id=record.job_id, request_id=record.request_id, state=JobState.QUEUED.proto,
            options=options, song=record.song, create_time=record.create_time, update_time=record.create_time,
            revision=record.revision,
            stages=[job_pb2.StageStatus(stage=stage.proto, state=StageState.PENDING.proto, backend=backend)
                    for stage, backend in zip(STAGES, backends)],
            artifact_keys={"song": record.song.song_key})
        # Plain attributes, read by the metrics thread.
        self.state_name = JobState.QUEUED.value
        self.clips_pending = 0
        self.clips_in_flight = 0
        self._live_stages: dict[Stage, StageState] = {}  # what this run's events said, by stage
        self._live_clips: dict[int, ClipState] = {}
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Queue[Any]] = set()
        self.live: RunState | None = None  # the run in this process, while there is one

    @property
    def is_terminal(self) -> bool:
        return JobState.proto_is_terminal(self.job.state)

    def snapshot(self) -> job_pb2.Job:
        job = job_pb2.Job()
        job.CopyFrom(self.job)
        return job

    # What the store says -----------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Bring the job up to date: from the run in this process while there is one (its manifest and the
        outputs it read, typed: nothing is read again; the run keeps an output before it reports its stage
        done), else from the store."""
        live = self.live
        if live is not None and live.manifest is not None:
            self.apply_stored(StoredState(live.manifest, live.segmentation, live.script, live.frames))
            return
        try:
            stored = await asyncio.to_thread(read_stored, self.store, self.record.layout, self.record.options.fps)
        except Exception:  # a store hiccup must not stop the job's reporting; the next event retries
            log.warning("job %s: cannot read its state from the store", self.record.job_id, exc_info=True)
            return
        self.apply_stored(stored)

    def apply_stored(self, stored: StoredState) -> None:
        manifest = stored.manifest or {}
        job = self.job
        recorded = JobState.from_record(manifest.get("state"), JobState.QUEUED)
        if recorded.is_terminal:
            state = recorded
        elif recorded == JobState.RUNNING and self._live_stages:
            state = JobState.RUNNING
        else:  # not started in this process yet, or interrupted: waiting to run
            state = JobState.QUEUED
        job.state = state.proto
        job.error_message = (manifest.get("error") or "") if state == JobState.FAILED else ""

        stage_records = manifest.get("stages", {})
        for stage, status in zip(STAGES, job.stages):
            record = stage_records.get(stage, {})
            recorded_stage = StageState.from_record(record.get("state"), StageState.PENDING)
            stage_state = self._stage_state(stage, recorded_stage, state)
            status.state = stage_state.proto
            # Cached: copied from another job's output. What this job made before a restart is its own.
            status.cached = stage_state == StageState.SUCCEEDED and "reused_from" in record
            status.artifact_keys.clear()
            status.artifact_keys.update(record.get("outputs", {}))
            if stage != Stage.VIDEO:
                job.artifact_keys.update(record.get("outputs", {}))
            status.error_message = (record.get("error") or "") if stage_state == StageState.FAILED else ""
            status.info.Clear()
            status.info.update(record.get("info") or {})
            if record.get("started_at") and not status.HasField("start_time"):
                status.start_time.FromJsonString(record["started_at"])
            if (stage_state in (StageState.SUCCEEDED, StageState.FAILED)
                    and not status.HasField("end_time") and status.HasField("start_time") and "seconds" in record):
                status.end_time.FromNanoseconds(status.start_time.ToNanoseconds() + int(record["seconds"] * 1e9))

        self._apply_clips(stored, manifest.get("clips", {}), job.error_message)
        video = job.stages[STAGES.index(Stage.VIDEO)]
        video.cached = video.state == StageState.SUCCEEDED.proto and all(c.cached for c in job.clips)
        if stored.script:
            job.title = stored.script.title
        started = [s.start_time for s in job.stages if s.HasField("start_time")]
        if started and not job.HasField("start_time"):
            job.start_time.CopyFrom(min(started, key=lambda t: t.ToNanoseconds()))
        if state.is_terminal and not job.HasField("end_time"):
            if manifest.get("updated_at"):
                job.end_time.FromJsonString(manifest["updated_at"])
            else:
                job.end_time.GetCurrentTime()
        self._changed()

    def _stage_state(self, stage: Stage, recorded: StageState, job_state: JobState) -> StageState:
        if recorded in (StageState.SUCCEEDED, StageState.SKIPPED):
            return recorded
        if job_state == JobState.CANCELLED:
            return StageState.CANCELLED
        if job_state == JobState.FAILED:
            return StageState.FAILED if recorded == StageState.FAILED else StageState.CANCELLED
        # A live job: a "running" or "failed" record may be left from an interrupted run; this run's events decide.
        return self._live_stages.get(stage, StageState.PENDING)

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
            clip_state = self._clip_state(index, record, job_error)
            clip.state = clip_state.proto
            if clip_state == ClipState.SUCCEEDED:
                clip.clip_key = record.get("outputs", {}).get("clip") or self.record.layout.clip(index)
                _recorded_history(clip, record)
            clip.error_message = (record.get("error") or "") if clip_state == ClipState.FAILED else ""
            clips.append(clip)
        del self.job.clips[:]
        self.job.clips.extend(clips)

    def _clip_state(self, index: int, record: dict[str, Any], job_error: str) -> ClipState:
        recorded = ClipState.from_record(record.get("state"), ClipState.PENDING)
        if recorded == ClipState.SUCCEEDED:
            return ClipState.SUCCEEDED
        job_state = JobState.from_proto(self.job.state)
        if job_state == JobState.FAILED and recorded == ClipState.FAILED and record.get("error") == job_error:
            return ClipState.FAILED  # the clip that failed the job; the others were stopped
        if job_state in (JobState.FAILED, JobState.CANCELLED):
            return ClipState.CANCELLED
        return self._live_clips.get(index, ClipState.PENDING)

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
            if event.kind == EventKind.CLIP:
                self._on_clip(event)
            else:
                await self._on_stage(event)

    async def _on_stage(self, event: JobEvent) -> None:
        status = self.job.stages[STAGES.index(event.stage)]
        now = timestamp_now()
        if event.state == EventState.PROGRESS:  # a part of the stage done (scripting: the plan, a section): no refresh
            detail = event.detail or {}
            status.progress.CopyFrom(stage_pb2.StageProgress(
                done=detail.get("done", 0), total=detail.get("total", 0), fraction=event.fraction,
                detail=detail.get("what", "")))
            self._changed()
            self._publish(api_pb2.WatchJobResponse(event_time=now, stage=status))
            return
        if event.state == EventState.RUNNING:
            self._live_stages[event.stage] = StageState.RUNNING
            status.start_time.CopyFrom(now)
            status.ClearField("end_time")
        elif event.state in (EventState.SUCCEEDED, EventState.CACHED):
            self._live_stages[event.stage] = StageState.SUCCEEDED
            if event.state == EventState.SUCCEEDED:
                status.end_time.CopyFrom(now)
        elif event.state == EventState.FAILED:
            self._live_stages[event.stage] = StageState.FAILED
            status.end_time.CopyFrom(now)
        elif event.state == EventState.SKIPPED:
            self._live_stages[event.stage] = StageState.SKIPPED
        state, clip_count, title = self.job.state, len(self.job.clips), self.job.title
        await self.refresh()
        if event.state == EventState.SUCCEEDED and status.HasField("start_time"):
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
        facts = event.detail or {}  # a retry's and a start's: the attempt, and why it is retried
        if event.state == EventState.PROGRESS:
            if round(event.fraction * 100) <= round(clip.progress.fraction * 100):
                return  # streamed in whole percents
        elif event.state == EventState.RETRYING:
            # A new generation from nothing, on another replica or on the same one once it is back.
            clip.attempts = facts["attempt"]
            clip.start_time.CopyFrom(timestamp_now())
            detail = f"retrying after {facts['reason']}"
        elif event.state == EventState.RUNNING:
            self._live_clips[clip.index] = ClipState.RUNNING
            clip.state = ClipState.RUNNING.proto
            clip.attempts = facts["attempt"]  # a try lost with a crashed gateway counts too
            clip.start_time.CopyFrom(timestamp_now())
            clip.ClearField("end_time")
        elif clip.state != ClipState.SUCCEEDED.proto or event.state == EventState.SUCCEEDED:
            self._live_clips[clip.index] = ClipState.SUCCEEDED
            clip.state = ClipState.SUCCEEDED.proto
            clip.cached = event.state == EventState.CACHED  # copied from another job's output just now
            clip.clip_key = self.record.layout.clip(clip.index)
            clip.end_time.CopyFrom(timestamp_now())
        else:  # finished before this run (the gateway restarted): its recorded history stands
            self._live_clips[clip.index] = ClipState.SUCCEEDED
        clip.progress.CopyFrom(stage_pb2.ClipProgress(
            fraction=event.fraction, frames_done=round(event.fraction * clip.frame_count),
            total_frames=clip.frame_count, detail=detail))
        self._changed()
        self._publish(api_pb2.WatchJobResponse(event_time=timestamp_now(), clip=clip))

    def _changed(self) -> None:
        self.job.update_time.GetCurrentTime()
        self.state_name = JobState.from_proto(self.job.state).value
        live = not self.is_terminal
        self.clips_pending = sum(live and c.state == ClipState.PENDING.proto for c in self.job.clips)
        self.clips_in_flight = sum(live and c.state == ClipState.RUNNING.proto for c in self.job.clips)

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
                if message.HasField("job") and JobState.proto_is_terminal(message.job.state):
                    return
        finally:
            self._watchers.discard(queue)

    def show_unrecorded_end(self, error: BaseException | None, *, cancelled: bool) -> None:
        """How the run ended, from memory: the store, which would say it, cannot be reached."""
        if cancelled:
            self.job.state, self.job.error_message = JobState.CANCELLED.proto, ""
        elif error is None:  # the orchestrator wrote "succeeded" itself; only reading it back failed
            self.job.state, self.job.error_message = JobState.SUCCEEDED.proto, ""
        else:
            self.job.state = JobState.FAILED.proto
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
