"""The video stage: one scene of the script → one clip in the store, with its metadata beside it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from services.common import encoding
from services.common.artifacts import Script, dumps, read_artifact
from services.common.errors import InvalidInputError
from services.common.lifecycle import BackendSet
from services.common.stage_api import GenerateClipRequest, StageResult
from services.common.store import ArtifactStore
from services.common.untrusted import quoted
from services.video.animatic import AnimaticGenerator
from services.video.generator import ClipGenerator
from services.video.mochi import MochiGenerator
from services.video.wan import WanGenerator

# The diffusion backends import torch and diffusers only when loaded, so this registry stays light.
GENERATORS: dict[str, type[ClipGenerator]] = {"animatic": AnimaticGenerator, "wan": WanGenerator,
                                              "mochi": MochiGenerator}


def clip_meta_key(clip_key: str) -> str:
    """Where a clip's metadata lives: the clip's key with `.json` for its suffix."""
    return str(PurePosixPath(clip_key).with_suffix(".json"))


class VideoStage:
    def __init__(self, store: ArtifactStore, enabled: Sequence[str] = ("animatic",),
                 environ: Mapping[str, str] | None = None):
        """`environ`: the settings the backends read (envs.py); None: this process's environment."""
        self.store = store
        self.generators = BackendSet("video", GENERATORS, enabled, environ)

    def load(self) -> None:
        self.generators.load()

    @property
    def ready(self) -> bool:
        return self.generators.ready

    def run(self, req: GenerateClipRequest, on_progress: Callable[[float], None] | None = None,
            is_cancelled: Callable[[], bool] | None = None) -> StageResult:
        _check_request(req)
        generator = self.generators.get(req.generator)
        script = read_artifact(self.store, req.script_key, Script)
        if not any(scene.index == req.index for scene in script.scenes):
            raise InvalidInputError(f"the script {quoted(req.script_key)} has no scene {req.index}")
        if not self.store.exists(req.song_key):
            raise InvalidInputError(f"no song in the store at {quoted(req.song_key)}")

        meta_key = clip_meta_key(req.clip_key)
        with self.store.local_path(req.song_key) as song_path, self.store.writing(req.clip_key) as out_path:
            made = generator.generate(req, song_path, script, out_path,
                                      on_progress or _ignore_progress, is_cancelled or _never_cancelled)
        meta = {**request_metadata(req, script), **made}
        # Written after the clip: a clip whose metadata exists is complete.
        self.store.put_bytes(meta_key, dumps(meta))
        return StageResult(
            keys={"clip": req.clip_key, "clip_meta": meta_key},
            info={"generator": req.generator, "frames": req.frame_count, "seconds": meta["seconds"]},
        )


def _check_request(req: GenerateClipRequest) -> None:
    problems = []
    if req.frame_count < 1:
        problems.append(f"frame_count must be at least 1 (got {req.frame_count})")
    problems += encoding.format_problems(req.fps, req.width, req.height)
    if req.start < 0 or req.end <= req.start:
        problems.append(f"the segment [{req.start}, {req.end}) is empty or starts before 0")
    if problems:
        raise InvalidInputError(f"bad clip request for scene {req.index}: " + "; ".join(problems))


def request_metadata(req: GenerateClipRequest, script: Script) -> dict[str, Any]:
    """What every clip's metadata says of its request, whichever generator made it."""
    scene = next(scene for scene in script.scenes if scene.index == req.index)
    return {
        "scene_index": req.index, "scene_text": scene.text, "start": round(req.start, 4), "end": round(req.end, 4),
        "frames": req.frame_count, "fps": req.fps, "width": req.width, "height": req.height, "seed": req.seed,
        "encoding": {"codec": encoding.VIDEO_CODEC, "preset": encoding.PRESET, "crf": encoding.CRF,
                     "pix_fmt": encoding.PIX_FMT},
    }


def _ignore_progress(fraction: float) -> None:
    pass


def _never_cancelled() -> bool:
    return False
