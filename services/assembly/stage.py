"""The assembly stage: clips + song from the store → final.mp4 in the store."""

from __future__ import annotations

from contextlib import ExitStack

from services.assembly.assembler import Assembler
from services.common import encoding
from services.common.errors import InvalidInputError
from services.common.stage_api import AssembleRequest, StageResult
from services.common.store import ArtifactStore


class AssemblyStage:
    def __init__(self, store: ArtifactStore):
        self.store = store
        self.assembler = Assembler()

    def load(self) -> None:
        self.assembler.load()

    @property
    def ready(self) -> bool:
        return self.assembler.ready

    def run(self, req: AssembleRequest) -> StageResult:
        _check_request(req)
        missing = [key for key in (req.song_key, *req.clip_keys) if not self.store.exists(key)]
        if missing:
            raise InvalidInputError(f"{len(missing)} input(s) missing from the store: {', '.join(missing[:5])}")
        self.assembler.load()  # no-op once loaded; a stage used without load() still works
        with ExitStack() as inputs:
            song = inputs.enter_context(self.store.local_path(req.song_key))
            clips = [inputs.enter_context(self.store.local_path(key)) for key in req.clip_keys]
            with self.store.writing(req.video_key) as out_path:
                report = self.assembler.assemble(clips, req.frame_counts, req.fps, req.width, req.height, song,
                                                 out_path)
        return StageResult(keys={"video": req.video_key}, info=report.to_info())


def _check_request(req: AssembleRequest) -> None:
    problems = []
    if not req.clip_keys:
        problems.append("no clips to assemble")
    if len(req.clip_keys) != len(req.frame_counts):
        problems.append(f"{len(req.clip_keys)} clips but {len(req.frame_counts)} frame counts")
    bad_counts = [i for i, n in enumerate(req.frame_counts) if n < 1]
    if bad_counts:
        problems.append(f"frame counts must be at least 1 (clips {bad_counts[:10]})")
    problems += encoding.format_problems(req.fps, req.width, req.height)
    if problems:
        raise InvalidInputError("bad assembly request: " + "; ".join(problems))
