"""The animatic backend: each scene as a storyboard clip, rendered on the CPU from the script and the audio.

A preview of cuts and script before GPU time is spent, labelled as such on every frame. The
background is drifting diagonal bands of the script's palette; a central disc pulses with the
segment's loudness, satellites orbit faster when it is loud, and onsets flash the frame. The
scene sentence is the caption. Everything constant over a clip (band field, caption, label) is
prepared once, so a frame costs a table lookup, a few small discs and two small blends.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import librosa
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.signal import lfilter

from services.common import audio, encoding
from services.common.artifacts import Script
from services.common.errors import JobCancelledError, StageFailedError
from services.common.stage_api import GenerateClipRequest
from services.common.timing import clock, frame_at
from services.video.generator import CancelledFn, ClipGenerator, ProgressFn

GENERATOR_NAME = "animatic"
FEATURE_SAMPLE_RATE = 22050
FFT_SIZE = 2048
HOP = 512  # 23 ms: finer than a frame at any common rate
SILENCE_DBFS = -50.0  # RMS at or below this reads as silence (level 0) ...
LOUD_DBFS = -10.0  # ... and at or above this as full level (1)
MEL_FLOOR = 1e-4  # power floor before the log: hiss below it cannot make onsets
ONSET_FULL_DB = 12.0  # mean rise over mel bands (dB) that makes a full flash
FLASH_DECAY_SECONDS = 0.15
LEVEL_SMOOTH_SECONDS = 0.08
FLASH_STRENGTH = 0.45  # how far a full flash moves the background toward white
DRIFT_QUIET = 0.04  # band drift in frame heights per second, silent ...
DRIFT_LOUD = 0.5  # ... and added at full level
SPIN_QUIET = 0.15  # satellite orbit in radians per second, silent ...
SPIN_LOUD = 2.5  # ... and added at full level
SATELLITES = 6
BAND_BLEND = 0.3  # fraction of each colour band spent blending into the next
CAPTION_MAX_LINES = 3
GOLDEN_RATIO = 0.6180339887
FALLBACK_PALETTE = ["#22223b", "#4a4e69", "#9a8c98", "#c9ada7", "#f2e9e4"]


@dataclass(frozen=True)
class AudioMotion:
    """Per-frame controls derived from the segment's audio."""

    level: np.ndarray  # 0..1, smoothed loudness on an absolute dBFS scale: silence stays 0
    flash: np.ndarray  # 0..1, onset strength with a short decay
    drift: np.ndarray  # band drift in pixels: accumulated speed, faster when loud
    spin: np.ndarray  # satellite angle in radians, accumulated the same way


class AnimaticGenerator(ClipGenerator):
    name = GENERATOR_NAME

    def _load(self) -> None:
        missing = encoding.missing_encoders(encoding.VIDEO_CODEC)
        if missing:
            raise StageFailedError(f"this ffmpeg lacks the {', '.join(missing)} encoder the animatic needs")
        # librosa prepares filter banks and compiled kernels on first use (~1 s): pay that here, not per clip.
        audio_motion(np.zeros(2 * FFT_SIZE, np.float32), FEATURE_SAMPLE_RATE, np.zeros(1), 24, 64)

    def generate(self, req: GenerateClipRequest, song_path: Path, script: Script, out_path: Path,
                 on_progress: ProgressFn, is_cancelled: CancelledFn) -> dict[str, Any]:
        began = time.monotonic()
        scene = next(s for s in script.scenes if s.index == req.index)
        palette = parse_palette(script.style.palette) or parse_palette(FALLBACK_PALETTE)
        samples = audio.decode(song_path, FEATURE_SAMPLE_RATE, start=req.start, duration=req.end - req.start)
        # Clip frame i is shown at song frame frame_at(start) + i: sample the audio there.
        first_frame_time = frame_at(req.start, req.fps) / req.fps - req.start
        frame_times = first_frame_time + np.arange(req.frame_count) / req.fps
        motion = audio_motion(samples, FEATURE_SAMPLE_RATE, frame_times, req.fps, req.height)
        painter = FramePainter(req.width, req.height, rotate(palette, req.index),
                               caption=scene.text, label=preview_label(req), seed=req.seed + req.index)

        reported = -1
        with encoding.RawVideoEncoder(out_path, req.width, req.height, req.fps) as encoder:
            for i in range(req.frame_count):
                if is_cancelled():
                    raise JobCancelledError(f"clip {req.index} cancelled after {i} of {req.frame_count} frames")
                encoder.write(painter.paint(motion.level[i], motion.flash[i], motion.drift[i], motion.spin[i]))
                percent = 99 * (i + 1) // req.frame_count  # 100% is kept for the finished file
                if percent > reported:
                    reported = percent
                    on_progress(percent / 100)
        on_progress(1.0)

        seconds = time.monotonic() - began
        return {
            "generator": GENERATOR_NAME,
            "kind": "animatic preview (storyboard rendered on the CPU, not AI video)",
            "palette": ["#{:02x}{:02x}{:02x}".format(*c) for c in palette],
            "seconds": round(seconds, 3),
            "frames_per_second": round(req.frame_count / seconds, 1) if seconds > 0 else None,
        }


def parse_palette(colours: list[str]) -> list[tuple[int, int, int]]:
    """The palette's valid '#rrggbb' / '#rgb' entries as RGB; others (a model's free text) are skipped."""
    parsed = []
    for colour in colours:
        digits = colour.strip().lstrip("#")
        if len(digits) == 3:
            digits = "".join(d * 2 for d in digits)
        if len(digits) == 6 and all(d in "0123456789abcdefABCDEF" for d in digits):
            parsed.append((int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)))
    return parsed


def rotate(palette: list[tuple[int, int, int]], index: int) -> list[tuple[int, int, int]]:
    """Each scene leads with another palette colour, so cuts are visible and the film stays in palette."""
    shift = index % len(palette)
    return palette[shift:] + palette[:shift]


def preview_label(req: GenerateClipRequest) -> str:
    return f"ANIMATIC PREVIEW · segment {req.index} · {clock(req.start, 1)}–{clock(req.end, 1)}"


def audio_motion(samples: np.ndarray, sample_rate: int, frame_times: np.ndarray, fps: int,
                 height: int) -> AudioMotion:
    """Loudness and onsets of `samples`, sampled at `frame_times` (seconds from the first sample)."""
    if samples.size < FFT_SIZE:
        samples = np.pad(samples, (0, FFT_SIZE - samples.size))
    rms = librosa.feature.rms(y=samples, frame_length=FFT_SIZE, hop_length=HOP)[0]
    level_db = 20 * np.log10(np.maximum(rms, 1e-10))
    level = np.clip((level_db - SILENCE_DBFS) / (LOUD_DBFS - SILENCE_DBFS), 0.0, 1.0)
    mel = librosa.feature.melspectrogram(y=samples, sr=sample_rate, n_fft=FFT_SIZE, hop_length=HOP, n_mels=64)
    # Absolute reference (not the segment's maximum): a quiet segment must not flash like a loud one.
    log_mel = librosa.power_to_db(mel, ref=1.0, amin=MEL_FLOOR, top_db=None)
    onset = librosa.onset.onset_strength(S=log_mel, sr=sample_rate, hop_length=HOP)
    onset = np.clip(onset / ONSET_FULL_DB, 0.0, 1.0) * level  # gate: onsets in near-silence do not count
    feature_times = np.arange(level.size) * HOP / sample_rate

    frame_level = np.interp(frame_times, feature_times, level)
    smooth = math.exp(-1.0 / (LEVEL_SMOOTH_SECONDS * fps))
    frame_level = lfilter([1 - smooth], [1, -smooth], frame_level, zi=[smooth * frame_level[0]])[0]
    # The strongest onset within each frame's span, so that short onsets between frames still count.
    first = np.clip(np.searchsorted(feature_times, frame_times - 0.5 / fps), 0, onset.size - 1)
    peaks = np.maximum.reduceat(onset, first)
    flash = np.empty_like(peaks)
    decay = math.exp(-1.0 / (FLASH_DECAY_SECONDS * fps))
    previous = 0.0
    for i, peak in enumerate(peaks):
        previous = max(peak, previous * decay)
        flash[i] = previous
    return AudioMotion(
        level=frame_level,
        flash=flash,
        drift=np.cumsum(height * (DRIFT_QUIET + DRIFT_LOUD * frame_level) / fps),
        spin=np.cumsum((SPIN_QUIET + SPIN_LOUD * frame_level) / fps),
    )


class FramePainter:
    """Paints the frames of one clip; construction prepares everything that does not move."""

    def __init__(self, width: int, height: int, palette: list[tuple[int, int, int]], caption: str, label: str,
                 seed: int):
        self.width, self.height = width, height
        colours = np.array(palette if len(palette) > 1 else [palette[0], _shade(palette[0], 0.6)], np.float32)
        self.base_lut = _band_lut(colours)
        # Band field: a diagonal ramp periodic in y with period `period`, so drifting is a row offset.
        self.period = height + width // 2
        rows = np.arange(height + self.period)[:, None]
        cols = np.arange(width)[None, :]
        self.field = (((rows + cols // 2) % self.period) * 256 // self.period).astype(np.uint8)
        luminance = colours @ np.array([0.2126, 0.7152, 0.0722], np.float32)
        self.disc_colour = colours[int(np.argmax(luminance))] * 0.5 + 127.5  # lightest colour, half toward white
        self.satellite_colours = [colours[k % len(colours)] for k in range(SATELLITES)]
        self.shadow = np.zeros(3, np.float32)
        self.angle0 = 2 * math.pi * ((seed * GOLDEN_RATIO) % 1.0)  # where the orbit starts: varies with the seed
        self.overlays = _overlays(width, height, caption, label)

    def paint(self, level: float, flash: float, drift: float, spin: float) -> np.ndarray:
        h, w = self.height, self.width
        lut = (self.base_lut + (255.0 - self.base_lut) * (FLASH_STRENGTH * flash) + 0.5).astype(np.uint8)
        offset = int(drift) % self.period
        frame = np.take(lut, self.field[offset:offset + h], axis=0)
        unit = min(w, h)
        cx, cy = w / 2, h * 0.42
        _disc(frame, cx, cy, unit * (0.10 + 0.10 * level + 0.05 * flash), self.disc_colour, 0.9)
        orbit = unit * (0.30 + 0.05 * flash)
        radius = unit * (0.025 + 0.03 * level)
        for k, colour in enumerate(self.satellite_colours):
            angle = self.angle0 + spin + 2 * math.pi * k / SATELLITES
            sx, sy = cx + orbit * math.cos(angle), cy + orbit * math.sin(angle)
            _disc(frame, sx + 1.5, sy + 1.5, radius + 1.0, self.shadow, 0.35)  # lifts it off a same-colour band
            _disc(frame, sx, sy, radius, colour, 1.0)
        for y0, y1, x0, x1, premultiplied, transparency in self.overlays:
            region = frame[y0:y1, x0:x1]
            region[...] = (region * transparency + premultiplied) // 255
        return frame


def _band_lut(colours: np.ndarray) -> np.ndarray:
    """256 entries along the band ramp: each colour flat, then a smooth blend into the next."""
    n = len(colours)
    position = np.arange(256, dtype=np.float32) / 256 * n
    band = position.astype(int)
    within = position - band
    t = np.clip((within - (1 - BAND_BLEND)) / BAND_BLEND, 0.0, 1.0)
    t = t * t * (3 - 2 * t)
    return colours[band] * (1 - t[:, None]) + colours[(band + 1) % n] * t[:, None]


def _disc(frame: np.ndarray, cx: float, cy: float, radius: float, colour: np.ndarray, opacity: float) -> None:
    """Blend an antialiased disc into `frame` in place, touching only its bounding box."""
    h, w = frame.shape[:2]
    x0, x1 = max(int(cx - radius - 1), 0), min(int(cx + radius + 2), w)
    y0, y1 = max(int(cy - radius - 1), 0), min(int(cy + radius + 2), h)
    if x0 >= x1 or y0 >= y1:
        return
    dx = np.arange(x0, x1, dtype=np.float32) + 0.5 - cx
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    cover = np.clip(radius + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0) * opacity
    region = frame[y0:y1, x0:x1].astype(np.float32)
    region += (colour - region) * cover[..., None]
    frame[y0:y1, x0:x1] = (region + 0.5).astype(np.uint8)


def _overlays(width: int, height: int, caption: str,
              label: str) -> list[tuple[int, int, int, int, np.ndarray, np.ndarray]]:
    """Caption band (bottom) and preview label (top left) as premultiplied RGB + transparency per box."""
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    margin = max(2, height // 24)
    boxes = []

    caption_font = _font(max(8, round(height / 17)))
    lines = _wrap(caption, caption_font, width - 2 * margin)
    line_height = round(caption_font.size * 1.25)
    band_top = max(0, height - len(lines) * line_height - 2 * margin)
    draw.rectangle((0, band_top, width, height), fill=(0, 0, 0, 150))
    for n, line in enumerate(lines):
        draw.text((width / 2, band_top + margin + n * line_height), line, font=caption_font, fill=(255, 255, 255, 255),
                  anchor="ma")
    boxes.append((band_top, height, 0, width))

    label_font = _font(max(7, round(height / 28)))
    pad = max(2, int(label_font.size) // 3)
    left, top, right, bottom = draw.textbbox((margin + pad, margin + pad), label, font=label_font)
    box = (margin, margin, min(width, round(right) + pad), min(band_top, round(bottom) + pad))
    if box[2] > box[0] and box[3] > box[1]:
        draw.rectangle(box, fill=(0, 0, 0, 150))
        draw.text((margin + pad, margin + pad), label, font=label_font, fill=(255, 236, 160, 255))
        boxes.append((box[1], box[3], box[0], box[2]))

    pixels = np.asarray(layer).astype(np.uint16)
    overlays = []
    for y0, y1, x0, x1 in boxes:
        rgba = pixels[y0:y1, x0:x1]
        alpha = rgba[..., 3:4]
        overlays.append((y0, y1, x0, x1, rgba[..., :3] * alpha, 255 - alpha))
    return overlays


def _wrap(text: str, font: ImageFont.FreeTypeFont, max_width: int) -> list[str]:
    """Greedy word wrap by rendered width, at most CAPTION_MAX_LINES lines (the last ends in '…' if cut)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= max_width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > CAPTION_MAX_LINES:
        last = " ".join(lines[CAPTION_MAX_LINES - 1:])
        while last and font.getlength(last + "…") > max_width:
            last = last[:-1]
        lines = lines[:CAPTION_MAX_LINES - 1] + [last.rstrip() + "…"]
    return lines or [""]


def _font(size: int) -> ImageFont.FreeTypeFont:
    # A new font object per clip: clips render in parallel threads, and FreeType faces are not thread-safe.
    path = _font_path()
    font = ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)
    assert isinstance(font, ImageFont.FreeTypeFont), "Pillow without FreeType: no font can be sized"
    return font


@lru_cache(maxsize=1)
def _font_path() -> str | None:
    """DejaVu Sans if installed (Pillow searches the system font folders), else None for Pillow's own font."""
    try:
        return str(ImageFont.truetype("DejaVuSans.ttf", 10).path)
    except OSError:
        return None


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return (round(colour[0] * factor), round(colour[1] * factor), round(colour[2] * factor))
