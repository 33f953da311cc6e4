"""The orchestrator: drives one job through the five stages, whatever carries the calls.

Each stage's output is recorded in the manifest with the fingerprint of what produced it; a stage
(or a clip) whose fingerprint and outputs are already there is not run again. That makes a rerun
with the same settings free, a restarted job resume where it stopped, and an edited scene in
script.json regenerate exactly one clip.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.common import artifacts, timing
from services.common.errors import JobCancelledError, MvgenError
from services.common.stage_api import (
    AnalyzeRequest,
    AssembleRequest,
    ClipRequest,
    ScriptRequest,
    SegmentRequest,
    StageResult,
)
from services.common.store import ArtifactStore
from gateway.job import JobLayout, JobOptions, Manifest, fingerprint, utc_now
from gateway.stage_clients import StageClients


@dataclass(frozen=True)
class JobEvent:
    """A progress report: a stage changed state, or a clip advanced."""

    kind: str  # "stage" | "clip"
    stage: str
    state: str  # running | succeeded | cached | failed | progress
    clip_index: int | None = None
    fraction: float = 0.0
    detail: dict[str, Any] | None = None


EventSink = Callable[[JobEvent], None]


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    layout: JobLayout
    song_key: str
    song: dict[str, Any]  # sha256, duration, ... as probed
    options: JobOptions


class Orchestrator:
    def __init__(self, store: ArtifactStore, stages: StageClients, on_event: EventSink | None = None):
        self.store = store
        self.stages = stages
        self.on_event = on_event or (lambda event: None)
        self._cancelled = asyncio.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    async def run(self, job: JobSpec) -> Manifest:
        manifest = Manifest.open(self.store, job.layout, job.job_id, job.song, job.options)
        try:
            await self._run(job, manifest)
        except (JobCancelledError, asyncio.CancelledError):
            manifest.finish("cancelled", "cancelled by the user")
            raise
        except MvgenError as exc:
            manifest.finish("failed", str(exc))
            raise
        except BaseException as exc:
            manifest.finish("failed", f"internal error: {exc!r}")
            raise
        manifest.finish("succeeded")
        return manifest

    async def _run(self, job: JobSpec, manifest: Manifest) -> None:
        layout, opts = job.layout, job.options
        song_fp = job.song["sha256"]

        seg_fp = fingerprint("segmentation", song_fp, opts.segmenter)
        await self._stage(manifest, "segmentation", seg_fp, opts.segmenter.segmenter, lambda: self.stages.segment(
            SegmentRequest(job.song_key, opts.segmenter, layout.segments, layout.segments_text)))
        segmentation = artifacts.Segmentation.from_dict(self._read_json(layout.segments))

        labels_fp = fingerprint("analysis", seg_fp, opts.analyzer, opts.top_k)
        await self._stage(manifest, "analysis", labels_fp, opts.analyzer, lambda: self.stages.analyze(
            AnalyzeRequest(job.song_key, layout.segments, opts.analyzer, layout.labels, opts.top_k)))

        script_fp = fingerprint("scripting", labels_fp, opts.writer, opts.script_inputs, opts.seed)
        await self._stage(manifest, "scripting", script_fp, opts.writer, lambda: self.stages.write_script(
            ScriptRequest(layout.labels, layout.segments, opts.writer, layout.prompt, layout.script,
                          layout.script_text, opts.script_inputs, opts.seed)))
        # Read back, not taken from the stage's answer: a person may have edited script.json.
        script = artifacts.Script.from_dict(self._read_json(layout.script))

        clip_fps = await self._clips(job, manifest, segmentation, script)

        frame_counts = [timing.frame_count(s.start, s.end, opts.fps) for s in segmentation.segments]
        final_fp = fingerprint("assembly", song_fp, clip_fps, opts.fps)
        await self._stage(manifest, "assembly", final_fp, "ffmpeg", lambda: self.stages.assemble(
            AssembleRequest(job.song_key, [layout.clip(s.index) for s in segmentation.segments],
                            frame_counts, opts.fps, layout.final)))

    async def _stage(self, manifest: Manifest, name: str, fp: str, backend: str,
                     call: Callable[[], Awaitable[StageResult]]) -> None:
        record = manifest.stage(name)
        if manifest.is_fresh(record, fp):
            self.on_event(JobEvent("stage", name, "cached", detail=record.get("info")))
            return
        self._check_cancelled()
        started = time.monotonic()
        manifest.mark(record, "running", backend=backend, fingerprint=fp, started_at=utc_now())
        self.on_event(JobEvent("stage", name, "running"))
        try:
            result = await call()
        except BaseException as exc:
            manifest.mark(record, "failed", error=str(exc), seconds=round(time.monotonic() - started, 3))
            self.on_event(JobEvent("stage", name, "failed", detail={"error": str(exc)}))
            raise
        manifest.mark(record, "succeeded", outputs=result.keys, info=result.info,
                      seconds=round(time.monotonic() - started, 3))
        self.on_event(JobEvent("stage", name, "succeeded", detail=result.info))

    async def _clips(self, job: JobSpec, manifest: Manifest, segmentation: artifacts.Segmentation,
                     script: artifacts.Script) -> list[str]:
        opts, layout = job.options, job.layout
        stage = manifest.stage("video")
        if len(script.scenes) != len(segmentation.segments):
            raise MvgenError(f"the script has {len(script.scenes)} scenes for {len(segmentation.segments)} segments")
        scenes = {scene.index: scene for scene in script.scenes}
        requests: list[tuple[ClipRequest, str]] = []
        for segment in segmentation.segments:
            frames = timing.frame_count(segment.start, segment.end, opts.fps)
            seed = int(fingerprint("clip-seed", opts.seed, segment.index), 16) % 2**31
            req = ClipRequest(segment.index, job.song_key, layout.script, segment.start, segment.end, frames,
                              opts.fps, opts.width, opts.height, opts.generator, layout.clip(segment.index), seed)
            # The clip depends on its own scene and the shared style, not on the rest of the script.
            clip_fp = fingerprint("video", job.song["sha256"], scenes[segment.index].text, script.style,
                                  script.characters, req)
            requests.append((req, clip_fp))

        manifest.mark(stage, "running", backend=opts.generator, started_at=stage.get("started_at") or utc_now())
        self.on_event(JobEvent("stage", "video", "running", detail={"clips": len(requests)}))
        started = time.monotonic()
        limit = asyncio.Semaphore(max(1, self.stages.clip_concurrency()))

        async def one(req: ClipRequest, clip_fp: str) -> None:
            record = manifest.clip(req.index)
            if manifest.is_fresh(record, clip_fp):
                self.on_event(JobEvent("clip", "video", "cached", req.index, 1.0, {"frames": req.frame_count}))
                return
            async with limit:
                self._check_cancelled()
                clip_started = time.monotonic()
                manifest.mark(record, "running", fingerprint=clip_fp, frames=req.frame_count)
                self.on_event(JobEvent("clip", "video", "running", req.index, 0.0, {"frames": req.frame_count}))

                def progress(fraction: float) -> None:
                    self.on_event(JobEvent("clip", "video", "progress", req.index, fraction))

                try:
                    result = await self.stages.generate_clip(req, progress, self._cancelled.is_set)
                except BaseException as exc:
                    manifest.mark(record, "failed", error=str(exc))
                    raise
                manifest.mark(record, "succeeded", outputs=result.keys,
                              seconds=round(time.monotonic() - clip_started, 3))
                self.on_event(JobEvent("clip", "video", "succeeded", req.index, 1.0, {"frames": req.frame_count}))

        tasks = [asyncio.ensure_future(one(req, fp)) for req, fp in requests]
        try:
            await asyncio.gather(*tasks)
        except BaseException as exc:
            # One clip failed or the job was cancelled: stop the others, keep what finished.
            self._cancelled.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            manifest.mark(stage, "failed", error=str(exc))
            raise
        manifest.mark(stage, "succeeded", seconds=round(time.monotonic() - started, 3), info={"clips": len(requests)})
        self.on_event(JobEvent("stage", "video", "succeeded", detail={"clips": len(requests)}))
        return [fp for _, fp in requests]

    def _check_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise JobCancelledError("the job was cancelled")

    def _read_json(self, key: str) -> dict[str, Any]:
        return json.loads(self.store.get_bytes(key))
