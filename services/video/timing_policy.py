"""How a diffusion model's native clip becomes a segment's clip of exactly its output frame count.

A model generates at its own frame rate and within its own frame-count rule (Wan 2.1: 16 fps,
4k+1 frames, at most 81, about 5 s; Mochi-1: 30 fps, 6k+1 frames, at most 163, about 5.4 s).
Output frame i (shown at i / out_fps seconds into the clip) shows the native frame that is on
screen at that instant (sample and hold: repeated when the output rate is higher, dropped when it
is lower), so motion keeps its real speed.

A segment longer than the model's longest clip is covered by one of two policies:
- `retime`: one clip of the longest length, played slower so that it spans the segment (each
  native frame held a little longer: slow motion, by at most ~1.6x for the segmenters' 8 s);
- `continue`: a first clip, then more clips, each generated from the previous one's last frame
  by an image-to-video model, joined without that repeated frame, at real speed.
Integer arithmetic throughout: the mapping has no rounding drift.

Retiming slower than NATURAL_MIN_SPEED (0.5×) is made as asked but flagged (`slow_motion_warning`,
said in the clip's metadata and the log): below it Wan's 16 fps shows fewer than 8 new frames a
second, which reads as stutter rather than slow motion. It is not capped: a capped clip would no
longer cover its segment frame for frame, and a loop or a freeze would be a worse picture than
slow motion; `continue` (Wan) or shorter segments are the remedy, and the note says so.
"""

from __future__ import annotations

from dataclasses import dataclass

POLICIES = ("retime", "continue")
NATURAL_MIN_SPEED = 0.5  # slower retiming than this is flagged: see the module's docstring


@dataclass(frozen=True)
class NativeFormat:
    """A model's native video: its frame rate and its frame-count rule, frames = step·k + 1."""

    fps: int
    frame_step: int  # the VAE's temporal compression: latent frame 0 is one frame, each further one `frame_step`
    max_frames: int  # the longest clip the model makes (itself step·k + 1)

    def __post_init__(self) -> None:
        if not self.allowed(self.max_frames):
            raise ValueError(f"max_frames {self.max_frames} is not {self.frame_step}·k + 1")

    def allowed(self, frames: int) -> bool:
        return frames >= 1 and (frames - 1) % self.frame_step == 0

    def frames_covering(self, needed: int) -> int:
        """The fewest frames the model can make that are at least `needed` (a real clip: at least
        one step past the single frame), capped at the longest clip."""
        steps = max(1, -(-(needed - 1) // self.frame_step))
        return min(self.max_frames, steps * self.frame_step + 1)


@dataclass(frozen=True)
class ClipPlan:
    """What to generate for one clip, and which native frame each output frame shows."""

    policy: str  # the policy that was applied: "native" when the segment fits one clip
    chunk_frames: tuple[int, ...]  # native frames per generated clip; the first text-to-video, later
    # ones continue from the previous clip's last frame, which they repeat as their own first frame
    source_frames: tuple[int, ...]  # for each output frame, its index into the joined native frames
    speed: float = 1.0  # playback speed of the native video in the output: 1 real time, below 1 slow motion

    @property
    def native_frames(self) -> int:
        """Distinct native frames once the clips are joined (each continuation's first frame dropped)."""
        return self.chunk_frames[0] + sum(n - 1 for n in self.chunk_frames[1:])


def native_frames_needed(output_frames: int, output_fps: int, native_fps: int) -> int:
    """Native frames that cover `output_frames` at `output_fps` by sample and hold: the last output
    frame, at (n−1)/out_fps seconds, shows native frame ⌊(n−1)·native_fps / out_fps⌋."""
    return (output_frames - 1) * native_fps // output_fps + 1


def plan_clip(output_frames: int, output_fps: int, native: NativeFormat, policy: str) -> ClipPlan:
    """The native clips that make `output_frames` frames at `output_fps`, under `policy` when one is too short."""
    if output_frames < 1 or output_fps < 1:
        raise ValueError(f"a clip needs at least one frame at a positive rate (got {output_frames} at {output_fps})")
    if policy not in POLICIES:
        raise ValueError(f"unknown long-segment policy {policy!r}; choose one of: {', '.join(POLICIES)}")
    needed = native_frames_needed(output_frames, output_fps, native.fps)
    real_time = tuple(i * native.fps // output_fps for i in range(output_frames))
    if needed <= native.max_frames:
        return ClipPlan("native", (native.frames_covering(needed),), real_time)
    if policy == "retime":
        # The longest clip stretched evenly over the segment: output frame i shows native ⌊i·M/n⌋,
        # so every native frame is held n/M output frames and the last output frame shows the last.
        longest = native.max_frames
        speed = (longest / native.fps) / (output_frames / output_fps)
        return ClipPlan("retime", (longest,), tuple(i * longest // output_frames for i in range(output_frames)),
                        round(speed, 4))
    chunks = [native.max_frames]
    remaining = needed - native.max_frames
    while remaining > 0:
        # +1: a continuation repeats the previous clip's last frame as its first.
        chunk = native.frames_covering(remaining + 1)
        chunks.append(chunk)
        remaining -= chunk - 1
    return ClipPlan("continue", tuple(chunks), real_time)



def slow_motion_warning(plan: ClipPlan, native_fps: int) -> str | None:
    """A note for a retimed clip played slower than NATURAL_MIN_SPEED, else None."""
    if plan.speed >= NATURAL_MIN_SPEED:
        return None
    return (f"retimed to {plan.speed:.2f}x playback speed ({plan.speed * native_fps:.1f} new frames a second), "
            f"slower than {NATURAL_MIN_SPEED}x looks unnatural: use MVGEN_LONG_SEGMENT_POLICY=continue (Wan) or "
            f"shorter segments")
