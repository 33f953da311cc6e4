"""The orchestrator: drives one job through the six stages, whatever carries the calls.

Each stage's output is recorded in the manifest with the fingerprint of what produced it; a stage
(or a clip) whose fingerprint and outputs are already there is not run again. That makes a rerun
with the same settings free, a restarted job resume where it stopped, and an edited scene in
script.json regenerate exactly one clip.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from services.common import artifacts
from services.common.artifacts import ArtifactT
from services.common.errors import JobCancelledError, MvgenError
from services.common.stage_api import (
    AnalyzeRequest,
    AssembleRequest,
    GenerateClipRequest,
    ReviewRequest,
    SegmentRequest,
    StageResult,
    TellStoryRequest,
    WriteScriptRequest,
)
from services.common.store import ArtifactStore
from gateway.pipeline.events import EventSink, JobEvent
from gateway.pipeline.layout import JobLayout
from gateway.pipeline.manifest import Manifest, fingerprint, utc_now
from gateway.pipeline.options import JobOptions
from gateway.pipeline.revision import Revision
from gateway.pipeline.stage_clients import StageClients
from gateway.pipeline.states import ClipState, EventKind, EventState, JobState, Stage, StageState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    layout: JobLayout
    song_key: str
    song: dict[str, Any]  # sha256, duration, ... as probed
    options: JobOptions
    revision: Revision | None = None  # a revision of another job (the gateway's ReviseJob): edits of its script


@dataclass
class RunState:
    """What a run knows, in memory and typed, as it goes: whoever reports on the job (the gateway's
    JobStatus) reads it here instead of reading the store again at every event."""

    manifest: dict[str, Any] | None = None  # the live manifest (Manifest.data), saved at every change
    segmentation: artifacts.Segmentation | None = None
    script: artifacts.Script | None = None
    frames: dict[int, int] = field(default_factory=dict)  # each segment's frames at the job's fps, by index


class Orchestrator:
    def __init__(self, store: ArtifactStore, stages: StageClients, on_event: EventSink | None = None,
                 output_cache: str | None = None):
        """`output_cache`: a store prefix under which every output is published by its fingerprint
        (<prefix><fp>.json) and where the outputs other jobs published there are found, so that a
        song rerun with the same settings as a new job regenerates nothing. Whoever shares the
        prefix shares the outputs (the gateway gives each client its own). None for the CLI, whose
        run folder is its own cache."""
        self.store = store
        self.stages = stages
        self.on_event = on_event or (lambda event: None)
        self.output_cache = output_cache
        self.state = RunState()
        self._cancelled = asyncio.Event()
        self._interrupted = False

    def cancel(self, interrupted: bool = False) -> None:
        """Stop the job. `interrupted`: stopped by a shutdown, not by the user; the manifest then
        says "interrupted", which is not terminal, so the job resumes at the next start."""
        self._interrupted = interrupted
        self._cancelled.set()

    async def run(self, job: JobSpec) -> Manifest:
        manifest = await asyncio.to_thread(Manifest.open, self.store, job.layout, job.job_id, job.song, job.options)
        self.state.manifest = manifest.data
        try:
            await self._run(job, manifest)
        except (JobCancelledError, asyncio.CancelledError):
            if self._interrupted:
                await manifest.finish(JobState.INTERRUPTED)
            else:
                await manifest.finish(JobState.CANCELLED, "cancelled by the user")
            raise
        except MvgenError as exc:
            await manifest.finish(JobState.FAILED, str(exc))
            raise
        except BaseException as exc:
            await manifest.finish(JobState.FAILED, f"internal error: {exc!r}")
            raise
        await manifest.finish(JobState.SUCCEEDED)
        return manifest

    async def _run(self, job: JobSpec, manifest: Manifest) -> None:
        layout, opts = job.layout, job.options
        song_fp = job.song["sha256"]

        seg_fp = fingerprint("segmentation", song_fp, opts.segmenter)
        await self._stage(manifest, Stage.SEGMENTATION, seg_fp, opts.segmenter.segmenter, lambda: self.stages.segment(
            SegmentRequest(song_key=job.song_key, params=opts.segmenter, segments_key=layout.segments,
                           segments_text_key=layout.segments_text)), keep=self._keep_segmentation(layout, opts.fps))
        segmentation = self.state.segmentation
        assert segmentation is not None  # kept by _stage before it returns

        # The scripting stage reports each part it writes (the plan, then each section of the song).
        def script_progress(done: int, total: int, what: str) -> None:
            self.on_event(JobEvent(EventKind.STAGE, Stage.SCRIPTING, EventState.PROGRESS,
                                   fraction=done / total if total else 0.0,
                                   detail={"done": done, "total": total, "what": what}))

        journal = dict(response_key=layout.response, reasoning_key=layout.reasoning, plan_key=layout.plan,
                       plan_text_key=layout.plan_text, sections_key=layout.sections)
        labels_fp = await self._analysis(job, manifest, seg_fp) if opts.runs_analysis else None
        lyrics_key = layout.lyrics if labels_fp and opts.wants_lyrics else ""
        if opts.pipeline == "lalm":
            if labels_fp is None:
                await self._skip(manifest, Stage.ANALYSIS, "the LALM pipeline hears the song itself")
            script_fp = fingerprint("scripting", "lalm", labels_fp or seg_fp, opts.storyteller, opts.scene_writer,
                                    opts.script_inputs, opts.seed, await self.stages.backend_config(Stage.SCRIPTING))
            tell = TellStoryRequest(
                song_key=job.song_key, segments_key=layout.segments, storyteller=opts.storyteller,
                prompt_key=layout.prompt, story_key=layout.story, scenes_prompt_key=layout.scenes_prompt,
                script_key=layout.script, script_text_key=layout.script_text, inputs=opts.script_inputs,
                seed=opts.seed, scene_writer=opts.writer, labels_key=layout.labels if labels_fp else "",
                lyrics_key=lyrics_key, **journal)
            await self._stage(manifest, Stage.SCRIPTING, script_fp, opts.storyteller, lambda: self.stages.tell_story(
                tell, script_progress, self._cancelled.is_set), edited=self._changed_since(layout.plan, "plan_sha256"),
                keep=self._keep_script(layout))
        else:
            script_fp = fingerprint("scripting", labels_fp, opts.writer, opts.fallback_writer, opts.script_inputs,
                                    opts.seed, await self.stages.backend_config(Stage.SCRIPTING))
            write = WriteScriptRequest(
                labels_key=layout.labels, segments_key=layout.segments, writer=opts.writer, prompt_key=layout.prompt,
                script_key=layout.script, script_text_key=layout.script_text, inputs=opts.script_inputs,
                seed=opts.seed, fallback_writer=opts.fallback_writer, lyrics_key=lyrics_key, **journal)
            await self._stage(manifest, Stage.SCRIPTING, script_fp, opts.writer, lambda: self.stages.write_script(
                write, script_progress, self._cancelled.is_set), edited=self._changed_since(layout.plan, "plan_sha256"),
                keep=self._keep_script(layout))
        script = self.state.script
        assert script is not None  # kept by _stage before it returns
        if job.revision is not None:
            script = await self._revise(job, manifest, script, script_fp)

        clips = await self._clips(job, manifest, segmentation, script)

        # Hard cuts depend on the clips alone; an edit also on the cuts and what the music does at them, and a
        # revision's new transitions.
        edit_inputs: tuple[object, ...] = () if opts.transitions == "none" else (opts.transitions, seg_fp, labels_fp)
        if job.revision is not None and job.revision.script_edits.cuts and opts.transitions != "none":
            edit_inputs += (await self._revise_edit(job),)
        final_fp = fingerprint("assembly", song_fp, [fp for _, fp in clips], opts.fps, *edit_inputs)
        edit_keys = {} if opts.transitions == "none" else dict(
            segments_key=layout.segments, labels_key=layout.labels if labels_fp else "", edit_key=layout.edit,
            edit_text_key=layout.edit_text)
        await self._stage(manifest, Stage.ASSEMBLY, final_fp, "ffmpeg", lambda: self.stages.assemble(
            AssembleRequest(song_key=job.song_key, clip_keys=[req.clip_key for req, _ in clips],
                            frame_counts=[req.frame_count for req, _ in clips], fps=opts.fps, width=opts.width,
                            height=opts.height, video_key=layout.final, transitions=opts.transitions,
                            **edit_keys)),
            edited=self._changed_since(layout.edit, "edit_sha256") if edit_keys else None)
        # The edit a person changed reassembles under the same fingerprint: the review sees it by its digest.
        edit_used = (manifest.stage(Stage.ASSEMBLY).get("info") or {}).get("edit_sha256", "")
        await self._review(job, manifest, clips, fingerprint(final_fp, edit_used, seg_fp, labels_fp, script_fp))

    async def _review(self, job: JobSpec, manifest: Manifest, clips: list[tuple[GenerateClipRequest, str]],
                      inputs_fp: str) -> None:
        """Judge the finished video and draw its storyboard page. The video is made: a review that fails is
        recorded (the stage FAILED, with its error) and the job still succeeds."""
        layout, opts = job.layout, job.options
        request = ReviewRequest(
            song_key=job.song_key, segments_key=layout.segments, script_key=layout.script,
            clip_keys=[req.clip_key for req, _ in clips], frame_counts=[req.frame_count for req, _ in clips],
            fps=opts.fps, video_key=layout.final, generator=opts.generator, evaluation_key=layout.evaluation,
            evaluation_text_key=layout.evaluation_text, storyboard_key=layout.storyboard,
            labels_key=layout.labels if opts.runs_analysis else "",
            lyrics_key=layout.lyrics if opts.runs_analysis and opts.wants_lyrics else "",
            plan_key=layout.plan, edit_key=layout.edit)
        review_fp = fingerprint("review", inputs_fp, await self._digest(layout.plan),
                                await self.stages.backend_config(Stage.REVIEW))
        try:
            await self._stage(manifest, Stage.REVIEW, review_fp, "review", lambda: self.stages.review(request))
        except (JobCancelledError, asyncio.CancelledError):
            raise
        except Exception as exc:  # recorded in the manifest by _stage; the video stands
            log.warning("job %s: the review failed, the video stands: %s", job.job_id, exc)

    async def _analysis(self, job: JobSpec, manifest: Manifest, seg_fp: str) -> str:
        """Labels, and the lyrics when the job wants them (transcribed, or the person's aligned); their fingerprint."""
        layout, opts = job.layout, job.options
        if opts.lyrics:  # the person's lyrics travel as a file of the job, like the song
            await asyncio.to_thread(self.store.put_text, layout.lyrics_source, opts.lyrics)
        lyrics = (opts.transcriber, hashlib.sha256(opts.lyrics.encode()).hexdigest() if opts.lyrics else "")
        labels_fp = fingerprint("analysis", seg_fp, opts.analyzer, opts.top_k, *(lyrics if opts.wants_lyrics else ()),
                                await self.stages.backend_config(Stage.ANALYSIS))
        wanted = opts.wants_lyrics
        request = AnalyzeRequest(song_key=job.song_key, segments_key=layout.segments, analyzer=opts.analyzer,
                                 labels_key=layout.labels, top_k=opts.top_k, transcriber=opts.transcriber,
                                 lyrics_source_key=layout.lyrics_source if opts.lyrics else "",
                                 lyrics_key=layout.lyrics if wanted else "",
                                 lyrics_text_key=layout.lyrics_text if wanted else "")
        await self._stage(manifest, Stage.ANALYSIS, labels_fp, opts.analyzer, lambda: self.stages.analyze(request))
        return labels_fp

    async def _stage(self, manifest: Manifest, name: Stage, fp: str, backend: str,
                     call: Callable[[], Awaitable[StageResult]],
                     edited: Callable[[dict[str, Any]], Awaitable[bool]] | None = None,
                     keep: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run a stage unless its outputs are fresh; `edited(record)`: whether a person has since edited an
        input the stage keeps for itself (plan.json), which makes it run again. `keep()` reads its output into
        the run's state before the stage is reported done, so that whoever hears the event finds it there."""
        record = manifest.stage(name)
        fresh = await manifest.is_fresh(record, fp) and not (edited and await edited(record))
        if fresh or await self._reuse(manifest, record, fp):
            if keep is not None:
                await keep()
            self.on_event(JobEvent(EventKind.STAGE, name, EventState.CACHED, detail=record.get("info")))
            return
        self._check_cancelled()
        started = time.monotonic()
        _forget(record, "reused_from", "ended_at")  # a reuse of an earlier configuration's output
        await manifest.mark(record, StageState.RUNNING, backend=backend, fingerprint=fp, started_at=utc_now())
        self.on_event(JobEvent(EventKind.STAGE, name, EventState.RUNNING))
        try:
            result = await call()
        except BaseException as exc:
            await manifest.mark(record, StageState.FAILED, error=str(exc), seconds=round(time.monotonic() - started, 3))
            self.on_event(JobEvent(EventKind.STAGE, name, EventState.FAILED, detail={"error": str(exc)}))
            raise
        await manifest.mark(record, StageState.SUCCEEDED, outputs=result.keys, info=result.info,
                            seconds=round(time.monotonic() - started, 3))
        await self._publish(manifest, fp, result)
        if keep is not None:
            await keep()
        self.on_event(JobEvent(EventKind.STAGE, name, EventState.SUCCEEDED, detail=result.info))

    def _keep_segmentation(self, layout: JobLayout, fps: int) -> Callable[[], Awaitable[None]]:
        async def keep() -> None:
            segmentation = await self._read(layout.segments, artifacts.Segmentation)
            self.state.frames = segmentation.frame_counts(fps)
            self.state.segmentation = segmentation
        return keep

    def _keep_script(self, layout: JobLayout) -> Callable[[], Awaitable[None]]:
        async def keep() -> None:
            # Read back, not taken from the stage's answer: a person may have edited script.json.
            self.state.script = await self._read(layout.script, artifacts.Script)
        return keep

    def _changed_since(self, key: str, info_digest: str) -> Callable[[dict[str, Any]], Awaitable[bool]]:
        """Whether the file at `key` differs from the one the stage last worked from (its sha256 in the stage's
        info under `info_digest`): a person edited it, or deleted it to have it made anew, and the stage runs
        again. plan.json for scripting (the scenes are written again from it), edit.json for assembly."""
        async def edited(record: dict[str, Any]) -> bool:
            used = (record.get("info") or {}).get(info_digest)
            if not used:
                return False  # the stage worked from no such file (the template writer has no plan)
            return await self._digest(key) != used
        return edited

    async def _digest(self, key: str) -> str:
        """sha256 of the file at `key` as it is now; '' when there is none."""
        try:
            data = await asyncio.to_thread(self.store.get_bytes, key)
        except KeyError:
            return ""
        return hashlib.sha256(data).hexdigest()

    async def _revise(self, job: JobSpec, manifest: Manifest, script: artifacts.Script,
                      script_fp: str) -> artifacts.Script:
        """Apply the job's revision to the script the scripting stage wrote (copied from the job revised, as
        a rule): script.json and script.txt. Idempotent: a resumed job applies it again to the same script.
        The clips of the edited scenes (all clips for a new style or cast) then get new fingerprints."""
        revision, layout = job.revision, job.layout
        assert revision is not None
        await self._keep_written_script(manifest, script_fp)
        revised = revision.script_edits.apply(script)
        if revised != script:  # script.txt first: script.json, once revised, says both are
            await asyncio.to_thread(self.store.put_text, layout.script_text, revised.to_text())
            await asyncio.to_thread(self.store.put_bytes, layout.script, artifacts.dumps(revised))
        self.state.script = revised
        manifest.data["revision"] = revision.to_dict()
        await manifest.save_async()
        return revised

    async def _revise_edit(self, job: JobSpec) -> list[tuple[int, str, int]]:
        """Write this job's edit.json: the job revised's with the revision's transitions, before assembly reads it
        (as a person's edit: used as written). Idempotent; returns the cuts, for the fingerprint."""
        revision, layout = job.revision, job.layout
        assert revision is not None
        cuts = revision.script_edits.cuts
        try:
            base = json.loads(await asyncio.to_thread(self.store.get_text, revision.revised_edit_key or layout.edit))
        except (KeyError, ValueError) as exc:
            raise MvgenError(f"the revision changes transitions, but the edit of job {revision.revises_job_id} "
                             f"cannot be read ({exc})") from None
        revised = revision.script_edits.apply_to_edit(base)
        await asyncio.to_thread(self.store.put_text, layout.edit, json.dumps(revised, indent=2) + "\n")
        return list(cuts)

    async def _keep_written_script(self, manifest: Manifest, script_fp: str) -> None:
        """Where this job ran the scripting stage itself (nothing to copy), its outputs are published under the
        stage's fingerprint: a copy of them as written goes to written/ and is published there instead,
        so that another job of that fingerprint never copies the revised script."""
        if self.output_cache is None or "reused_from" in manifest.stage(Stage.SCRIPTING):
            return
        layout, entry_key = manifest.layout, f"{self.output_cache}{script_fp}.json"

        def move() -> None:
            try:
                entry = json.loads(self.store.get_bytes(entry_key))
            except KeyError:
                return
            if entry.get("prefix") != layout.prefix:
                return  # already moved, or another job's
            written = JobLayout(prefix=layout.key("written/"))
            outputs = {}
            for name, key in entry["outputs"].items():
                outputs[name] = written.key(key[len(layout.prefix):])
                self.store.copy(key, outputs[name])
            entry.update(prefix=written.prefix, outputs=outputs)
            self.store.put_bytes(entry_key, json.dumps(entry).encode())

        await asyncio.to_thread(move)

    async def _skip(self, manifest: Manifest, name: Stage, reason: str) -> None:
        record = manifest.stage(name)
        if record.get("state") != StageState.SKIPPED:
            await manifest.mark(record, StageState.SKIPPED, info={"reason": reason})
        self.on_event(JobEvent(EventKind.STAGE, name, EventState.SKIPPED, detail={"reason": reason}))

    async def _clips(self, job: JobSpec, manifest: Manifest, segmentation: artifacts.Segmentation,
                     script: artifacts.Script) -> list[tuple[GenerateClipRequest, str]]:
        """Generate every clip not already made; returns each clip's request and fingerprint, in order."""
        opts, layout = job.options, job.layout
        stage = manifest.stage(Stage.VIDEO)
        if len(script.scenes) != len(segmentation.segments):
            raise MvgenError(f"the script has {len(script.scenes)} scenes for {len(segmentation.segments)} segments")
        if {scene.index for scene in script.scenes} != {segment.index for segment in segmentation.segments}:
            raise MvgenError("the script's scenes are not numbered as the segments are: "
                             "each segment needs its own scene")
        scenes = {scene.index: scene for scene in script.scenes}
        video_config = await self.stages.backend_config(Stage.VIDEO)
        requests: list[tuple[GenerateClipRequest, str]] = []
        for segment in segmentation.segments:
            frames = self.state.frames[segment.index]
            seed = int(fingerprint("clip-seed", opts.seed, segment.index), 16) % 2**31
            req = GenerateClipRequest(
                index=segment.index, song_key=job.song_key, script_key=layout.script, start=segment.start,
                end=segment.end, frame_count=frames, fps=opts.fps, width=opts.width, height=opts.height,
                generator=opts.generator, clip_key=layout.clip(segment.index), seed=seed)
            # The clip depends on its own scene and the shared style, not on the rest of the script,
            # nor on where this job keeps its files.
            clip_fp = fingerprint("video", job.song["sha256"], scenes[segment.index].text, script.style,
                                  script.characters, replace(req, song_key="", script_key="", clip_key=""),
                                  video_config)
            requests.append((req, clip_fp))

        await manifest.mark(stage, StageState.RUNNING, backend=opts.generator,
                            started_at=stage.get("started_at") or utc_now())
        self.on_event(JobEvent(EventKind.STAGE, Stage.VIDEO, EventState.RUNNING, detail={"clips": len(requests)}))
        started = time.monotonic()
        limit = ClipLimit(self.stages.clip_concurrency)
        generated: list[int] = []

        async def one(req: GenerateClipRequest, clip_fp: str) -> None:
            record = manifest.clip(req.index)
            if await manifest.is_fresh(record, clip_fp) or await self._reuse(manifest, record, clip_fp):
                self.on_event(JobEvent(EventKind.CLIP, Stage.VIDEO, EventState.CACHED, req.index, 1.0,
                                       {"frames": req.frame_count}))
                return
            async with limit:
                self._check_cancelled()
                clip_started = time.monotonic()
                # The clip's history is recorded with it (a resumed job shows it as it was): every
                # attempt of this fingerprint, one lost with a crashed process included.
                tried = record.get("attempts", 0) if record.get("fingerprint") == clip_fp else 0
                _forget(record, "reused_from", "ended_at")
                await manifest.mark(record, ClipState.RUNNING, fingerprint=clip_fp, frames=req.frame_count,
                                    attempts=tried + 1, started_at=utc_now())
                self.on_event(JobEvent(EventKind.CLIP, Stage.VIDEO, EventState.RUNNING, req.index, 0.0,
                                       {"frames": req.frame_count, "attempt": record["attempts"]}))

                def progress(fraction: float) -> None:
                    self.on_event(JobEvent(EventKind.CLIP, Stage.VIDEO, EventState.PROGRESS, req.index, fraction))

                def retrying(reason: str) -> None:
                    record.update(attempts=record["attempts"] + 1, started_at=utc_now())  # saved with the outcome
                    self.on_event(JobEvent(EventKind.CLIP, Stage.VIDEO, EventState.RETRYING, req.index, 0.0,
                                           {"reason": reason, "attempt": record["attempts"]}))

                try:
                    result = await self.stages.generate_clip(req, progress, self._cancelled.is_set, retrying)
                except BaseException as exc:
                    await manifest.mark(record, ClipState.FAILED, error=str(exc), ended_at=utc_now())
                    raise
                await manifest.mark(record, ClipState.SUCCEEDED, outputs=result.keys,
                                    seconds=round(time.monotonic() - clip_started, 3), ended_at=utc_now())
                await self._publish(manifest, clip_fp, result)
                generated.append(req.index)
                self.on_event(JobEvent(EventKind.CLIP, Stage.VIDEO, EventState.SUCCEEDED, req.index, 1.0,
                                       {"frames": req.frame_count}))

        tasks = [asyncio.ensure_future(one(req, fp)) for req, fp in requests]
        try:
            await asyncio.gather(*tasks)
        except BaseException as exc:
            # One clip failed or the job was cancelled: stop the others, keep what finished.
            self._cancelled.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await manifest.mark(stage, StageState.FAILED, error=str(exc))
            raise
        info = {"clips": len(requests), "generated": len(generated)}
        await manifest.mark(stage, StageState.SUCCEEDED, seconds=round(time.monotonic() - started, 3), info=info)
        self.on_event(JobEvent(EventKind.STAGE, Stage.VIDEO, EventState.SUCCEEDED if generated else EventState.CACHED,
                               detail=info))
        return requests

    async def _publish(self, manifest: Manifest, fp: str, result: StageResult) -> None:
        if self.output_cache is not None:
            entry = {"prefix": manifest.layout.prefix, "outputs": result.keys, "info": result.info}
            await asyncio.to_thread(self.store.put_bytes, f"{self.output_cache}{fp}.json", json.dumps(entry).encode())

    async def _reuse(self, manifest: Manifest, record: dict[str, Any], fp: str) -> bool:
        """Copy another job's outputs of the same fingerprint into this job, if there are any."""
        if self.output_cache is None:
            return False
        found = await asyncio.to_thread(self._copy_shared_outputs, manifest.layout, f"{self.output_cache}{fp}.json")
        if found is None:
            return False
        outputs, info, source = found
        _forget(record, "attempts", "started_at", "seconds", "error")  # of an earlier run; this output was copied
        await manifest.mark(record, StageState.SUCCEEDED, fingerprint=fp, outputs=outputs, info=info,
                            reused_from=source, ended_at=utc_now())
        return True

    def _copy_shared_outputs(self, layout: JobLayout,
                             entry_key: str) -> tuple[dict[str, str], dict[str, Any], str] | None:
        try:
            entry = json.loads(self.store.get_bytes(entry_key))
        except KeyError:
            return None
        prefix, outputs = entry["prefix"], entry["outputs"]
        if not all(key.startswith(prefix) and self.store.exists(key) for key in outputs.values()):
            return None
        copied = {name: layout.key(key[len(prefix):]) for name, key in outputs.items()}
        for name, key in outputs.items():
            if key != copied[name]:
                self.store.copy(key, copied[name])
        return copied, entry.get("info", {}), prefix

    def _check_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise JobCancelledError("the job was cancelled")

    async def _read(self, key: str, kind: type[ArtifactT]) -> ArtifactT:
        return await asyncio.to_thread(artifacts.read_artifact, self.store, key, kind)


def _forget(record: dict[str, Any], *names: str) -> None:
    for name in names:
        record.pop(name, None)


class ClipLimit:
    """Clips in flight at once, at most `capacity()`; read again as clips finish and every second,
    so video replicas that appear (a scale-up) are used by the job already running."""

    def __init__(self, capacity: Callable[[], int]):
        self.capacity = capacity
        self.in_flight = 0
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._changed:
            while self.in_flight >= max(1, self.capacity()):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=1.0)
            self.in_flight += 1

    async def __aexit__(self, *exc: object) -> None:
        async with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()
