"""The Python form of the stage contract (proto/mvgen/v1): what the orchestrator asks of each stage.

Requests name their inputs and outputs by store key; media bytes never travel in a request. They are
built with keywords only (many fields share a type: a key in the wrong place would go unnoticed).
The in-process adapter passes these objects straight to the stage logic; the gRPC adapter
converts them to and from the protobuf messages of the same names.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidInputError
from services.common.untrusted import quoted

SEGMENTERS = ("rules", "random")
TRANSITION_MODES = ("auto", "none")  # AssembleRequest.transitions: a transition chosen at each cut, or hard cuts


@dataclass(frozen=True, kw_only=True)
class SegmenterParams:
    """Parameters of both segmentation algorithms; defaults are the ones documented in README."""

    segmenter: str = "rules"  # "rules" (cuts like an editor) or "random" (uniform durations)
    seed: int = 0  # random segmenter only
    random_min_seconds: float = 4.0
    random_max_seconds: float = 8.0
    min_seconds: float = 2.0  # rules: no cut closer than this to the previous one
    max_seconds: float = 7.0  # rules: a cut is forced when a segment reaches this length
    beats_per_cut: int = 8  # rules: cut after this many beats without another cut
    novelty_threshold: float = 3.0  # rules: a change is a novelty peak this many MADs above the local median
    novelty_window_seconds: float = 2.5  # rules: the span compared before and after each instant
    snap_tolerance_seconds: float = 0.15  # rules: a change cut moves to a beat at most this far away

    def check(self) -> None:
        """Raise InvalidInputError, naming the parameter, when its segmenter cannot use these values."""
        if self.segmenter not in SEGMENTERS:
            raise InvalidInputError(f"unknown segmenter {quoted(self.segmenter)}; "
                                    f"choose one of: {', '.join(SEGMENTERS)}")
        if self.segmenter == "random":
            self._check_positive("random_min_seconds", "random_max_seconds")
            self._check_order("random_min_seconds", "random_max_seconds")
            if not _is_whole(self.seed) or self.seed < 0:
                raise InvalidInputError(f"seed must be a whole number >= 0, not {self.seed!r}")
            return
        self._check_positive("min_seconds", "max_seconds", "novelty_window_seconds")
        self._check_order("min_seconds", "max_seconds")
        for name in ("novelty_threshold", "snap_tolerance_seconds"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise InvalidInputError(f"{name} must be a number >= 0, not {value!r}")
        if not _is_whole(self.beats_per_cut) or self.beats_per_cut < 1:
            raise InvalidInputError(f"beats_per_cut must be a whole number >= 1, not {self.beats_per_cut!r}")

    def _check_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise InvalidInputError(f"{name} must be a positive number of seconds, not {value!r}")

    def _check_order(self, low: str, high: str) -> None:
        if getattr(self, low) > getattr(self, high):
            raise InvalidInputError(f"{low} ({getattr(self, low)}) is greater than {high} ({getattr(self, high)})")

    def to_dict(self) -> dict[str, Any]:
        common = {"segmenter": self.segmenter}
        if self.segmenter == "random":
            return common | {"seed": self.seed, "random_min_seconds": self.random_min_seconds,
                             "random_max_seconds": self.random_max_seconds}
        return common | {k: getattr(self, k) for k in (
            "min_seconds", "max_seconds", "beats_per_cut", "novelty_threshold",
            "novelty_window_seconds", "snap_tolerance_seconds")}


@dataclass(frozen=True, kw_only=True)
class SegmentRequest:
    song_key: str
    params: SegmenterParams
    segments_key: str  # segments.json
    segments_text_key: str  # segments.txt


@dataclass(frozen=True, kw_only=True)
class AnalyzeRequest:
    song_key: str
    segments_key: str
    analyzer: str  # "descriptors" (CPU, no model), "musicnn" (a trained tagger on CPU) or "clap" (msclap)
    labels_key: str
    top_k: int = 3
    # Lyrics, when lyrics_key is set: transcribed by `transcriber` ("whisper"), or, when
    # lyrics_source_key is set, the person's own lyrics (plain text or LRC) aligned to the segments.
    transcriber: str = ""
    lyrics_source_key: str = ""
    lyrics_key: str = ""  # lyrics.json
    lyrics_text_key: str = ""  # lyrics.txt


@dataclass(frozen=True, kw_only=True)
class ScriptInputs:
    """What a person may add to the script prompt. Passed to writers as delimited data."""

    story: str = ""  # story or structure cues
    characters: str = ""  # type and number of characters
    style: str = ""  # stylistic wishes (palette, atmosphere)


@dataclass(frozen=True, kw_only=True)
class WriteScriptRequest:
    labels_key: str
    segments_key: str
    writer: str  # "template" (no model), "openai", "llamacpp", "vllm"
    prompt_key: str  # prompt.txt: the rendered prompt, saved with the job
    script_key: str  # script.json
    script_text_key: str  # script.txt
    inputs: ScriptInputs = field(default_factory=ScriptInputs)
    seed: int = 0
    response_key: str = ""  # response.txt: every reply of an LLM writer, the refused ones too
    reasoning_key: str = ""  # reasoning.txt: the model's thinking, kept apart from the script
    fallback_writer: str = ""  # written by this writer (e.g. "template") when the LLM gives no valid script
    plan_key: str = ""  # plan.json: an LLM writer's plan (title, style, characters, a line per section)
    plan_text_key: str = ""  # plan.txt
    sections_key: str = ""  # sections.json: each finished section's scenes, what a rerun resumes from
    lyrics_key: str = ""  # lyrics.json: each segment's words, shown to the writer as data; '' = none


# Storytellers that hear nothing themselves: they tell the story from what the analysis stage heard
# (labels.json, lyrics.json), so a job that uses one runs analysis in the LALM pipeline too.
LISTENING_STORYTELLERS = ("cascade",)


@dataclass(frozen=True, kw_only=True)
class TellStoryRequest:
    song_key: str
    segments_key: str
    storyteller: str  # the audio-language model backend, e.g. "openai-audio"
    prompt_key: str  # prompt.txt: the story prompt, sent with the song
    story_key: str  # story.txt
    scenes_prompt_key: str  # scenes_prompt.txt: the prompts that made the story into scenes (plan, sections)
    script_key: str
    script_text_key: str
    inputs: ScriptInputs = field(default_factory=ScriptInputs)
    seed: int = 0
    scene_writer: str = ""  # who breaks the story into scenes: an LLM writer backend; '' = the storyteller
    labels_key: str = ""  # labels.json: what a storyteller that does not hear audio tells the story from
    lyrics_key: str = ""  # lyrics.json
    response_key: str = ""
    reasoning_key: str = ""
    plan_key: str = ""
    plan_text_key: str = ""
    sections_key: str = ""


@dataclass(frozen=True, kw_only=True)
class GenerateClipRequest:
    index: int
    song_key: str
    script_key: str
    start: float
    end: float
    frame_count: int  # exact frames this clip must have (cumulative rounding, see timing.py)
    fps: int
    width: int
    height: int
    generator: str  # "animatic" (CPU storyboard preview), "wan", "mochi"
    clip_key: str
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class AssembleRequest:
    song_key: str
    clip_keys: list[str]
    frame_counts: list[int]
    fps: int
    width: int  # of the final video; a clip of another size is scaled and padded to it
    height: int
    video_key: str  # final.mp4
    # The edit (services/assembly/edit.py): "none" joins the clips by hard cuts, as assembly did before
    # edits; "auto" puts a transition at every cut: edit.json's at edit_key when it fits the segments (a
    # person may have changed it), else the one decided from the segments and labels, written there.
    transitions: str = "none"  # one of TRANSITION_MODES
    segments_key: str = ""  # segments.json: the cuts the edit is for; needed by "auto"
    labels_key: str = ""  # labels.json: what the music does either side of each cut; '' = none (segments alone)
    edit_key: str = ""  # edit.json: read when it is there, written when the edit is decided; '' = not kept
    edit_text_key: str = ""  # edit.txt: the edit, a line per cut; '' = not written


@dataclass(frozen=True, kw_only=True)
class ReviewRequest:
    """Judge a finished video and draw its storyboard page: every artifact read by key, three written."""

    song_key: str
    segments_key: str
    script_key: str
    clip_keys: list[str]  # in segment order
    frame_counts: list[int]  # each clip's exact frames in the final video
    fps: int
    video_key: str  # final.mp4
    generator: str  # who made the clips: "animatic" makes them a preview, whose picture figures mean nothing
    evaluation_key: str  # evaluation.json
    evaluation_text_key: str  # evaluation.txt
    storyboard_key: str  # storyboard.html
    labels_key: str = ""  # labels.json; '' = none (the LALM pipeline without analysis)
    lyrics_key: str = ""  # lyrics.json; '' = none
    plan_key: str = ""  # plan.json: the sections drawn on the waveform; '' or missing = none
    edit_key: str = ""  # edit.json: each cut's transition, shown on the page; '' or missing = none


@dataclass
class StageResult:
    """What a stage reports back: the keys it wrote and a few facts worth showing."""

    keys: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
