"""The figures that judge a music video: its cuts, its script, its clips and the final file.

Each figure comes with a one-line meaning, so that evaluation.json reads without this file. Where a
figure needs to know what a sentence or a picture shows, a trained model says it (MiniLM sentence
embeddings, EfficientNet-lite0 image features: services/review/embedders.py); the thresholds that are
not a model's are ffmpeg's own detector defaults (media.py) or calibrated and stated in
prompts/review.yaml.

Music–text fit is the figure the paper judged with people: how much closer each scene's sentence is to
what its own segment sounds like (its labels, and its lyrics) than to what the other segments sound
like. A script that ignores the music scores 0 on average, whatever its prose; the same script with
its scenes shuffled across segments is measured in the same run as the baseline.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from services.common.artifacts import Labels, Lyrics, Script, Segmentation
from services.common.scene_rules import SceneRules
from services.review.media import AudioMatch, ClipPicture

ON_BEAT_SECONDS = 0.050  # a cut within 50 ms of a beat is on it (the tolerance; a frame at 24 fps is 42 ms)
SHUFFLES = 64  # shuffled scripts averaged for the fit's baseline
# Label groups that describe a segment (not the track); their top label is what the segment sounds like.
SEGMENT_GROUPS = ("instrumental_intensity", "prominent_elements", "dynamic_shift", "rhythmic_function",
                  "instruments", "mood")
PREVIEW_GENERATORS = ("animatic",)
PICTURE_GROUP = "picture"  # figures of what the clips show: meaningless for a preview


class Embedder(Protocol):
    def embed(self, items: Sequence[Any]) -> np.ndarray: ...


@dataclass(frozen=True)
class Figure:
    key: str  # "cuts.on_beat"
    group: str  # "cuts", "script", "picture", "video"
    label: str  # a short name for a table
    value: float | int | bool | None
    display: str  # the value as a person reads it ("91%", "3 of 74")
    meaning: str  # one line: what the figure says
    applies: bool = True  # False: the figure means nothing here (a preview's picture)


@dataclass(frozen=True)
class Flag:
    kind: str  # "near_duplicate", "duplicate", "rule_break", "black", "flat", "frozen", "wrong_length", ...
    detail: str


@dataclass
class SegmentReview:
    index: int
    figures: dict[str, float | int | bool | str | None] = field(default_factory=dict)
    flags: list[Flag] = field(default_factory=list)


@dataclass
class Evaluation:
    generator: str
    figures: list[Figure]
    segments: list[SegmentReview]

    @property
    def preview(self) -> bool:
        return self.generator in PREVIEW_GENERATORS

    def figure(self, key: str) -> Figure:
        return next(f for f in self.figures if f.key == key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "generator": self.generator,
            "preview": self.preview,
            "preview_note": (f"the clips come from {self.generator}, a storyboard preview made on a CPU: figures about "
                             "the picture (look, motion, black, flat or frozen clips) mean nothing for a preview"
                             if self.preview else ""),
            "figures": [asdict(f) for f in self.figures],
            "segments": [{"index": s.index, "figures": s.figures, "flags": [asdict(f) for f in s.flags]}
                         for s in self.segments],
            "flags": [{"segment": s.index, **asdict(f)} for s in self.segments for f in s.flags],
        }

    def to_text(self) -> str:
        """The figures as a table, then every flag: what `mvgen evaluate` prints and evaluation.txt holds."""
        rows = [(f.group, f.label, f.display + ("" if f.applies else "  (preview)"), f.meaning) for f in self.figures]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"Evaluation ({self.generator} clips)"]
        if self.preview:
            lines.append(f"  {self.generator} is a preview: figures marked (preview) mean nothing until a video "
                         "model makes the clips")
        lines.append("")
        for group, label, display, meaning in rows:
            lines.append(f"{group:<{widths[0]}}  {label:<{widths[1]}}  {display:<{widths[2]}}  {meaning}")
        flags = [(s.index, f) for s in self.segments for f in s.flags]
        lines += ["", f"{len(flags)} flag(s)" + (":" if flags else "")]
        lines += [f"  scene {index:>3}  {flag.kind}: {flag.detail}" for index, flag in flags]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ReviewInputs:
    segmentation: Segmentation
    script: Script
    labels: Labels | None
    lyrics: Lyrics | None
    generator: str
    fps: int
    frame_counts: list[int]  # each clip's frames in the final video, in segment order
    clip_frames: list[int | None]  # each clip file's frames as its container says
    pictures: list[ClipPicture]  # each clip as the final video shows it
    video_frames: int  # the final video's frames, decoded
    audio: AudioMatch


@dataclass(frozen=True)
class ReviewModels:
    text: Embedder
    image: Embedder
    rules: SceneRules
    near_duplicate_cosine: float  # prompts/review.yaml, calibrated there


def evaluate(inputs: ReviewInputs, models: ReviewModels) -> Evaluation:
    segments = [SegmentReview(s.index) for s in inputs.segmentation.segments]
    by_index = {s.index: s for s in segments}
    figures = [*_cut_figures(inputs.segmentation, by_index),
               *_script_figures(inputs, models, by_index),
               *_picture_figures(inputs, models, by_index),
               *_video_figures(inputs, by_index)]
    return Evaluation(generator=inputs.generator, figures=figures, segments=segments)


# ---- cuts ----------------------------------------------------------------------------------------------

def _cut_figures(seg: Segmentation, by_index: dict[int, SegmentReview]) -> list[Figure]:
    cuts = seg.segments[:-1]  # the song's end is no cut
    beats = np.asarray(seg.beats, float)
    on_beat = 0
    for s in cuts:
        offset = float(np.min(np.abs(beats - s.end))) if beats.size else None
        by_index[s.index].figures["beat_offset_ms"] = None if offset is None else round(offset * 1000, 1)
        on_beat += offset is not None and offset <= ON_BEAT_SECONDS
    low, high = _duration_bounds(seg)
    outside = [s for s in seg.segments[:-1] if not low - 1e-3 <= s.duration <= high + 1e-3]
    for s in outside:
        by_index[s.index].flags.append(Flag("duration", f"{s.duration:.2f} s, outside the segmenter's "
                                                        f"{low:g}–{high:g} s"))
    durations = [s.duration for s in seg.segments]
    return [
        Figure("cuts.count", "cuts", "cuts", len(cuts), str(len(cuts)),
               "cuts between segments (the song's end is none)"),
        _share("cuts.on_beat", "cuts", "cuts on a beat", on_beat, len(cuts),
               f"cuts within {ON_BEAT_SECONDS * 1000:.0f} ms of a beat the segmenter detected"
               + ("" if beats.size else " (no beats were detected)")),
        Figure("cuts.median_seconds", "cuts", "median segment", round(float(np.median(durations)), 3),
               f"{np.median(durations):.2f} s", "the median segment's duration (the shortest and longest per segment)"),
        _share("cuts.within_bounds", "cuts", "segments within bounds", len(cuts) - len(outside), len(cuts),
               f"segments (the last one aside) whose duration is within the segmenter's {low:g}–{high:g} s"),
    ]


def _duration_bounds(seg: Segmentation) -> tuple[float, float]:
    params = seg.params
    if seg.segmenter == "random":
        return float(params.get("random_min_seconds", 4.0)), float(params.get("random_max_seconds", 8.0))
    return float(params.get("min_seconds", 2.0)), float(params.get("max_seconds", 7.0))


# ---- script --------------------------------------------------------------------------------------------

def _script_figures(inputs: ReviewInputs, models: ReviewModels, by_index: dict[int, SegmentReview]) -> list[Figure]:
    script, seg = inputs.script, inputs.segmentation
    scenes = {scene.index: scene.text for scene in script.scenes}
    indices = [s.index for s in seg.segments]
    covered = sum(1 for i in indices if i in scenes)
    texts = [scenes.get(i, "") for i in indices]

    exact = _exact_duplicates(texts)
    vectors = models.text.embed(texts)
    cosines = vectors @ vectors.T
    near = [(a, b) for a, b in itertools.combinations(range(len(texts)), 2)
            if (a, b) not in exact and cosines[a, b] >= models.near_duplicate_cosine]
    for a, b in exact:
        by_index[indices[b]].flags.append(Flag("duplicate", f"the same sentence as scene {indices[a]}"))
    for a, b in near:
        by_index[indices[b]].flags.append(Flag("near_duplicate", f"nearly the same as scene {indices[a]} "
                                                                 f"(cosine {cosines[a, b]:.2f})"))

    rules = models.rules
    if inputs.lyrics is not None:
        rules = rules.with_lyrics([s.text for s in inputs.lyrics.segments if s.vocal])
    broken = 0
    for index, text in zip(indices, texts):
        problems = rules.problems(text)
        broken += bool(problems)
        for problem in problems:
            by_index[index].flags.append(Flag("rule_break", problem))

    fit = _music_text_fit(inputs, models.text, vectors, by_index)
    return [
        _share("script.scenes", "script", "scenes = segments", covered, len(indices),
               "segments that have their own scene" + ("" if len(scenes) == len(indices)
                                                       else f" (the script has {len(scenes)} scenes)")),
        Figure("script.duplicates", "script", "exact duplicates", len(exact), f"{len(exact)} pair(s)",
               "pairs of scenes with the same sentence"),
        Figure("script.near_duplicates", "script", "near duplicates", len(near), f"{len(near)} pair(s)",
               f"other pairs whose sentence embeddings (MiniLM) have a cosine ≥ {models.near_duplicate_cosine:g} "
               "(calibrated in prompts/review.yaml)"),
        _share("script.rule_breaks", "script", "scenes breaking a rule", broken, len(indices),
               "scenes with sound or music words, text on screen, a reference to another scene or a quote of the "
               "lyrics (prompts/scene_rules.yaml)"),
        *fit,
    ]


def _exact_duplicates(texts: Sequence[str]) -> list[tuple[int, int]]:
    first: dict[str, int] = {}
    pairs = []
    for i, text in enumerate(texts):
        key = " ".join(re.findall(r"\w+", text.lower()))
        if key in first:
            pairs.append((first[key], i))
        else:
            first[key] = i
    return pairs


def segment_sound_texts(labels: Labels | None, lyrics: Lyrics | None, indices: Sequence[int]) -> list[str]:
    """What each segment sounds like, in words: its top label of each segment group, and its lyrics."""
    by_label = {s.index: s for s in labels.segments} if labels else {}
    by_lyric = {s.index: s for s in lyrics.segments} if lyrics else {}
    texts = []
    for index in indices:
        parts = []
        seg_labels = by_label.get(index)
        if seg_labels is not None:
            for group in SEGMENT_GROUPS:
                top = seg_labels.groups[group].top() if group in seg_labels.groups else None
                if top:
                    parts.append(top)
        sung = by_lyric.get(index)
        if sung is not None and sung.vocal and sung.text:
            parts.append(f"words: {sung.text}")
        texts.append("; ".join(parts))
    return texts


def _music_text_fit(inputs: ReviewInputs, text: Embedder, scene_vectors: np.ndarray,
                    by_index: dict[int, SegmentReview]) -> list[Figure]:
    indices = [s.index for s in inputs.segmentation.segments]
    sounds = segment_sound_texts(inputs.labels, inputs.lyrics, indices)
    meaning = ("how much closer each scene is to what its own segment sounds like (labels, lyrics) than to "
               "the other segments, by sentence-embedding cosine; 0 = the script ignores the music")
    if len(indices) < 2 or not any(sounds):
        why = "fewer than two segments" if len(indices) < 2 else "no labels or lyrics to compare with"
        return [Figure("script.music_fit", "script", "music–text fit", None, f"n/a ({why})", meaning)]
    sound_vectors = text.embed([s or "no label" for s in sounds])
    fit, margins = music_text_fit(scene_vectors, sound_vectors)
    rng = np.random.default_rng(0)
    shuffled = float(np.mean([music_text_fit(scene_vectors[rng.permutation(len(indices))], sound_vectors)[0]
                              for _ in range(SHUFFLES)]))
    for index, margin in zip(indices, margins):
        by_index[index].figures["fit_margin"] = round(float(margin), 4)
    distinct = len(set(sounds))
    return [
        Figure("script.music_fit", "script", "music–text fit", round(fit, 4), f"{fit:+.3f}", meaning),
        Figure("script.music_fit_shuffled", "script", "fit, scenes shuffled", round(shuffled, 4), f"{shuffled:+.3f}",
               f"the same figure with the scenes shuffled across segments ({SHUFFLES} shuffles): the baseline"),
        Figure("script.sound_descriptions", "script", "distinct segment sounds", distinct, str(distinct),
               "segments whose labels and lyrics differ: with one, no script can fit better than another"),
    ]


def music_text_fit(scenes: np.ndarray, sounds: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over scenes of cos(scene i, sound i) − mean_{j≠i} cos(scene i, sound j); and each scene's margin."""
    n = scenes.shape[0]
    similarity = scenes @ sounds.T
    own = np.diag(similarity)
    others = (similarity.sum(axis=1) - own) / (n - 1)
    margins = own - others
    return float(margins.mean()), margins


# ---- picture -------------------------------------------------------------------------------------------

def _picture_figures(inputs: ReviewInputs, models: ReviewModels, by_index: dict[int, SegmentReview]) -> list[Figure]:
    applies = inputs.generator not in PREVIEW_GENERATORS
    pictures = inputs.pictures
    wrong_length = 0
    for index, expected, produced in zip(by_index, inputs.frame_counts, inputs.clip_frames):
        by_index[index].figures["clip_frames"] = produced
        if produced != expected:
            wrong_length += 1
            by_index[index].flags.append(Flag("wrong_length", f"the clip file has {produced} frames for {expected} "
                                                              "(assembly conformed it)"))
    black = flat = frozen = 0
    for index, picture in zip(by_index, pictures):
        review = by_index[index]
        review.figures["pixel_motion"] = round(picture.pixel_motion, 5)
        if picture.black:
            black += 1
            review.flags.append(Flag("black", f"{picture.black_share:.0%} of its frames are black"))
        elif picture.flat:
            flat += 1
            review.flags.append(Flag("flat", f"{picture.flat_share:.0%} of its frames are one flat colour"))
        elif picture.frozen:
            frozen += 1
            review.flags.append(Flag("frozen", "no frame of it moves: a still picture"))

    look, motion = _feature_figures(pictures, models.image, by_index, applies)
    n = len(pictures)
    return [
        _share("picture.exact_length", PICTURE_GROUP, "clips exact to the frame", n - wrong_length, n,
               "clip files with exactly their segment's frames (others were conformed by assembly)"),
        _share("picture.black", PICTURE_GROUP, "black clips", black, n,
               "clips whose frames are mostly black (ffmpeg blackdetect's rule)", applies=applies),
        _share("picture.flat", PICTURE_GROUP, "flat clips", flat, n,
               "clips whose frames are mostly one colour", applies=applies),
        _share("picture.frozen", PICTURE_GROUP, "frozen clips", frozen, n,
               "clips in which no frame moves (ffmpeg freezedetect's noise tolerance)", applies=applies),
        *look, *motion,
    ]


def _feature_figures(pictures: Sequence[ClipPicture], image: Embedder, by_index: dict[int, SegmentReview],
                     applies: bool) -> tuple[list[Figure], list[Figure]]:
    """Look and motion from the image features; `applies`: not a preview, whose look is the animatic's own (its
    figures are marked so, and no clip is flagged off the look)."""
    frames = [frame for p in pictures for frame in p.samples]
    owners = [i for i, p in enumerate(pictures) for _ in p.samples]
    look_meaning = ("mean cosine between the clips' image features (EfficientNet-lite0): how much the clips "
                    "look like one film (the style bible held)")
    motion_meaning = "mean feature change between frames within a clip: how much a clip's picture changes"
    if len(frames) < 2:
        return ([Figure("picture.look_consistency", PICTURE_GROUP, "look consistency", None, "n/a", look_meaning,
                        applies)],
                [Figure("picture.motion", PICTURE_GROUP, "motion within clips", None, "n/a", motion_meaning,
                        applies)])
    features = image.embed(frames)
    owner = np.asarray(owners)
    indices = list(by_index)
    clip_means: list[np.ndarray | None] = []
    motions = []
    for i in range(len(pictures)):
        rows = features[owner == i]
        if rows.shape[0] == 0:
            clip_means.append(None)
            continue
        mean = rows.mean(axis=0)
        clip_means.append(mean / (np.linalg.norm(mean) or 1.0))
        if rows.shape[0] > 1:
            change = float(np.mean(1.0 - np.sum(rows[1:] * rows[:-1], axis=1)))
            motions.append(change)
            by_index[indices[i]].figures["motion"] = round(change, 4)
    present = np.stack([m for m in clip_means if m is not None])
    n = present.shape[0]
    summed = present.sum(axis=0)
    pairwise = float((summed @ summed - n) / (n * (n - 1))) if n > 1 else 1.0
    centroid = summed / (np.linalg.norm(summed) or 1.0)
    to_centroid = np.array([float(m @ centroid) if m is not None else np.nan for m in clip_means])
    # An outlier in look: far below the others' closeness to the film's centroid (3 robust deviations).
    median = float(np.nanmedian(to_centroid))
    spread = 1.4826 * float(np.nanmedian(np.abs(to_centroid - median))) or 1e-6
    outliers = 0
    for i, closeness in enumerate(to_centroid):
        if np.isnan(closeness):
            continue
        by_index[indices[i]].figures["look"] = round(float(closeness), 4)
        if applies and closeness < median - 3 * spread and n >= 5:
            outliers += 1
            by_index[indices[i]].flags.append(Flag("off_look", f"it looks unlike the rest of the film (closeness "
                                                               f"{closeness:.2f}, the clips' median {median:.2f})"))
    motion = float(np.mean(motions)) if motions else None
    return ([Figure("picture.look_consistency", PICTURE_GROUP, "look consistency", round(pairwise, 4),
                    f"{pairwise:.3f}", look_meaning, applies),
             Figure("picture.off_look", PICTURE_GROUP, "clips off the look", outliers, f"{outliers} of {n}",
                    "clips whose features are far from the film's (3 robust deviations below the median)", applies)],
            [Figure("picture.motion", PICTURE_GROUP, "motion within clips",
                    None if motion is None else round(motion, 4),
                    "n/a" if motion is None else f"{motion:.3f}", motion_meaning, applies)])


# ---- the final video -----------------------------------------------------------------------------------

def _video_figures(inputs: ReviewInputs, by_index: dict[int, SegmentReview]) -> list[Figure]:
    expected = sum(inputs.frame_counts)
    match = inputs.audio
    frame_ms = 1000 / inputs.fps
    # Shorter by less than a frame, or longer by less than a frame and the AAC stream's last frame of padding.
    in_sync = abs(match.offset_ms) < frame_ms / 2 and -frame_ms < match.duration_difference_ms < \
        frame_ms + match.padding_ms
    return [
        Figure("video.frames_exact", "video", "final frames exact", inputs.video_frames == expected,
               f"{inputs.video_frames} of {expected}", "the final video has exactly the frames its segments add up to"),
        Figure("video.audio_offset_ms", "video", "audio offset", round(match.offset_ms, 2),
               f"{match.offset_ms:+.1f} ms", "the soundtrack's lag behind the song (cross-correlation)"),
        Figure("video.audio_correlation", "video", "audio likeness", round(match.correlation, 4),
               f"{match.correlation:.4f}", "correlation of the soundtrack with the song at that lag (1 = the same "
                                           "waveform; the AAC encode keeps it near 1)"),
        Figure("video.audio_is_song", "video", "audio is the song", in_sync,
               "yes" if in_sync else "no", f"the soundtrack lines up with the song within half a frame and lasts as "
                                           f"long, within a frame and the AAC stream's end padding "
                                           f"({match.duration_difference_ms:+.1f} ms)"),
    ]


def _share(key: str, group: str, label: str, count: int, total: int, meaning: str, applies: bool = True) -> Figure:
    value = round(count / total, 4) if total else None
    display = f"{count} of {total}" + (f" ({count / total:.0%})" if total else "")
    return Figure(key, group, label, value, display, meaning, applies)
