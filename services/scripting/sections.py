"""The song's sections: runs of consecutive segments that an LLM writes in one call.

A script for a whole song in one call breaks at the length of real songs (a prompt that grows with
every segment, an answer too long for a small model to keep distinct, a context that overflows).
So the writer plans the story over sections, then writes each section's scenes in a call of its
own. Sections follow the music where the segmentation and the labels say it changes:

- a section closes where the song's part changes (the rhythmic function label: intro, groove,
  climax, breakdown, outro) or before a transition segment, which leads into the next part, once
  it holds STRONG_MIN_SEGMENTS segments;
- it closes at a cut the segmenter made on a spectral change once it holds TARGET_SEGMENTS;
- it always closes at MAX_SEGMENTS (bench/SCRIPTING.md, "Sections": the measurements behind these);
- a remainder shorter than MIN_SEGMENTS joins the section before it (split evenly with it when
  that would pass MAX_SEGMENTS).

Without labels (the LALM pipeline) only the cuts and the bounds apply.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.artifacts import Segmentation
from services.common.errors import InvalidInputError

MIN_SEGMENTS = 2
STRONG_MIN_SEGMENTS = 4  # fewer, and the descriptors' scattered transitions cut a song into pairs
TARGET_SEGMENTS = 6
MAX_SEGMENTS = 8
TRANSITION = "transition"


@dataclass(frozen=True)
class SongSection:
    index: int
    first: int  # index of its first segment
    last: int  # index of its last segment (inclusive)
    start: float  # seconds
    end: float
    roles: tuple[str, ...]  # each segment's rhythmic function id ("" when not known)

    @property
    def segment_indices(self) -> range:
        return range(self.first, self.last + 1)

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    @property
    def role(self) -> str:
        """The role most of its segments play (the first of equals); '' when not known."""
        known = [r for r in self.roles if r]
        return Counter(known).most_common(1)[0][0] if known else ""

    def roles_text(self) -> str:
        """'intro', or 'transition, then groove': its roles in order, repeats joined."""
        steps = [r for i, r in enumerate(self.roles) if r and (i == 0 or r != self.roles[i - 1])]
        return ", then ".join(steps)


def group_sections(segmentation: Segmentation, roles: Sequence[str] | None = None,
                   max_segments: int = MAX_SEGMENTS) -> list[SongSection]:
    """Sections covering every segment in order; `roles`: each segment's rhythmic function id, or None."""
    segments = segmentation.segments
    if not segments:
        raise InvalidInputError("the segmentation has no segments")
    roles = list(roles) if roles is not None else [""] * len(segments)
    if len(roles) != len(segments):
        raise InvalidInputError(f"{len(roles)} segment roles for {len(segments)} segments")
    max_segments = max(MIN_SEGMENTS, max_segments)
    target = min(TARGET_SEGMENTS, max_segments)

    bounds: list[tuple[int, int]] = []  # (first, last) segment positions
    first = 0
    part = roles[0]  # the part of the song the open section is in (transitions belong to none)
    for i in range(1, len(segments)):
        size = i - first
        new_part = roles[i] == TRANSITION or (roles[i] and part and roles[i] != part)
        change_cut = segments[i - 1].end_reason == "change"
        if size >= max_segments or (size >= STRONG_MIN_SEGMENTS and new_part) or (size >= target and change_cut):
            bounds.append((first, i - 1))
            first, part = i, ""
        if roles[i] != TRANSITION:
            part = part or roles[i]
    bounds.append((first, len(segments) - 1))

    last_first, last_last = bounds[-1]
    if len(bounds) > 1 and last_last - last_first + 1 < MIN_SEGMENTS:
        prev_first, _ = bounds[-2]
        joined = last_last - prev_first + 1
        if joined <= max_segments:
            bounds[-2:] = [(prev_first, last_last)]
        else:
            middle = prev_first + (joined + 1) // 2
            bounds[-2:] = [(prev_first, middle - 1), (middle, last_last)]

    return [SongSection(n, segments[a].index, segments[b].index, segments[a].start, segments[b].end,
                        tuple(roles[a:b + 1]))
            for n, (a, b) in enumerate(bounds)]
