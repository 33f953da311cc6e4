"""The storyboard page of a run: storyboard.html, one self-contained file a person opens from disk or
from a presigned URL.

On top the title, the style bible and the characters; the headline figures of the evaluation; the
song's waveform with a line at every cut (clickable to its segment) and the sections as labelled
bands; then one card per segment (time, labels, lyrics, scene sentence, a strip of frames from its
clip, its figures and flags); the final video at the end.

The page fetches nothing: CSS, SVG and a little JS are inline, the frames and the video are data:
URIs, and its Content-Security-Policy forbids any other source (a script only when its hash is that
of ours). Every text on it came from an LLM or a person (scene sentences, lyrics, titles, labels,
flag details) and goes through Jinja's autoescape; colours go into a style only when they are hex
colours. Without JS it shows everything; the script only seeks the video to a segment and follows
the playing segment.

Inputs are typed (`StoryboardPage`): this module never reads the store. The stage gathers the
artifacts and calls `render_storyboard`; `sections_from_plan`, `waveform_peaks` and
`frame_strip_jpegs` turn plan.json, the song's samples and a clip's frames into what the page takes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup
from PIL import Image

from services.common.artifacts import Labels, Lyrics, Script, Segment, Segmentation

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "storyboard.html.j2"
SCRIPT = "storyboard.js"

WAVEFORM_COLUMNS = 1200  # columns of min/max the waveform is drawn from: one per pixel of a wide screen
FRAME_WIDTH = 160  # pixels of each frame in a segment's strip
JPEG_QUALITY = 70  # a 160x90 frame is 3-5 kB: 100 segments of 4 frames stay under 2 MB
# A video larger than this is better linked than embedded (base64 adds a third, and a browser holds
# the whole page in memory); the stage decides, the page shows what it is given.
VIDEO_EMBED_LIMIT = 64 * 2**20
# How far a cut's time in edit.json may lie from a segment boundary and still be that boundary's.
CUT_TOLERANCE_S = 0.25

_HEX_COLOUR = re.compile(r"#(?:[0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})")
_CLASS_SAFE = re.compile(r"[^a-z0-9_-]+")
HARD_CUTS = ("cut", "hard cut", "none")  # edit.json's names for no transition (a plain cut)
_KNOWN_FLAGS = ("duplicate", "near_duplicate", "rule_break", "black", "frozen", "flat", "duration", "audio")

# The waveform's drawing, in SVG user units (the SVG scales to the page's width).
_SVG_WIDTH = 1200.0
_SECTIONS_H = 22.0  # band of section names on top
_WAVE_TOP = 26.0
_WAVE_H = 110.0
_SEGMENTS_TOP = _WAVE_TOP + _WAVE_H + 4.0  # band of segment numbers below
_SEGMENTS_H = 18.0
_SVG_HEIGHT = _SEGMENTS_TOP + _SEGMENTS_H + 2.0


@dataclass(frozen=True)
class Section:
    """A part of the song drawn as a labelled band over the waveform (plan.json's sections)."""

    start: float
    end: float
    name: str  # its role in the song (intro, groove, ...) or, when unknown, where its story happens
    detail: str = ""  # the plan's place and action, shown on hover


@dataclass
class StoryboardPage:
    """Everything the page shows; the stage reads it from the store (this module never does)."""

    script: Script
    segmentation: Segmentation
    labels: Labels | None = None
    lyrics: Lyrics | None = None
    sections: list[Section] = field(default_factory=list)
    # edit.json: {"cuts": [{"index", "time", "transition", "reason"}, ...]}; None when the run has none.
    edit: dict[str, Any] | None = None
    waveform: list[tuple[float, float]] = field(default_factory=list)  # (min, max) per column, -1..1
    frame_strips: dict[int, list[bytes]] = field(default_factory=dict)  # JPEGs by segment index
    evaluation: dict[str, Any] = field(default_factory=dict)  # evaluation.json; {} when none was made
    video: bytes | None = None  # final.mp4, embedded; None: linked by `video_name` (beside the page)
    video_name: str = "final.mp4"
    generator: str = ""  # the clips' generator; '' = the evaluation's

    @property
    def title(self) -> str:
        return self.script.title.strip() or "Untitled music video"

    @property
    def generator_name(self) -> str:
        return self.generator or str(self.evaluation.get("generator", "") or "")


def render_storyboard(page: StoryboardPage) -> str:
    """The page as one self-contained HTML document."""
    script_js = (TEMPLATES / SCRIPT).read_text()
    digest = base64.b64encode(hashlib.sha256(script_js.encode()).digest()).decode()
    csp = ("default-src 'none'; img-src data:; media-src data:; style-src 'unsafe-inline'; "
           f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'")
    segmentation = page.segmentation
    duration = segmentation.song_duration or (segmentation.segments[-1].end if segmentation.segments else 0.0)
    transitions, edges = _transitions(page.edit, segmentation.segments, duration)
    evaluation = page.evaluation or {}
    preview = bool(evaluation.get("preview", page.generator_name == "animatic"))
    preview_note = str(evaluation.get("preview_note", "") or "")
    figures = [_figure(f, preview, preview_note) for f in evaluation.get("figures", []) or [] if isinstance(f, dict)]
    # A segment's own figures are free-form names: one shares a word with a figure that means nothing here
    # ("motion", "pixel_motion" and picture.motion; "look" and picture.look_consistency) is greyed like it.
    not_applying = {word for f in figures if not f["applies"] for word in _words(f["key"].rsplit(".", 1)[-1])}
    known = _Lookups.of(page)
    cards = [_card(page, known, s, i, transitions, not_applying) for i, s in enumerate(segmentation.segments)]
    return _environment().get_template(TEMPLATE).render(
        csp=csp,
        script_js=Markup(script_js),  # our own file, whose hash the policy names: not escaped
        title=page.title,
        generator=page.generator_name,
        preview=preview,
        preview_note=preview_note,
        script=page.script,
        palette=[_swatch(c) for c in page.script.style.palette],
        track_labels=_groups(page.labels.track) if page.labels else [],
        facts=_facts(page, duration),
        figures=_grouped(figures),
        has_evaluation=bool(evaluation),
        flag_kinds=_flag_summary(evaluation, len(segmentation.segments)),
        waveform=_waveform_svg(page, duration, transitions),
        edges=edges,
        cards=cards,
        video_uri=_data_uri("video/mp4", page.video) if page.video is not None else None,
        video_name=_file_name(page.video_name),
    )


def sections_from_plan(plan: Any, segmentation: Segmentation) -> list[Section]:
    """The sections of plan.json (its dict), timed by the segments they span; [] when there is no
    plan or it cannot be read (a person may have edited it)."""
    if not isinstance(plan, dict):
        return []
    by_index = {s.index: s for s in segmentation.segments}
    sections: list[Section] = []
    try:
        for s in plan.get("sections", []):
            first, last = (int(i) for i in s["segments"])
            start = by_index[first].start if first in by_index else float(s["start"])
            end = by_index[last].end if last in by_index else float(s["end"])
            role, place, action = (str(s.get(k, "") or "").strip() for k in ("role", "place", "action"))
            name = role or place or f"section {int(s.get('index', len(sections)))}"
            detail = ": ".join(t for t in (place, action) if t)
            if end > start:
                sections.append(Section(start, end, name, detail))
    except (KeyError, TypeError, ValueError, AttributeError):
        return []
    return sections


def waveform_peaks(samples: np.ndarray, columns: int = WAVEFORM_COLUMNS) -> list[tuple[float, float]]:
    """(min, max) of the samples in each of `columns` equal spans, clipped to -1..1. `samples`: mono,
    or (frames, channels), which are mixed down. A column narrower than a sample repeats its sample;
    no samples at all give silence."""
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)
    data = data.reshape(-1)
    columns = max(1, int(columns))
    if data.size == 0:
        return [(0.0, 0.0)] * columns
    data = np.nan_to_num(np.clip(data, -1.0, 1.0))
    starts = np.minimum((np.arange(columns) * data.size) // columns, data.size - 1)
    lows = np.minimum.reduceat(data, starts)
    highs = np.maximum.reduceat(data, starts)
    return [(round(float(lo), 4), round(float(hi), 4)) for lo, hi in zip(lows, highs)]


def frame_strip_jpegs(frames: Sequence[np.ndarray], width: int = FRAME_WIDTH) -> list[bytes]:
    """Each frame (H x W x 3 uint8 RGB, or H x W grey) as a small JPEG `width` pixels wide."""
    jpegs = []
    for frame in frames:
        array = np.asarray(frame)
        if array.dtype != np.uint8:
            array = np.clip(array, 0, 255).astype(np.uint8)
        image = Image.fromarray(array).convert("RGB")
        height = max(1, round(image.height * width / image.width))
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
        jpegs.append(out.getvalue())
    return jpegs


# ---- the view: what the template shows, computed here so that it stays a plain template


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _file_name(name: str) -> str:
    """The video's file name as a link beside the page: a plain relative name, never a scheme (javascript:)."""
    base = PurePosixPath(str(name).replace("\\", "/")).name.replace(":", "_")
    return base or "final.mp4"


def _time(seconds: float) -> str:
    """m:ss.s"""
    minutes, rest = divmod(max(0.0, round(seconds, 1)), 60)
    return f"{int(minutes)}:{rest:04.1f}"


def _number(value: Any) -> str:
    """A figure as a person reads it: 12, 12.3, 0.0812, yes."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        if abs(value) >= 100:
            return f"{value:.0f}"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    if value is None:
        return "–"
    return str(value)


def _css_class(kind: str) -> str:
    return _CLASS_SAFE.sub("-", kind.lower())[:40] or "other"


def _swatch(colour: str) -> dict[str, Any]:
    text = str(colour).strip()
    return {"text": text, "css": text if _HEX_COLOUR.fullmatch(text) else None}


def _groups(groups: dict[str, Any]) -> list[dict[str, Any]]:
    shown = []
    for name, group in groups.items():
        labels = [x.label for x in group.labels]
        shown.append({"name": name.replace("_", " "), "labels": labels, "note": group.note})
    return shown


def _facts(page: StoryboardPage, duration: float) -> list[tuple[str, str]]:
    seg = page.segmentation
    facts = [("length", _time(duration)), ("segments", str(len(seg.segments)))]
    if seg.tempo_bpm:
        facts.append(("tempo", f"{seg.tempo_bpm:.0f} BPM"))
    facts.append(("segmenter", seg.segmenter))
    if page.labels:
        facts.append(("analysis", page.labels.analyzer))
    if page.lyrics:
        facts.append(("lyrics", f"{page.lyrics.source}, {page.lyrics.vocal_segments} of "
                                f"{len(page.lyrics.segments)} segments sung"))
    facts.append(("script", page.script.writer))
    if page.generator_name:
        facts.append(("clips", page.generator_name))
    return facts


def _figure(f: dict[str, Any], preview: bool, preview_note: str) -> dict[str, Any]:
    applies = f.get("applies", True) is not False
    display = f.get("display")
    return {
        "key": str(f.get("key", "") or ""),
        "group": str(f.get("group", "") or ""),
        "label": str(f.get("label", "") or f.get("key", "") or ""),
        "display": str(display) if display not in (None, "") else _number(f.get("value")),
        "meaning": str(f.get("meaning", "") or ""),
        "applies": applies,
        # A preview's note is on top of the page; each figure it covers says so in a word.
        "note": "" if applies else ("means nothing for a preview" if preview else preview_note or
                                    "means nothing for this run"),
    }


def _grouped(figures: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for f in figures:
        groups.setdefault(f["group"], []).append(f)
    return list(groups.items())


def _flag(f: dict[str, Any]) -> dict[str, str]:
    kind = str(f.get("kind", "") or "flag")
    css = _css_class(kind)
    return {"kind": kind.replace("_", " "), "detail": str(f.get("detail", "") or ""),
            "css": css if css in _KNOWN_FLAGS else "other"}


def _flag_summary(evaluation: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """evaluation.json's flags by kind: how many, the segments they name (their cards say why), and the
    details of those that name none."""
    kinds: dict[str, dict[str, Any]] = {}
    for f in evaluation.get("flags", []) or []:
        if not isinstance(f, dict):
            continue
        shown = _flag(f)
        kind = kinds.setdefault(shown["kind"], {**shown, "count": 0, "segments": [], "details": []})
        kind["count"] += 1
        segment = f.get("segment")
        if isinstance(segment, int) and not isinstance(segment, bool) and 0 <= segment < count:
            if segment not in kind["segments"]:
                kind["segments"].append(segment)
        elif shown["detail"]:
            kind["details"].append(shown["detail"])
    for kind in kinds.values():
        kind["segments"].sort()
    return list(kinds.values())


def _words(name: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9]+", name.lower()) if w}


def _segment_evaluations(evaluation: dict[str, Any]) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for s in evaluation.get("segments", []) or []:
        if isinstance(s, dict) and isinstance(s.get("index"), int):
            found[s["index"]] = s
    return found


def _transitions(edit: dict[str, Any] | None, segments: list[Segment],
                 duration: float) -> tuple[dict[int, dict[str, Any]], dict[str, dict[str, Any] | None]]:
    """edit.json's transitions (services/assembly/edit.py): at the cut into the segment at position i
    (1..n-1), and at the video's start and end ("start", "end": a fade in or out, or None). A cut is
    placed by its time, at the nearest boundary; without one, by its index (the cut after segment
    `index`, -1 the start). "hard": no transition, a plain cut (its name is "cut", or it spans 0 frames)."""
    at_cut: dict[int, dict[str, Any]] = {}
    edges: dict[str, dict[str, Any] | None] = {"start": None, "end": None}
    cuts = edit.get("cuts") if isinstance(edit, dict) else None
    if not isinstance(cuts, list) or not segments:
        return at_cut, edges
    boundaries = [s.start for s in segments] + [duration]
    for cut in cuts:
        if not isinstance(cut, dict) or not cut.get("transition"):
            continue
        name = str(cut["transition"]).replace("_", " ")
        shown = {"transition": name, "reason": str(cut.get("reason", "") or ""),
                 "hard": name.lower() in HARD_CUTS or cut.get("frames") == 0}
        time, index = cut.get("time"), cut.get("index")
        if isinstance(time, int | float) and not isinstance(time, bool) and math.isfinite(time):
            at = min(range(len(boundaries)), key=lambda k: abs(boundaries[k] - float(time)))
            if abs(boundaries[at] - float(time)) > CUT_TOLERANCE_S:
                continue
        elif isinstance(index, int) and not isinstance(index, bool):
            at = index + 1
        else:
            continue
        if at <= 0:
            edges["start"] = None if shown["hard"] else shown
        elif at >= len(segments):
            edges["end"] = None if shown["hard"] else shown
        else:
            at_cut[at] = shown
    return at_cut, edges


@dataclass
class _Lookups:
    """Each artifact's per-segment parts by segment index, gathered once for all the cards."""

    scenes: dict[int, str]
    labels: dict[int, Any]
    lyrics: dict[int, Any]
    evaluated: dict[int, dict[str, Any]]
    flags: dict[int, list[dict[str, Any]]]  # evaluation.json's top-level flags that name a segment

    @classmethod
    def of(cls, page: StoryboardPage) -> _Lookups:
        evaluation = page.evaluation or {}
        flags: dict[int, list[dict[str, Any]]] = {}
        for f in evaluation.get("flags", []) or []:
            if isinstance(f, dict) and isinstance(f.get("segment"), int):
                flags.setdefault(f["segment"], []).append(f)
        return cls(
            scenes={s.index: s.text for s in page.script.scenes},
            labels={s.index: s for s in page.labels.segments} if page.labels else {},
            lyrics={s.index: s for s in page.lyrics.segments} if page.lyrics else {},
            evaluated=_segment_evaluations(evaluation),
            flags=flags,
        )


def _card(page: StoryboardPage, known: _Lookups, segment: Segment, position: int,
          transitions: dict[int, dict[str, Any]], not_applying: set[str]) -> dict[str, Any]:
    index = segment.index
    transition = transitions.get(position)
    evaluated = known.evaluated.get(index, {})
    figures = evaluated.get("figures") if isinstance(evaluated.get("figures"), dict) else {}
    flags: list[dict[str, str]] = []
    for f in [*(evaluated.get("flags", []) or []), *known.flags.get(index, [])]:
        shown = _flag(f) if isinstance(f, dict) else None
        if shown and not any(shown["kind"] == g["kind"] and shown["detail"] == g["detail"] for g in flags):
            flags.append(shown)
    sung = known.lyrics.get(index)
    section = next((s.name for s in page.sections if s.start - 1e-6 <= segment.start < s.end - 1e-6), "")
    return {
        "index": index,
        "start": segment.start,
        "time": f"{_time(segment.start)}–{_time(segment.end)}",
        "duration": f"{segment.duration:.1f} s",
        "end_reason": segment.end_reason,
        "section": section,
        "transition": transition if transition and not transition["hard"] else None,
        "scene": known.scenes.get(index),
        "labels": _groups(known.labels[index].groups) if index in known.labels else [],
        "lyrics": None if sung is None else (sung.text if sung.vocal and sung.text else ""),
        "frames": [_data_uri("image/jpeg", jpeg) for jpeg in page.frame_strips.get(index, [])],
        "figures": [{"name": str(name).replace("_", " "), "value": _number(value),
                     "applies": not _words(str(name)) & not_applying}
                    for name, value in (figures or {}).items()],
        "flags": flags,
    }


def _waveform_svg(page: StoryboardPage, duration: float,
                  transitions: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The waveform's shapes in SVG user units: its outline, the section bands, the segment bands and
    the cut lines (one per boundary between two segments)."""
    span = duration if duration > 0 else 1.0

    def x(t: float) -> float:
        return round(min(max(t / span, 0.0), 1.0) * _SVG_WIDTH, 2)

    peaks = page.waveform
    path = ""
    if peaks:
        peak = max(max(abs(lo), abs(hi)) for lo, hi in peaks) or 1.0
        mid = _WAVE_TOP + _WAVE_H / 2
        scale = _WAVE_H / 2 / peak
        step = _SVG_WIDTH / len(peaks)
        top = [f"{i * step:.1f},{mid - hi * scale:.1f}" for i, (_, hi) in enumerate(peaks)]
        bottom = [f"{i * step:.1f},{mid - lo * scale:.1f}" for i, (lo, _) in reversed(list(enumerate(peaks)))]
        path = "M" + " L".join(top + bottom) + " Z"
    sections = [{"x": x(s.start), "w": max(0.0, x(s.end) - x(s.start)), "name": s.name, "detail": s.detail,
                 "time": f"{_time(s.start)}–{_time(s.end)}", "odd": i % 2 == 1}
                for i, s in enumerate(page.sections)]
    segments = page.segmentation.segments
    bands = [{"index": s.index, "x": x(s.start), "w": max(0.0, x(s.end) - x(s.start)), "odd": i % 2 == 1,
              "time": f"{_time(s.start)}–{_time(s.end)}"} for i, s in enumerate(segments)]
    cuts = []
    for position in range(1, len(segments)):
        after = segments[position]
        transition = transitions.get(position)
        title = f"cut at {_time(after.start)} into segment {after.index} ({segments[position - 1].end_reason})"
        if transition:
            title += f": {transition['transition']}"
        cuts.append({"x": x(after.start), "index": after.index, "title": title,
                     "transition": transition["transition"] if transition and not transition["hard"] else ""})
    return {"width": _SVG_WIDTH, "height": _SVG_HEIGHT, "path": path, "sections": sections, "bands": bands,
            "cuts": cuts, "sections_h": _SECTIONS_H, "wave_top": _WAVE_TOP, "wave_h": _WAVE_H,
            "segments_top": _SEGMENTS_TOP, "segments_h": _SEGMENTS_H, "duration": span}
