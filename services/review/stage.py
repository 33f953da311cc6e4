"""The review stage: a finished video judged (evaluation.json, evaluation.txt) and drawn (storyboard.html).

Reads every artifact of the job by key, decodes the final video once (media.py), embeds the scenes, the
segments' sounds and a few frames per clip (embedders.py), computes the figures (evaluate.py) and draws
the page (storyboard.py). It writes nothing else, so a review can be rerun at any time on a finished job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from services.common import envs
from services.common.artifacts import Labels, Lyrics, Script, Segmentation, read_artifact
from services.common.errors import InvalidInputError
from services.common.scene_rules import SceneRules, load_scene_rules
from services.common.settings import PROMPTS_DIR
from services.common.stage_api import ReviewRequest, StageResult
from services.common.store import ArtifactStore
from services.review import media
from services.review.embedders import ImageEmbedder, TextEmbedder
from services.review.evaluate import Evaluation, ReviewInputs, ReviewModels, evaluate
from services.review.storyboard import (
    StoryboardPage,
    frame_strip_jpegs,
    render_storyboard,
    sections_from_plan,
    waveform_peaks,
)

REVIEW_CONFIG = "review.yaml"
WAVEFORM_COLUMNS = 1200


class ReviewStage:
    def __init__(self, store: ArtifactStore, environ: Mapping[str, str] | None = None,
                 prompts_dir: Path = PROMPTS_DIR):
        """`environ`: the settings the models read (envs.py); None: this process's environment."""
        self.store = store
        self.environ = environ
        self.prompts_dir = prompts_dir
        self.text = TextEmbedder(environ=environ)
        self.image = ImageEmbedder(environ=environ)
        self._rules: SceneRules | None = None
        self._near_duplicate_cosine = 0.0

    def load(self) -> None:
        self.text.load()
        self.image.load()
        self._rules = load_scene_rules(self.prompts_dir)
        config = yaml.safe_load((self.prompts_dir / REVIEW_CONFIG).read_text())
        self._near_duplicate_cosine = float(config["near_duplicate_cosine"])

    @property
    def ready(self) -> bool:
        return self.text.ready and self.image.ready and self._rules is not None

    def run(self, req: ReviewRequest) -> StageResult:
        _check_request(req)
        if not self.ready:
            self.load()
        assert self._rules is not None
        segmentation = read_artifact(self.store, req.segments_key, Segmentation)
        script = read_artifact(self.store, req.script_key, Script)
        labels = read_artifact(self.store, req.labels_key, Labels) if self._has(req.labels_key) else None
        lyrics = read_artifact(self.store, req.lyrics_key, Lyrics) if self._has(req.lyrics_key) else None
        if len(req.clip_keys) != len(segmentation.segments):
            raise InvalidInputError(f"{len(req.clip_keys)} clips for {len(segmentation.segments)} segments")
        missing = [key for key in (req.song_key, req.video_key, *req.clip_keys) if not self.store.exists(key)]
        if missing:
            raise InvalidInputError(f"{len(missing)} input(s) missing from the store: {', '.join(missing[:5])}")

        with ExitStack() as files:
            song = files.enter_context(self.store.local_path(req.song_key))
            video = files.enter_context(self.store.local_path(req.video_key))
            clips = [files.enter_context(self.store.local_path(key)) for key in req.clip_keys]
            width, height = media.video_size(video)
            pictures = media.decode_clips(video, req.frame_counts, width / height)
            clip_frames = media.clip_frame_counts(clips)
            samples = media.song_samples(song)
            sound = media.audio_match(samples, video)
            embed_limit = envs.get("MVGEN_REVIEW_EMBED_VIDEO_MB", self.environ) * 1024 * 1024
            video_bytes = video.read_bytes() if video.stat().st_size <= embed_limit else None

        evaluation = evaluate(
            ReviewInputs(segmentation=segmentation, script=script, labels=labels, lyrics=lyrics,
                         generator=req.generator, fps=req.fps, frame_counts=list(req.frame_counts),
                         clip_frames=clip_frames, pictures=pictures, video_frames=sum(p.frames for p in pictures),
                         audio=sound),
            ReviewModels(text=self.text, image=self.image, rules=self._rules,
                         near_duplicate_cosine=self._near_duplicate_cosine))
        report = evaluation.to_dict()
        self.store.put_bytes(req.evaluation_key, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())
        self.store.put_text(req.evaluation_text_key, evaluation.to_text())

        page = StoryboardPage(
            script=script, segmentation=segmentation, labels=labels, lyrics=lyrics,
            sections=sections_from_plan(self._json(req.plan_key), segmentation),
            edit=self._json(req.edit_key),
            waveform=waveform_peaks(samples, WAVEFORM_COLUMNS),
            frame_strips={picture.index: frame_strip_jpegs(picture.samples) for picture in pictures},
            evaluation=report, video=video_bytes, video_name=Path(req.video_key).name)
        self.store.put_text(req.storyboard_key, render_storyboard(page))
        return StageResult(keys={"evaluation": req.evaluation_key, "evaluation_text": req.evaluation_text_key,
                                 "storyboard": req.storyboard_key},
                           info=_headline(evaluation))

    def _has(self, key: str) -> bool:
        return bool(key) and self.store.exists(key)

    def _json(self, key: str) -> dict[str, Any] | None:
        """An optional JSON artifact (plan.json, edit.json): None when absent or unreadable (the page goes without)."""
        if not self._has(key):
            return None
        try:
            data = json.loads(self.store.get_text(key))
        except ValueError:
            return None
        return data if isinstance(data, dict) else None


def _headline(evaluation: Evaluation) -> dict[str, Any]:
    """The figures worth a line in a progress display; the rest are in evaluation.json."""
    keys = ("cuts.on_beat", "script.music_fit", "script.music_fit_shuffled", "script.near_duplicates",
            "script.rule_breaks", "picture.look_consistency", "video.audio_is_song")
    info: dict[str, Any] = {key: evaluation.figure(key).value for key in keys
                            if any(f.key == key for f in evaluation.figures)}
    info["flags"] = sum(len(s.flags) for s in evaluation.segments)
    info["preview"] = evaluation.preview
    return info


def _check_request(req: ReviewRequest) -> None:
    problems = []
    if not req.clip_keys:
        problems.append("no clips to review")
    if len(req.clip_keys) != len(req.frame_counts):
        problems.append(f"{len(req.clip_keys)} clips but {len(req.frame_counts)} frame counts")
    if req.fps < 1:
        problems.append(f"fps must be at least 1, not {req.fps}")
    for name in ("song_key", "segments_key", "script_key", "video_key", "evaluation_key", "evaluation_text_key",
                 "storyboard_key"):
        if not getattr(req, name):
            problems.append(f"{name} is empty")
    if problems:
        raise InvalidInputError("bad review request: " + "; ".join(problems))

