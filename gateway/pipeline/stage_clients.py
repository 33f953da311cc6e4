"""The interface through which the orchestrator drives the six stages.

Two implementations: `InProcessStages` (the CLI: stage logic called in this process) and, in the
deployed system, gRPC clients of the stage services. The orchestrator cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

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

ProgressCallback = Callable[[float], None]
# A stage that works in parts (scripting: the plan, then each section): parts done, parts in all, what.
PartsCallback = Callable[[int, int, str], None]
CancelCheck = Callable[[], bool]
# A clip starts again from nothing (its replica refused or lost it); the argument says why.
RetryCallback = Callable[[str], None]


class StageClients(Protocol):
    async def wait_ready(self) -> None:
        """Return once every stage can serve (backends loaded, services healthy)."""
        ...

    async def backend_config(self, stage: str) -> str:
        """The digest of what configures `stage`'s backends now (services/common/backend_config.py):
        part of the fingerprint of its outputs, so new weights or prompts are not served from cache."""
        ...

    async def segment(self, req: SegmentRequest) -> StageResult: ...

    async def analyze(self, req: AnalyzeRequest) -> StageResult: ...

    async def write_script(self, req: WriteScriptRequest, on_progress: PartsCallback,
                           is_cancelled: CancelCheck) -> StageResult: ...

    async def tell_story(self, req: TellStoryRequest, on_progress: PartsCallback,
                         is_cancelled: CancelCheck) -> StageResult: ...

    async def generate_clip(self, req: GenerateClipRequest, on_progress: ProgressCallback,
                            is_cancelled: CancelCheck, on_retry: RetryCallback) -> StageResult: ...

    async def assemble(self, req: AssembleRequest) -> StageResult: ...

    async def review(self, req: ReviewRequest) -> StageResult: ...

    def clip_concurrency(self) -> int:
        """How many clips may be generated at once (in-process workers, or ready video replicas)."""
        ...
