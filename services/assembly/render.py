"""Transitions rendered into the joined clips: only what a transition covers is encoded again.

The clips share one encoding (services.common.encoding): H.264 without B-frames, a keyframe at
least every GOP_SECONDS, headers that do not depend on the content. So a clip can be copied, packet
for packet, from any keyframe up to any frame (without B-frames no packet refers to a later one),
and a piece encoded apart with the same arguments joins the copied packets as a clip would.

For each transition the video therefore holds one *piece*, encoded with the shared arguments: from
the transition's first frame to the first keyframe at or after its last frame (in the incoming clip,
whose copy must start on a keyframe); transitions whose pieces would meet share one. Everything
else is copied from the clips by the concat demuxer (`inpoint` on a keyframe, `outpoint` anywhere,
and an exact `duration` for each entry, so the timestamps add up without drift).

A piece is one ffmpeg run: each stretch of a clip it needs is an input seeked to its first frame
and trimmed by frame count; a transition is a blend of the outgoing and the incoming stretch (each
held on its last or first frame where the cut leaves it nothing), whose weight follows the frame's
progress p = (j + 0.5) / frames through the transition:
- dissolve: A + (B - A) p; fade_in and fade_out: the same with black on one side;
- flash: A, then B, through white: full white for the middle half of the flash;
- whip: both pictures side by side, a window sliding from one to the other (eased: slow, fast, slow),
  averaged over 3 frames: the motion blur of a whip pan.
ffmpeg's filters (blend, hstack, crop, tmix) do it in the decoder's YUV frames, in one process per
piece; ARCHITECTURE.md says why not moviepy, with the measurement.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.assembly.edit import CutDecision, Edit
from services.common import encoding, ffmpeg
from services.common.errors import StageFailedError

# Limited-range YUV (the shared encoding's tv range): black and white luma, neutral chroma.
BLACK_Y, WHITE_Y, GREY_C = 16, 235, 128
WHIP_BLUR_FRAMES = 3


@dataclass(frozen=True)
class Source:
    """Frames of one clip: `count` from local frame `first`, its first frame held `hold_before` times before
    them and its last `hold_after` times after. clip None: black."""

    clip: int | None
    first: int
    count: int
    hold_before: int = 0
    hold_after: int = 0

    @property
    def frames(self) -> int:
        return self.hold_before + self.count + self.hold_after


@dataclass(frozen=True)
class Run:
    """A stretch of a piece: a clip's frames as they are (transition ''), or a transition between two sources."""

    frames: int
    out: Source  # the clip's frames, or the outgoing side of the transition
    into: Source | None = None  # the incoming side
    transition: str = ""


@dataclass(frozen=True)
class Piece:
    """Frames [first, end) of the video, encoded anew: the transitions in them and what lies between."""

    first: int
    end: int
    runs: tuple[Run, ...]


@dataclass(frozen=True)
class Copy:
    """Frames of a clip copied as they are: local [first, end); first is one of the clip's keyframes."""

    clip: int
    first: int
    end: int


def _starts(frame_counts: Sequence[int]) -> list[int]:
    """Each clip's first frame in the video, and the video's frame count last."""
    starts = [0]
    for n in frame_counts:
        starts.append(starts[-1] + n)
    return starts


def plan(frame_counts: Sequence[int], edit: Edit, keyframes: Mapping[int, Sequence[int]]) -> list[Copy | Piece]:
    """The video as copies and pieces, in order. `keyframes[i]`: the local frames of clip i's keyframes."""
    starts = _starts(frame_counts)
    total = starts[-1]

    def clip_at(frame: int) -> int:
        return bisect.bisect_right(starts, frame) - 1

    def keyframe_at_or_after(frame: int) -> int:
        if frame >= total:
            return total
        clip = clip_at(frame)
        local = frame - starts[clip]
        later = [k for k in keyframes[clip] if k >= local]
        return starts[clip] + min(later) if later else starts[clip + 1]

    transitions = [c for c in edit.cuts if not c.is_hard]
    groups: list[tuple[int, int, list[CutDecision]]] = []  # (first, end, transitions) of each piece
    for cut in transitions:
        first, last = cut.span()
        end = keyframe_at_or_after(last)
        if groups and first < groups[-1][1]:
            groups[-1] = (groups[-1][0], max(end, groups[-1][1]), [*groups[-1][2], cut])
        else:
            groups.append((first, end, [cut]))

    timeline: list[Copy | Piece] = []
    position = 0
    for first, end, cuts in groups:
        timeline += _copies(position, first, starts)
        timeline.append(Piece(first, end, tuple(_runs(first, end, cuts, starts, frame_counts))))
        position = end
    timeline += _copies(position, total, starts)
    return timeline


def _copies(first: int, end: int, starts: list[int]) -> list[Copy]:
    """Frames [first, end) of the video copied, clip by clip."""
    copies = []
    while first < end:
        clip = bisect.bisect_right(starts, first) - 1
        stop = min(end, starts[clip + 1])
        copies.append(Copy(clip, first - starts[clip], stop - starts[clip]))
        first = stop
    return copies


def _runs(first: int, end: int, cuts: list[CutDecision], starts: list[int],
          frame_counts: Sequence[int]) -> list[Run]:
    runs: list[Run] = []
    position = first
    for cut in cuts:
        a, b = cut.span()
        runs += [Run(c.end - c.first, Source(c.clip, c.first, c.end - c.first)) for c in _copies(position, a, starts)]
        clips = len(frame_counts)
        outgoing = None if cut.transition == "fade_in" else min(cut.index, clips - 1)
        incoming = None if cut.transition == "fade_out" else cut.index + 1
        runs.append(Run(b - a, _side(outgoing, a, b, starts, frame_counts, outgoing=True),
                        _side(incoming, a, b, starts, frame_counts, outgoing=False), cut.transition))
        position = b
    runs += [Run(c.end - c.first, Source(c.clip, c.first, c.end - c.first)) for c in _copies(position, end, starts)]
    return runs


def _side(clip: int | None, a: int, b: int, starts: list[int], frame_counts: Sequence[int], outgoing: bool) -> Source:
    """One side of the transition over video frames [a, b): the clip's own frames there, held where it has none."""
    frames = b - a
    if clip is None:
        return Source(None, 0, frames)
    lo, hi = max(a, starts[clip]), min(b, starts[clip] + frame_counts[clip])
    if hi <= lo:  # the transition lies wholly on the other side of the cut: hold the nearest frame
        first = frame_counts[clip] - 1 if outgoing else 0
        return Source(clip, first, 1, 0 if outgoing else frames - 1, frames - 1 if outgoing else 0)
    return Source(clip, lo - starts[clip], hi - lo, lo - a, b - hi)


def batches(count: int, workers: int, per_run: int) -> list[range]:
    """The pieces 0..count-1 in contiguous runs of ffmpeg: one per worker, more when a run would hold too many."""
    if not count:
        return []
    runs = max(min(workers, count), math.ceil(count / per_run))
    bounds = [round(k * count / runs) for k in range(runs + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def render_pieces(pieces: Sequence[Piece], clips: Sequence[Path], fps: int, width: int, height: int,
                  out_path: Path) -> list[int]:
    """Encode the pieces one after another into `out_path` with the shared encoding, in one ffmpeg run, each
    starting on a keyframe; returns the frame each starts at there."""
    inputs: list[str] = []  # ffmpeg's input options, one -i per stretch of a clip
    graph: list[str] = []
    labels: list[str] = []
    opened = 0
    # Every stream on one clock, frame n at n / fps: the blend and crop expressions read the frame's time.
    retime = f"settb=1/{fps},setpts=N"

    def source(src: Source, name: str) -> str:
        nonlocal opened
        if src.clip is None:
            graph.append(f"color=c=black:s={width}x{height}:r={fps},format={encoding.PIX_FMT},setsar=1,"
                         f"trim=end_frame={src.frames},{retime}[{name}]")
            return name
        index, opened = opened, opened + 1
        if src.first > 0:
            # Half a frame early: the decoder starts at the keyframe before and drops what precedes it.
            inputs.extend(["-ss", f"{(src.first - 0.5) / fps:.6f}"])
        inputs.extend(["-t", f"{(src.count + 2) / fps:.6f}", "-i", str(clips[src.clip])])
        chain = f"[{index}:v:0]trim=end_frame={src.count}"
        if src.hold_before or src.hold_after:
            chain += f",tpad=start={src.hold_before}:stop={src.hold_after}:start_mode=clone:stop_mode=clone"
        graph.append(f"{chain},{retime}[{name}]")
        return name

    offsets, frames = [], 0
    for p, piece in enumerate(pieces):
        offsets.append(frames)
        frames += piece.end - piece.first
        for k, run in enumerate(piece.runs):
            out = source(run.out, f"p{p}o{k}")
            if run.into is None:
                labels.append(out)
                continue
            into = source(run.into, f"p{p}i{k}")
            graph.append(f"[{out}][{into}]{_composite(run.transition, run.frames, fps, width, height)}[p{p}t{k}]")
            labels.append(f"p{p}t{k}")
    graph.append("".join(f"[{label}]" for label in labels)
                 + f"concat=n={len(labels)}:v=1:a=0,settb=1/{fps},setpts=N[v]")
    # Each piece begins with a keyframe (an IDR frame: the GOP is closed), where the concat list starts a copy.
    keyframes = "expr:" + "+".join(f"eq(n,{offset})" for offset in offsets)
    try:
        ffmpeg.run("ffmpeg", [
            "-y", *inputs, "-filter_complex", ";".join(graph), "-map", "[v]", "-frames:v", str(frames),
            "-r", str(fps), *encoding.h264_encoder_args(fps), "-force_key_frames", keyframes,
            *encoding.mp4_muxer_args(fps), "-f", "mp4", str(out_path),
        ], timeout=600)
    except ffmpeg.ToolError as exc:
        spans = ", ".join(f"{piece.first}-{piece.end}" for piece in pieces)
        raise StageFailedError(f"the transitions at frames {spans} could not be rendered: {exc}") from exc
    return offsets


def _composite(transition: str, frames: int, fps: int, width: int, height: int) -> str:
    """The filter that makes a transition of `frames` frames from its outgoing (A) and incoming (B) stream."""
    progress = f"((floor(T*{fps}+0.5)+0.5)/{frames})"  # p of the frame: (j + 0.5) / frames
    if transition in ("dissolve", "fade_in", "fade_out"):
        return f"blend=all_expr='A+(B-A)*{progress}'"
    if transition == "flash":
        # White rises over the first quarter, holds for the middle half, falls over the last quarter; the
        # picture beneath it changes from A to B at the cut, in the middle.
        white = f"min(1,2*(1-abs(2*{progress}-1)))"
        under = f"if(lt({progress},0.5),A,B)"
        luma = f"{under}+({WHITE_Y}-{under})*{white}"
        chroma = f"{under}+({GREY_C}-{under})*{white}"
        return f"blend=c0_expr='{luma}':c1_expr='{chroma}':c2_expr='{chroma}'"
    if transition == "whip":
        t = f"((floor(t*{fps}+0.5)+0.5)/{frames})"
        eased = f"({t}*{t}*(3-2*{t}))"
        return (f"hstack=inputs=2,crop=w={width}:h={height}:x='{width}*{eased}':y=0,"
                f"tmix=frames={WHIP_BLUR_FRAMES}")
    raise StageFailedError(f"no renderer for the transition {transition!r}")


@dataclass(frozen=True)
class Placed:
    """Where a rendered piece lies: the file of pieces and the frame it starts at there."""

    path: Path
    offset: int


def concat_entries(timeline: Sequence[Copy | Piece], clips: Sequence[Path], placed: Mapping[int, Placed], fps: int,
                   quote: Callable[[Path], str]) -> str:
    """The concat demuxer's list: every entry a stretch of a file (a clip, or the file of rendered pieces) from
    one of its keyframes (inpoint) to its last frame (outpoint), with its exact duration, so that the video's
    timestamps are frame / fps throughout."""
    lines = []
    position = 0
    for k, entry in enumerate(timeline):
        frames = entry.end - entry.first
        if isinstance(entry, Piece):
            path, first = placed[k].path, placed[k].offset
        else:
            path, first = clips[entry.clip], entry.first
        lines.append(f"file {quote(path)}")
        if first:
            # Rounded up, so that the demuxer's seek (to the keyframe at or before it) finds this keyframe.
            lines.append(f"inpoint {math.ceil(first * 1_000_000 / fps) / 1_000_000:.6f}")
        # Half a frame before the first frame left out: packets from there on are dropped.
        lines.append(f"outpoint {(first + frames - 0.5) / fps:.6f}")
        # Durations in microseconds that add up to each entry's exact start: no rounding carries over.
        start_us, end_us = round(position * 1_000_000 / fps), round((position + frames) * 1_000_000 / fps)
        lines.append(f"duration {(end_us - start_us) / 1_000_000:.6f}")
        position += frames
    return "".join(line + "\n" for line in lines)


def encoded_frames(timeline: Sequence[Copy | Piece]) -> int:
    return sum(e.end - e.first for e in timeline if isinstance(e, Piece))


def validate_sources(edit: Edit, frame_counts: Sequence[int]) -> None:
    """The edit covers exactly these clips (the stage checked it against the segments they were made for)."""
    if edit.frames != sum(frame_counts):
        raise StageFailedError(f"the edit covers {edit.frames} frames; the clips have {sum(frame_counts)}")
