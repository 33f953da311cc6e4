"""Turning cut points into segments that cover the song exactly; shared by both segmenters."""

from __future__ import annotations

from typing import NamedTuple

from services.common.artifacts import Segment


class Cut(NamedTuple):
    time: float  # seconds from the song's start
    reason: str  # why the segment before it ends: one of SEGMENT_END_REASONS


def segments_from_cuts(cuts: list[Cut], duration: float, min_seconds: float, max_seconds: float,
                       split_reason: str) -> list[Segment]:
    """Segments between consecutive cuts, from 0 to `duration` with no gap or overlap.

    `cuts` are strictly increasing and inside (0, duration). The tail rule: a remainder after the
    last cut that is shorter than `min_seconds` is merged into the previous segment; when that
    merge would make the previous segment longer than `max_seconds`, the last two are split evenly
    instead (the new cut gets `split_reason`). Both halves are then longer than max/2 and no longer
    than (max + min)/2, so they stay within [min, max] whenever max >= 2 min (true of the defaults:
    random 4-8 s, rules 2-7 s). A song shorter than the minimum is one segment.
    """
    cuts = list(cuts)
    if cuts and duration - cuts[-1].time < min_seconds:
        previous_start = cuts[-2].time if len(cuts) > 1 else 0.0
        cuts.pop()
        if duration - previous_start > max_seconds:
            cuts.append(Cut((previous_start + duration) / 2, split_reason))
    bounds = [0.0] + [c.time for c in cuts] + [duration]
    reasons = [c.reason for c in cuts] + ["end"]
    return [Segment(i, start, end, reason)
            for i, (start, end, reason) in enumerate(zip(bounds[:-1], bounds[1:], reasons))]
