"""Stage clients that call the stage logic in this process: the embedded mode behind `mvgen generate`.

Stage packages are imported lazily, on first use, so that the deployed gateway (which talks to
the stage services over gRPC) never imports model code.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.common.backend_config import backend_config_digest
from services.common.numba_cache import lease_numba_cache
from services.common.settings import PROMPTS_DIR
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
from gateway.pipeline.stage_clients import CancelCheck, PartsCallback, ProgressCallback, RetryCallback
from gateway.pipeline.states import STAGES as STAGE_NAMES


class InProcessStages:
    def __init__(self, store: ArtifactStore, *, analyzer: str, scripting: Sequence[str], generator: str,
                 transcriber: str = "", clip_workers: int | None = None, environ: Mapping[str, str] | None = None):
        """`scripting`: every scripting backend the job may use (writer, fallback, storyteller);
        `transcriber`: the lyrics backend the analysis stage loads beside the analyser ('' = none);
        `environ`: the settings the backends read (services/common/envs.py), as a stage service reads
        its environment; None: this process's (the CLI gives its flags over it)."""
        lease_numba_cache("inprocess")  # before the stage packages import numba
        self.store = store
        self.environ = environ
        self._backends = {"analysis": (analyzer, transcriber) if transcriber else (analyzer,),
                          "scripting": tuple(dict.fromkeys(scripting)),
                          "video": (generator,)}
        self._clip_workers = clip_workers or min(2, os.cpu_count() or 1)
        self._stages: dict[str, Any] = {}
        self._load_lock = threading.Lock()
        self._review_thread = ThreadPoolExecutor(1, thread_name_prefix="mvgen-review")

    def clip_concurrency(self) -> int:
        return self._clip_workers

    async def wait_ready(self) -> None:
        """Build and load every stage now (cog's setup), so a bad backend name fails before any work. The
        review's models are loaded when the first review starts: a review that cannot load fails the review
        alone (the video is made without it)."""
        for name in STAGE_NAMES:
            if name != "review":
                await asyncio.to_thread(self._stage, name)

    async def backend_config(self, stage: str) -> str:
        # The settings the backends read when they load (the CLI's flags included).
        environ = os.environ if self.environ is None else self.environ
        return await asyncio.to_thread(backend_config_digest, stage, PROMPTS_DIR, environ)

    async def segment(self, req: SegmentRequest) -> StageResult:
        return await self._call("segmentation", req)

    async def analyze(self, req: AnalyzeRequest) -> StageResult:
        return await self._call("analysis", req)

    async def write_script(self, req: WriteScriptRequest, on_progress: PartsCallback,
                           is_cancelled: CancelCheck) -> StageResult:
        return await self._call("scripting", req, _on_loop(on_progress), is_cancelled)

    async def tell_story(self, req: TellStoryRequest, on_progress: PartsCallback,
                         is_cancelled: CancelCheck) -> StageResult:
        progress = _on_loop(on_progress)
        return await asyncio.to_thread(lambda: self._stage("scripting").tell_story(req, progress, is_cancelled))

    async def generate_clip(self, req: GenerateClipRequest, on_progress: ProgressCallback,
                            is_cancelled: CancelCheck, on_retry: RetryCallback) -> StageResult:
        """One try: in process there is no other replica to try again on, so `on_retry` is never called."""
        return await self._call("video", req, _on_loop(on_progress), is_cancelled)

    async def assemble(self, req: AssembleRequest) -> StageResult:
        return await self._call("assembly", req)

    async def review(self, req: ReviewRequest) -> StageResult:
        # One thread of its own: torch keeps buffers per thread that runs it, and the event loop's pool would
        # let every one of its threads grow them in turn (hundreds of MB in a long-lived process).
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._review_thread, lambda: self._stage("review").run(req))

    async def _call(self, name: str, *args: Any) -> StageResult:
        # Both loading and running happen off the event loop, which keeps serving progress events.
        return await asyncio.to_thread(lambda: self._stage(name).run(*args))

    def _stage(self, name: str) -> Any:
        with self._load_lock:
            if name not in self._stages:
                stage = self._build(name)
                stage.load()
                self._stages[name] = stage
            return self._stages[name]

    def _build(self, name: str) -> Any:
        if name == "segmentation":
            from services.segmentation.stage import SegmentationStage

            return SegmentationStage(self.store)
        if name == "analysis":
            from services.analysis.stage import AnalysisStage

            return AnalysisStage(self.store, enabled=self._backends["analysis"], environ=self.environ)
        if name == "scripting":
            from services.scripting.stage import ScriptingStage

            return ScriptingStage(self.store, enabled=self._backends["scripting"], environ=self.environ)
        if name == "video":
            from services.video.stage import VideoStage

            return VideoStage(self.store, enabled=self._backends["video"], environ=self.environ)
        if name == "review":
            from services.review.stage import ReviewStage

            return ReviewStage(self.store, environ=self.environ)
        from services.assembly.stage import AssemblyStage

        return AssemblyStage(self.store)


def _on_loop(callback: Callable[..., None]) -> Callable[..., None]:
    """`callback`, called from a worker thread, run on this event loop's thread: sinks (progress bars,
    streams) are not thread-safe."""
    loop = asyncio.get_running_loop()

    def on_loop(*args: Any) -> None:
        loop.call_soon_threadsafe(callback, *args)

    return on_loop
