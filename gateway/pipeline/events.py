"""What the orchestrator reports while a job runs: a stage changed state, or a clip advanced."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JobEvent:
    """A progress report: a stage changed state, or a clip advanced."""

    kind: str  # "stage" | "clip"
    stage: str
    # running | succeeded | cached | failed | skipped | progress (a clip's fraction; the scripting stage's
    # parts) | retrying (a clip starts again)
    state: str
    clip_index: int | None = None
    fraction: float = 0.0
    detail: dict[str, Any] | None = None


EventSink = Callable[[JobEvent], None]
