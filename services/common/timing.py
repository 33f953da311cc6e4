"""Time as people read it, and frame arithmetic shared by the video and assembly stages.

A cut at time t lands on output frame round(t * fps), counted from the song's start. A segment
[start, end) therefore owns round(end*fps) - round(start*fps) frames, and the frames of all
segments add up to round(song_duration * fps): the video can never drift from the audio.
"""

from __future__ import annotations


def frame_at(seconds: float, fps: float) -> int:
    # Round half away from zero, not Python's banker's rounding, so that the rule is easy to state.
    return int(seconds * fps + 0.5)


def frame_count(start: float, end: float, fps: float) -> int:
    """Frames owned by the segment [start, end)."""
    return frame_at(end, fps) - frame_at(start, fps)


def clock(seconds: float, decimals: int = 3) -> str:
    """Minutes and seconds, as a person reads a time in a song: 1:05.250."""
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes):d}:{rest:0{3 + decimals}.{decimals}f}"
