"""The `musicnn` analyser: two trained music taggers (musicnn, Pons and Serra 2019) on CPU, with no
TensorFlow: MTT_musicnn (MagnaTagATune: instruments, voices, some genres and moods) and MSD_musicnn
(the Million Song Dataset's last.fm tags: genres, eras, moods), 50 tags each.

What it hears: every segment is cut into 3-second patches of log-mel spectrogram (the input the
networks were trained on), placed evenly inside the segment so that none reaches into a
neighbouring one: one patch per started 3 s, the first at the segment's start and the last ending
at its end (they overlap when the length is not a multiple of 3 s). A segment shorter than 3 s is
repeated until it fills a patch, as the models' training padded short clips ("repeat-pad").
A segment's tag probabilities are the mean over its patches (as upstream averages its taggram);
the track's are the mean of the segments', weighted by their durations, so every second of the song
counts the same. All patches of a song go through each network in batches.

The label groups: a group whose labels name musicnn tags in prompts/labels/*.yaml (`musicnn:`,
e.g. genre `metal: [msd:heavy metal, msd:metal, mtt:metal]`) is scored here, in its scope (segment
or track); a label's score is the highest probability among its tags (they are synonyms or near
ones, each a separate output of the model), labels naming no tag are left out. Scores are the
taggers' own probabilities, independent per tag, so a group's scores need not add up to 1.
Today that is genre and mood (track) and instruments (segment, voices included); visual style
follows the mood as in the other analysers. What a tagger does not give (intensity, prominent
elements, dynamic shift, rhythmic function, tempo) comes from the `descriptors` analyser, which
this one runs first. Every tag's probability goes into the measures ("mtt:piano": 0.81), beside the
descriptors' own, so a person can see what a label came from.

Configuration: MVGEN_MUSICNN_DIR (the weights; default: the installed musicnn package, see
weights.py), MVGEN_MUSICNN_BATCH (patches per forward pass).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.analysis.analyzer import Analyzer
from services.analysis.descriptors import DescriptorAnalyzer
from services.analysis.musicnn.checkpoint import CheckpointError, read_checkpoint
from services.analysis.musicnn.frontend import HOP, N_MELS, PATCH_FRAMES, SAMPLE_RATE, log_mel, repeat_pad
from services.analysis.musicnn.network import MusicnnNetwork, load_network
from services.analysis.musicnn.weights import MODELS, checkpoint_prefix, missing_files, weights_folder
from services.common import envs
from services.common.artifacts import LabelGroup, Labels, LabelScore, Segmentation, SegmentLabels
from services.common.errors import InvalidInputError, StageFailedError
from services.common.musicnn_tags import TAGGERS
from services.common.vocabulary import LABELS_DIR, MUSICNN_KEY, LabelSet, groups_in_scope, load_vocabulary

# Patches per forward pass. A patch's activations take ~15 MB: on 2 cores 1-2 patches a pass took
# 0.027 s a patch, 4 took 0.035 and 8 took 0.052, as the maps outgrow the caches.
DEFAULT_BATCH = 2
STYLE_GROUP = "visual_style"
MOOD_GROUP = "mood"
UPSTREAM_TAG_LISTS = {"MTT_musicnn": "MTT_LABELS", "MSD_musicnn": "MSD_LABELS"}  # in musicnn/configuration.py


@dataclass(frozen=True)
class Tagger:
    """One loaded network and what it outputs."""

    prefix: str  # "mtt" or "msd": how label sets and measures name its tags
    model: str  # "MTT_musicnn"
    network: MusicnnNetwork
    tags: tuple[str, ...]
    unused_variables: tuple[str, ...]  # checkpoint variables the network does not read (the optimiser's)


@dataclass
class SongTags:
    """Tag probabilities, columns in `names` order ("mtt:guitar", ..., "msd:rock", ...)."""

    names: list[str]
    segments: np.ndarray  # (segments, tags): the mean over each segment's patches
    track: np.ndarray  # (tags,): the segments' means weighted by duration
    patches: list[int]  # patches per segment


class MusicnnAnalyzer(Analyzer):
    name = "musicnn"

    def __init__(self, labels_dir: Path = LABELS_DIR, weights: Path | None = None, batch_size: int | None = None,
                 environ: Mapping[str, str] | None = None):
        super().__init__(environ)
        self.labels_dir = labels_dir
        self.weights = weights  # None: MVGEN_MUSICNN_DIR or the installed package, found at load
        if batch_size is None:
            batch_size = envs.get("MVGEN_MUSICNN_BATCH", environ, default=DEFAULT_BATCH)
        self.batch_size = batch_size
        if self.batch_size < 1:
            raise InvalidInputError(f"MVGEN_MUSICNN_BATCH must be at least 1, not {self.batch_size}")
        self.descriptors = DescriptorAnalyzer(labels_dir)
        self.vocabulary: dict[str, LabelSet] = {}
        self.taggers: list[Tagger] = []

    # --- loading ---------------------------------------------------------------------------------

    def _load(self) -> None:
        vocabulary = load_vocabulary(self.labels_dir)
        moods = set(vocabulary[MOOD_GROUP].ids())
        if any(style.data.get("mood") not in moods for style in vocabulary[STYLE_GROUP].labels):
            raise StageFailedError("every visual style needs the mood it belongs to (one of the mood label ids)")
        folder = self.weights if self.weights is not None else weights_folder(self.environ)
        missing = missing_files(folder)
        if missing:
            raise StageFailedError(f"{folder}: not a musicnn weights folder: it lacks {', '.join(map(str, missing))} "
                                   f"(it needs {' and '.join(m + '/' for m in MODELS)} as in the musicnn wheel)")
        taggers = []
        for prefix, (model, tags) in TAGGERS.items():
            where = checkpoint_prefix(folder, model)
            _check_upstream_tags(folder, model, tags)
            try:
                network, unused = load_network(read_checkpoint(where), where)
            except CheckpointError as exc:
                raise StageFailedError(f"{model}: {exc}") from exc
            if network.output.out_features != len(tags):
                raise StageFailedError(f"{where}: the network outputs {network.output.out_features} tags; "
                                       f"{model} has {len(tags)}")
            taggers.append(Tagger(prefix, model, network, tags, tuple(unused)))
        self.descriptors.load()
        self.vocabulary = vocabulary
        self.taggers = taggers
        # The first forward pass allocates and picks kernels (~0.3 s): pay it here, not in the first request.
        self._probabilities(np.zeros((1, PATCH_FRAMES, N_MELS), np.float32))

    # --- analysis --------------------------------------------------------------------------------

    def analyze(self, samples: np.ndarray, sr: int, segmentation: Segmentation, top_k: int) -> Labels:
        self._loaded()
        # The descriptors check the request (top_k, segments inside the song) and give the groups a tagger
        # does not: intensity, prominent elements, dynamics, song function, tempo.
        base = self.descriptors.analyze(samples, sr, segmentation, top_k)
        tags = self.tag(samples, sr, segmentation)
        segments = []
        for segment, base_segment, probabilities, patches in zip(segmentation.segments, base.segments,
                                                                 tags.segments, tags.patches):
            scored = self._score_groups("segment", dict(zip(tags.names, probabilities.tolist())), top_k)
            groups = {g: scored[g] if g in scored else base_segment.groups[g]
                      for g in groups_in_scope(self.vocabulary, "segment") if g in scored or g in base_segment.groups}
            measures = base_segment.measures | {"musicnn_patches": float(patches)} | dict(
                zip(tags.names, probabilities.tolist()))
            segments.append(SegmentLabels(segment.index, groups, measures))
        track_scores = dict(zip(tags.names, tags.track.tolist()))
        scored = self._score_groups("track", track_scores, top_k)
        if MOOD_GROUP in scored:  # the style follows the mood the tagger heard, not the descriptors' guess
            moods = self._label_scores(MOOD_GROUP, track_scores)
            styles = self.vocabulary[STYLE_GROUP]
            scored[STYLE_GROUP] = _ranked(styles, {s.id: moods[s.data["mood"]] for s in styles.labels}, top_k,
                                          "one style per mood, scored as its mood")
        track = {g: scored[g] if g in scored else base.track[g] for g in groups_in_scope(self.vocabulary, "track")
                 if g in scored or g in base.track}
        track_measures = base.track_measures | {"musicnn_patches": float(sum(tags.patches))} | track_scores
        return Labels(analyzer=self.name, track=track, segments=segments, track_measures=track_measures)

    def tag(self, samples: np.ndarray, sr: int, segmentation: Segmentation) -> SongTags:
        """Tag probabilities of every segment (its patches averaged) and of the whole track."""
        self._loaded()
        if not segmentation.segments:
            raise InvalidInputError("the segmentation has no segments")
        if samples.size == 0:
            raise InvalidInputError("the song has no audio samples")
        spectrogram = log_mel(samples, sr)
        patches, counts = [], []
        for segment in segmentation.segments:
            frames = segment_frames(spectrogram, segment.start, segment.end)
            starts = patch_starts(frames.shape[0])
            patches += [repeat_pad(frames[s:s + PATCH_FRAMES]) for s in starts]
            counts.append(len(starts))
        probabilities = self._probabilities(np.stack(patches))
        per_segment, first = [], 0
        for count in counts:
            per_segment.append(probabilities[first:first + count].mean(axis=0))
            first += count
        segments = np.stack(per_segment)
        durations = np.array([max(s.duration, 1e-6) for s in segmentation.segments])
        track = (durations[:, None] * segments).sum(axis=0) / durations.sum()
        names = [f"{t.prefix}:{tag}" for t in self.taggers for tag in t.tags]
        return SongTags(names, segments, track, counts)

    def _probabilities(self, patches: np.ndarray) -> np.ndarray:
        """(patches, all taggers' tags) probabilities, the patches in batches of `batch_size`."""
        out = []
        with torch.inference_mode():
            for first in range(0, len(patches), self.batch_size):
                batch = torch.from_numpy(patches[first:first + self.batch_size])
                out.append(torch.cat([t.network(batch) for t in self.taggers], dim=1).numpy())
        return np.concatenate(out).astype(np.float64)

    def _score_groups(self, scope: str, tag_scores: dict[str, float], top_k: int) -> dict[str, LabelGroup]:
        """Every group of `scope` whose labels name musicnn tags, ranked by those tags' probabilities."""
        groups = {}
        for group in groups_in_scope(self.vocabulary, scope):
            scores = self._label_scores(group, tag_scores)
            if scores:
                label_set = self.vocabulary[group]
                note = (f"musicnn tag probabilities (each label: its most probable tag; independent, they need not "
                        f"add up to 1); {len(scores)} of {len(label_set.labels)} labels have musicnn tags")
                groups[group] = _ranked(label_set, scores, top_k, note)
        return groups

    def _label_scores(self, group: str, tag_scores: dict[str, float]) -> dict[str, float]:
        return {label.id: max(tag_scores[t] for t in label.data[MUSICNN_KEY])
                for label in self.vocabulary[group].labels if MUSICNN_KEY in label.data}

    def _loaded(self) -> None:
        if not self.taggers:
            raise StageFailedError("the musicnn analyzer is not loaded")


def segment_frames(spectrogram: np.ndarray, start: float, end: float) -> np.ndarray:
    """The spectrogram frames whose centres lie in [start, end): at least one, the nearest, for a segment
    shorter than a frame (16 ms)."""
    total = spectrogram.shape[0]
    a = min(math.ceil(start * SAMPLE_RATE / HOP), total - 1)
    b = min(math.ceil(end * SAMPLE_RATE / HOP), total)
    return spectrogram[a:max(b, a + 1)]


def patch_starts(frames: int) -> list[int]:
    """Offsets of the patches covering `frames`: one if it fits (repeat-padded), else one per started
    patch length, evenly spaced, the first at 0 and the last ending at `frames`."""
    if frames <= PATCH_FRAMES:
        return [0]
    count = math.ceil(frames / PATCH_FRAMES)
    return [round(i * (frames - PATCH_FRAMES) / (count - 1)) for i in range(count)]


def _ranked(label_set: LabelSet, scores: dict[str, float], top_k: int, note: str) -> LabelGroup:
    order = label_set.ids()
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], order.index(kv[0])))
    return LabelGroup([LabelScore(label_set.text(i), s) for i, s in ranked[:top_k]], note)


def _check_upstream_tags(folder: Path, model: str, tags: tuple[str, ...]) -> None:
    """The tag order this code assumes must be the package's own (configuration.py), where it ships one."""
    configuration = folder / "configuration.py"
    if not configuration.is_file():
        return  # a copy of the weights alone: the copied tag lists are all there is
    try:
        tree = ast.parse(configuration.read_text())
    except (OSError, SyntaxError) as exc:
        raise StageFailedError(f"{configuration}: cannot be read ({exc})") from exc
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == UPSTREAM_TAG_LISTS[model]
                                                for t in node.targets):
            if tuple(ast.literal_eval(node.value)) != tags:
                raise StageFailedError(f"{configuration}: {UPSTREAM_TAG_LISTS[model]} differs from the tags "
                                       "services/common/musicnn_tags.py expects: another musicnn version?")
            return
