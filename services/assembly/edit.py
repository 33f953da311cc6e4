"""The edit: how the video passes from one clip to the next at every cut (edit.json, edit.txt).

Every cut gets a transition: `cut` (hard), `dissolve` (a crossfade), `flash` (through white), `whip`
(a fast pan from one picture to the next), and at the ends `fade_in` (from black) and `fade_out`
(to black). A transition lasts `frames` frames placed by `align`: centred on the cut, starting at it
or ending on it, so the picture change still lands on the cut (on the beat), and the video keeps its
exact frames: a transition takes frames from the segments beside the cut, never adds any.

`decide_edit(..., mode="auto")` is the policy. It reads why the segmenter cut (segments.json: the
end reason, the beats) and, when there are labels, what the analysis heard on both sides of the cut
(labels.json: the intensity, the dynamic shift, the song function, and the level in dBFS where the
analyser measured it). Its rules, in order (the first that holds decides):

  0. The start fades in from black and the end fades out to black (FADE_SECONDS).
  1. Into a burst or a climax that is louder than before (RISE_DB, or a step up in the intensity
     label): a flash on the cut, or a whip when the passage before was building up to it.
  2. Into a calmer passage (quieter by DROP_DB or a step down in intensity; the start of a breakdown,
     of an outro, of a passage that fades), or out of a passage that fades: a dissolve.
  3. A cut the segmenter forced by length (`max`) that misses every beat: a dissolve, which hides a
     cut the music does not make. (Without labels this is the only rule beside 0 and 4.)
  4. Anything else, above all a cut on a beat inside a groove: a hard cut.

A transition takes at most half of each segment it reaches into (so the transitions at both ends of
a short segment never meet); one that would be shorter than MIN_FRAMES is a hard cut instead.
`mode="none"` makes every cut hard, without fades: the video as assembly made it before edits.

labels.json holds label texts, not ids, and the assembly image carries no prompts/: a label is
recognised by the word of prompts/labels that names it (LABEL_WORDS: "quiet breakdown" is a
breakdown). A label set rewritten in other words leaves those rules to the level measures.

`edit.json` (Edit.to_dict) is the machine form, which a person may change and rerun: only assembly
runs again. `Edit.checked()` holds a person's edit to the segments (the same cuts at the same
frames, known transitions, frames that fit) and names the cut it cannot use. `edit.txt` is one line
per cut.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from services.common.artifacts import Labels, Segment, Segmentation, SegmentLabels
from services.common.errors import InvalidInputError
from services.common.stage_api import TRANSITION_MODES
from services.common.timing import clock, frame_at

TRANSITIONS = ("cut", "dissolve", "flash", "whip", "fade_in", "fade_out")
INNER_TRANSITIONS = ("cut", "dissolve", "flash", "whip")
ALIGNS = ("centre", "start", "end")
START = -1  # the index of the video's start (a fade in); the cut after segment i has index i

# Durations of the policy's transitions, in seconds (turned into frames at the video's rate).
FADE_SECONDS = 1.0
DISSOLVE_SECONDS = 0.5
FLASH_SECONDS = 1 / 6  # 4 frames at 24 fps
WHIP_SECONDS = 0.25  # 6 frames at 24 fps
MIN_FRAMES = 2  # a transition shorter than this is no transition: a hard cut
ALIGN = {"dissolve": "centre", "flash": "centre", "whip": "centre", "fade_in": "start", "fade_out": "end",
         "cut": "centre"}

# When the level measures are there (the descriptors analyser: rms_dbfs), a step of this many dB
# between the segments either side of a cut is a rise or a drop.
RISE_DB = 6.0
DROP_DB = 6.0
# Otherwise the intensity labels: soft 0, moderate 1, intense 2, weighted by their scores.
INTENSITY_LEVELS = {"soft": 0.0, "moderate": 1.0, "intense": 2.0}
LEVEL_STEP = 0.6
BEAT_TOLERANCE_S = 0.06  # a cut this close to a beat is on it (the segmenter snaps cuts to beats)

# The word that names each label the policy reads, per label group (prompts/labels/*.yaml): a label
# whose text holds the word is that label.
LABEL_WORDS = {
    "instrumental_intensity": ("soft", "moderate", "intense"),
    "dynamic_shift": ("building", "steady", "dropping", "burst", "fading"),
    "rhythmic_function": ("intro", "groove", "transition", "climax", "breakdown", "outro"),
}

PLACES = {"centre": "centred", "start": "from the cut", "end": "up to the cut"}  # align, in edit.txt
SEGMENTER_REASONS = {
    "change": "the sound changes",
    "beats": "a run of beats ends",
    "max": "the segment reached its longest",
    "random": "a random cut",
}

NOTE = ("Change a cut's transition (cut, dissolve, flash, whip; fade_in at the start, fade_out at the end), its "
        "frames or its align (centre, start, end: where the transition lies around the cut) and run again: only "
        "assembly runs again. A transition takes its frames from the segments beside the cut.")


@dataclass(frozen=True)
class CutDecision:
    """One cut and its transition. index: the cut after segment `index`; START (-1) is the video's start,
    and the cut after the last segment its end."""

    index: int
    time: float  # seconds from the song's start
    frame: int  # the first frame after the cut (timing.frame_at: what Segmentation.frame_counts add up to)
    transition: str  # one of TRANSITIONS
    frames: int  # how long the transition lasts; 0 for a hard cut
    align: str  # one of ALIGNS: centred on the cut, starting at it or ending on it
    reason: str = ""  # why, in a sentence a person reads

    @property
    def is_hard(self) -> bool:
        return self.transition == "cut" or self.frames == 0

    def span(self) -> tuple[int, int]:
        """The frames [first, end) of the video the transition covers."""
        if self.is_hard:
            return self.frame, self.frame
        if self.align == "centre":
            first = self.frame - self.frames // 2
        elif self.align == "end":
            first = self.frame - self.frames
        else:
            first = self.frame
        return first, first + self.frames

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "time": round(self.time, 4), "frame": self.frame, "transition": self.transition,
                "frames": self.frames, "align": self.align, "reason": self.reason}


@dataclass
class Edit:
    """edit.json: a transition at every cut of one segmentation at one frame rate."""

    fps: int
    decided_by: str  # "policy" (mode auto), "none" (every cut hard), or whatever a person writes
    cuts: list[CutDecision]  # the start, each cut between two segments, the end: in order
    segments_sha256: str = ""  # of the segments.json it was decided for: an edit for other segments is stale
    labels_sha256: str = ""  # of the labels.json the policy read ('' = none)
    decided_sha256: str = ""  # of the cuts as the policy decided them: other cuts mean a person changed them
    note: str = NOTE

    @property
    def edited(self) -> bool:
        """Whether the cuts differ from those the policy decided (a person changed them, or wrote the edit)."""
        return self.decided_sha256 != cuts_sha256(self.cuts)

    @property
    def frames(self) -> int:
        return self.cuts[-1].frame if self.cuts else 0

    @property
    def is_hard(self) -> bool:
        """Whether every cut is a hard cut: the clips join by stream copy alone."""
        return all(c.is_hard for c in self.cuts)

    def counts(self) -> dict[str, int]:
        """How many cuts of each transition, hard cuts between segments included, ends only when they fade."""
        counts: dict[str, int] = {}
        last = len(self.cuts) - 1
        for position, cut in enumerate(self.cuts):
            kind = "cut" if cut.is_hard else cut.transition
            if position in (0, last) and kind == "cut":
                continue  # the video's start and end are no cut
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {"decided_by": self.decided_by, "fps": self.fps, "frames": self.frames,
                "segments_sha256": self.segments_sha256, "labels_sha256": self.labels_sha256,
                "decided_sha256": self.decided_sha256, "note": self.note, "cuts": [c.to_dict() for c in self.cuts]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Edit:
        """The edit as written; InvalidInputError, naming the cut, when a field is missing or of the wrong type."""
        if not isinstance(d, dict):
            raise InvalidInputError("edit.json must hold an object with a list of cuts")
        cuts = d.get("cuts")
        if not isinstance(cuts, list) or not cuts:
            raise InvalidInputError("edit.json has no list of cuts")
        return cls(fps=_whole(d.get("fps"), "edit.json's fps"), decided_by=str(d.get("decided_by", "")),
                   cuts=[_cut_from(c, position) for position, c in enumerate(cuts)],
                   segments_sha256=str(d.get("segments_sha256", "")), labels_sha256=str(d.get("labels_sha256", "")),
                   decided_sha256=str(d.get("decided_sha256", "")), note=str(d.get("note", NOTE)))

    def checked(self, segmentation: Segmentation, fps: int) -> Edit:
        """This edit if it fits these segments at `fps`, else InvalidInputError naming the cut: the same cuts at
        the same frames, a known transition where it may go, frames within what the segments beside it hold."""
        if self.fps != fps:
            raise InvalidInputError(f"edit.json is for {self.fps} fps; the video is {fps} fps")
        expected = cut_points(segmentation, fps)
        if len(self.cuts) != len(expected):
            raise InvalidInputError(
                f"edit.json has {len(self.cuts)} cuts; the segments make {len(expected)} (the start, "
                f"{len(expected) - 2} between segments, the end): an edit cannot add or remove cuts")
        counts = [frame_at(s.end, fps) - frame_at(s.start, fps) for s in segmentation.segments]
        taken = [0] * len(counts)  # frames of each segment that transitions cover
        for cut, (index, time, frame) in zip(self.cuts, expected):
            name = _name(index, time, len(counts))
            if cut.index != index or cut.frame != frame or abs(cut.time - time) > 0.5 / fps:
                raise InvalidInputError(
                    f"edit.json, {name}: written as cut {cut.index} at {cut.time:.3f} s (frame {cut.frame}); the "
                    f"segments put it at {time:.3f} s (frame {frame}): an edit cannot move cuts")
            allowed = ("cut", "fade_in") if index == START else (
                ("cut", "fade_out") if index == len(counts) - 1 else INNER_TRANSITIONS)
            if cut.transition not in allowed:
                raise InvalidInputError(f"edit.json, {name}: transition {cut.transition!r} cannot go there; "
                                        f"choose one of: {', '.join(allowed)}")
            if cut.align not in ALIGNS:
                raise InvalidInputError(f"edit.json, {name}: align {cut.align!r} is not one of: {', '.join(ALIGNS)}")
            if cut.transition == "cut":
                if cut.frames != 0:
                    raise InvalidInputError(f"edit.json, {name}: a hard cut lasts 0 frames, not {cut.frames}")
                continue
            if cut.frames < 1:
                raise InvalidInputError(f"edit.json, {name}: a {cut.transition} needs frames >= 1 (the policy gives "
                                        f"it {default_frames(cut.transition, fps)} at {fps} fps)")
            first, end = cut.span()
            before, after = max(0, min(end, frame) - first), max(0, end - max(first, frame))
            if index == START and before:
                raise InvalidInputError(f"edit.json, {name}: the fade in must start at the start (align \"start\")")
            if index == len(counts) - 1 and after:
                raise InvalidInputError(f"edit.json, {name}: the fade out must end at the end (align \"end\")")
            for segment, part in ((index, before), (index + 1, after)):
                if part and 0 <= segment < len(counts):
                    taken[segment] += part
                    if taken[segment] > counts[segment]:
                        raise InvalidInputError(
                            f"edit.json, {name}: its {cut.transition} of {cut.frames} frames ({cut.align}) and the "
                            f"transitions before it need {taken[segment]} frames of segment {segment}, which has "
                            f"{counts[segment]}")
        return self

    def to_text(self) -> str:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts().items()))
        lines = [f"Edit at {self.fps} fps, decided by {self.decided_by or 'a person'}: {counts or 'no cuts'}",
                 self.note, ""]
        last = len(self.cuts) - 1
        for position, c in enumerate(self.cuts):
            where = "start" if position == 0 else "end" if position == last else str(c.index)
            length = "" if c.is_hard else f"{c.frames:3d} frames ({PLACES.get(c.align, c.align)})"
            lines.append(f"{where:>5}  {clock(c.time)}  {c.transition:<9} {length:<27} {c.reason}".rstrip())
        return "\n".join(lines) + "\n"


def cut_points(segmentation: Segmentation, fps: int) -> list[tuple[int, float, int]]:
    """(index, time, frame) of every cut of these segments: the start, each segment's end."""
    segments = segmentation.segments
    return [(START, 0.0, 0)] + [(i, s.end, frame_at(s.end, fps)) for i, s in enumerate(segments)]


def default_frames(transition: str, fps: int) -> int:
    seconds = {"dissolve": DISSOLVE_SECONDS, "flash": FLASH_SECONDS, "whip": WHIP_SECONDS,
               "fade_in": FADE_SECONDS, "fade_out": FADE_SECONDS}.get(transition, 0.0)
    return max(MIN_FRAMES, round(seconds * fps)) if seconds else 0


def cuts_sha256(cuts: list[CutDecision]) -> str:
    return hashlib.sha256(json.dumps([c.to_dict() for c in cuts], sort_keys=True).encode()).hexdigest()


def decide_edit(segmentation: Segmentation, labels: Labels | None, fps: int, mode: str = "auto",
                segments_sha256: str = "", labels_sha256: str = "") -> Edit:
    """The policy's edit of these segments (see the module's docstring for its rules)."""
    if mode not in TRANSITION_MODES:
        raise InvalidInputError(f"unknown transitions mode {mode!r}; choose one of: {', '.join(TRANSITION_MODES)}")
    segments = segmentation.segments
    if not segments:
        raise InvalidInputError("the segmentation has no segments")
    points = cut_points(segmentation, fps)
    counts = [frame_at(s.end, fps) - frame_at(s.start, fps) for s in segments]
    if mode == "none":
        cuts = [CutDecision(index, time, frame, "cut", 0, "centre",
                            "hard cut (transitions: none)" if 0 <= index < len(segments) - 1 else "no fade")
                for index, time, frame in points]
        return Edit(fps=fps, decided_by="none", cuts=cuts, segments_sha256=segments_sha256,
                    labels_sha256=labels_sha256, decided_sha256=cuts_sha256(cuts))

    sides = _sides(segments, labels)
    cuts = []
    last = len(segments) - 1
    for index, time, frame in points:
        if index == START:
            transition, reason = "fade_in", "fade in from black at the start"
            room = counts[0] // 2
        elif index == last:
            transition, reason = "fade_out", "fade out to black at the end"
            room = counts[last] // 2
        else:
            transition, reason = _inner(segments[index], sides[index], sides[index + 1], segmentation.beats)
            room = 0
        frames = default_frames(transition, fps)
        align = ALIGN[transition]
        if transition not in ("cut", "fade_in", "fade_out"):
            # Centred: frames // 2 before the cut, the rest after it; each side within half its segment.
            while frames and (frames // 2 > counts[index] // 2 or frames - frames // 2 > counts[index + 1] // 2):
                frames -= 1
        elif transition != "cut":
            frames = min(frames, room)
        if transition != "cut" and frames < MIN_FRAMES:
            reason = f"hard cut: the segments beside it are too short for a {transition.replace('_', ' ')} ({reason})"
            transition, frames, align = "cut", 0, "centre"
        cuts.append(CutDecision(index, time, frame, transition, frames, align, reason))
    return Edit(fps=fps, decided_by="policy", cuts=cuts, segments_sha256=segments_sha256,
                labels_sha256=labels_sha256, decided_sha256=cuts_sha256(cuts))


@dataclass
class _Side:
    """What the policy knows of one segment: the words of its top labels, its level."""

    intensity: str | None = None
    dynamic: str | None = None
    function: str | None = None
    rms_dbfs: float | None = None  # the analyser's measured level, when it measured one
    level: float | None = None  # 0 (soft) .. 2 (intense), from the intensity label's scores

    @property
    def known(self) -> bool:
        return any(w is not None for w in (self.intensity, self.dynamic, self.function))

    def describe(self) -> str:
        return ", ".join(w for w in (self.intensity, self.dynamic, self.function) if w) or "unlabelled"


def _sides(segments: list[Segment], labels: Labels | None) -> list[_Side]:
    by_index: dict[int, SegmentLabels] = {s.index: s for s in labels.segments} if labels else {}
    sides = []
    for segment in segments:
        found = by_index.get(segment.index)
        if found is None:
            sides.append(_Side())
            continue
        side = _Side(intensity=_word(found, "instrumental_intensity"), dynamic=_word(found, "dynamic_shift"),
                     function=_word(found, "rhythmic_function"))
        rms = found.measures.get("rms_dbfs")
        side.rms_dbfs = float(rms) if isinstance(rms, int | float) and math.isfinite(rms) else None
        group = found.groups.get("instrumental_intensity")
        if group and group.labels:
            weighted = [(INTENSITY_LEVELS[w], x.score) for x in group.labels
                        if (w := _recognise(x.label, LABEL_WORDS["instrumental_intensity"])) is not None]
            total = sum(score for _, score in weighted)
            side.level = sum(level * score for level, score in weighted) / total if total > 0 else None
        sides.append(side)
    return sides


def _word(labels: SegmentLabels, group: str) -> str | None:
    found = labels.groups.get(group)
    top = found.top() if found else None
    return _recognise(top, LABEL_WORDS[group]) if top else None


def _recognise(text: str, words: tuple[str, ...]) -> str | None:
    lowered = text.lower()
    return next((w for w in words if w in lowered), None)


def _inner(segment: Segment, a: _Side, b: _Side, beats: list[float]) -> tuple[str, str]:
    """The transition at the cut after `segment` (from side a into side b), and why: the rules 1-4."""
    on_beat = bool(beats) and min(abs(beat - segment.end) for beat in beats) <= BEAT_TOLERANCE_S
    beat = " on the beat" if on_beat else (" off the beat" if beats else "")
    why = f"cut{beat} where {SEGMENTER_REASONS.get(segment.end_reason, segment.end_reason)}"
    if a.rms_dbfs is not None and b.rms_dbfs is not None:
        step = b.rms_dbfs - a.rms_dbfs
        louder, quieter, change = step >= RISE_DB, step <= -DROP_DB, f" ({step:+.1f} dB)"
    elif a.level is not None and b.level is not None:
        step = b.level - a.level
        louder, quieter, change = step >= LEVEL_STEP, step <= -LEVEL_STEP, ""
    else:
        louder = quieter = False
        change = ""
    heard = f"; {a.describe()} -> {b.describe()}{change}" if a.known or b.known else ""
    if (b.dynamic == "burst" or b.function == "climax") and louder:  # 1
        if a.dynamic == "building":
            return "whip", f"whip into the {b.function or 'burst'} the music built up to: {why}{heard}"
        return "flash", f"flash into a sudden {b.dynamic or b.function}: {why}{heard}"
    # Into a calmer passage: one that begins there (a breakdown or outro after something else, a passage that
    # starts to fade), not the next cut inside the same breakdown.
    calmer = (b.function in ("breakdown", "outro") and b.function != a.function) or \
        (b.dynamic == "fading" and a.dynamic != "fading")
    if quieter or (calmer and not louder) or a.dynamic == "fading":  # 2
        if a.dynamic == "fading" and not (quieter or calmer):
            return "dissolve", f"dissolve out of a passage that fades: {why}{heard}"
        into = b.function if b.function in ("breakdown", "outro") else "a calmer passage"
        return "dissolve", f"dissolve into {into}: {why}{heard}"
    if segment.end_reason == "max" and beats and not on_beat:  # 3
        return "dissolve", f"dissolve over a cut the music does not make: {why}{heard}"
    if louder:  # 4
        return "cut", f"hard {why}, into a louder passage{heard}"
    return "cut", f"hard {why}{', inside a groove' if on_beat and (a.known or b.known) else ''}{heard}"


def _name(index: int, time: float, segment_count: int) -> str:
    if index == START:
        return "the start"
    if index == segment_count - 1:
        return f"the end ({clock(time)})"
    return f"cut {index} ({clock(time)}, between segments {index} and {index + 1})"


def _cut_from(d: Any, position: int) -> CutDecision:
    if not isinstance(d, dict):
        raise InvalidInputError(f"edit.json, cut #{position + 1} in the list is not an object")
    missing = [k for k in ("index", "time", "frame", "transition", "frames", "align") if k not in d]
    if missing:
        raise InvalidInputError(f"edit.json, cut #{position + 1} in the list lacks {', '.join(missing)}")
    what = f"edit.json, cut #{position + 1} in the list"
    time = d["time"]
    if not isinstance(time, int | float) or isinstance(time, bool) or not math.isfinite(time):
        raise InvalidInputError(f"{what}: time must be a number of seconds, not {time!r}")
    return CutDecision(
        index=_whole(d["index"], f"{what}: index"), time=float(time), frame=_whole(d["frame"], f"{what}: frame"),
        transition=str(d["transition"]), frames=_whole(d["frames"], f"{what}: frames"), align=str(d["align"]),
        reason=str(d.get("reason", "")))


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise InvalidInputError(f"{what} must be a whole number, not {value!r}")
    return int(value)

