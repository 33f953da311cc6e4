"""What every video backend (animatic, Wan, Mochi) offers the video stage."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.common.artifacts import Script
from services.common.lifecycle import Backend
from services.common.stage_api import GenerateClipRequest

ProgressFn = Callable[[float], None]
CancelledFn = Callable[[], bool]


class ClipGenerator(Backend):
    """Turns one scene into one clip of exactly `req.frame_count` frames at `req.fps`, `req.width`×`req.height`."""

    @abstractmethod
    def generate(self, req: GenerateClipRequest, song_path: Path, script: Script, out_path: Path,
                 on_progress: ProgressFn, is_cancelled: CancelledFn) -> dict[str, Any]:
        """Write the clip to `out_path` as mp4 with the shared encoding and return its metadata.

        `on_progress` receives the finished fraction (0..1, non-decreasing, 1.0 once the file is
        complete); `is_cancelled` is polled per frame and a True answer raises JobCancelledError.
        """
