"""What the orchestrator reports while a job runs: a stage changed state, or a clip advanced."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.pipeline.states import EventKind, EventState, Stage


@dataclass(frozen=True)
class JobEvent:
    """A progress report: a stage changed state, or a clip advanced."""

    kind: EventKind
    stage: Stage
    state: EventState
    clip_index: int | None = None
    fraction: float = 0.0
    detail: dict[str, Any] | None = None


EventSink = Callable[[JobEvent], None]
