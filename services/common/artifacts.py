"""The human-readable artifacts that stages exchange through the store, and their JSON form.

Each artifact is a plain dataclass with `to_dict`/`from_dict`; the JSON is what a person reads in
the run folder, so field names are spelled out and numbers are rounded where precision is noise.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from services.common.errors import InvalidInputError
from services.common.timing import clock, frame_count
from services.common.untrusted import quoted

if TYPE_CHECKING:
    from services.common.store import ArtifactStore

SEGMENT_END_REASONS = ("change", "beats", "max", "random", "end")


def dumps(obj: Any) -> bytes:
    data = obj.to_dict() if hasattr(obj, "to_dict") else obj
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()


class _Readable(Protocol):
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any: ...


ArtifactT = TypeVar("ArtifactT", bound=_Readable)


def read_artifact(store: ArtifactStore, key: str, kind: type[ArtifactT]) -> ArtifactT:
    """The artifact at `key` as a `kind` (Segmentation, Labels, Lyrics, Script, ...): the one place where
    an artifact's JSON in the store becomes its typed form. InvalidInputError, naming the key, when it is
    missing or is not a `kind` (a person may have edited it)."""
    try:
        text = store.get_text(key)
    except KeyError:
        raise InvalidInputError(f"no {kind.__name__.lower()} in the store at {quoted(key)}") from None
    try:
        return kind.from_dict(json.loads(text))
    except KeyError as exc:
        raise InvalidInputError(f"{key} cannot be read as a {kind.__name__.lower()}: it lacks the field {exc}") from exc
    except (TypeError, ValueError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise InvalidInputError(f"{key} cannot be read as a {kind.__name__.lower()} ({exc})") from exc


@dataclass(frozen=True)
class Segment:
    index: int
    start: float
    end: float
    end_reason: str  # one of SEGMENT_END_REASONS: why the cut at `end` was made

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class Segmentation:
    segmenter: str
    params: dict[str, Any]
    song_duration: float
    tempo_bpm: float | None
    beats: list[float]
    segments: list[Segment]

    def to_dict(self) -> dict[str, Any]:
        return {
            "segmenter": self.segmenter,
            "params": self.params,
            "song_duration": round(self.song_duration, 4),
            "tempo_bpm": None if self.tempo_bpm is None else round(self.tempo_bpm, 2),
            "segment_count": len(self.segments),
            "segments": [
                {"index": s.index, "start": round(s.start, 4), "end": round(s.end, 4),
                 "duration": round(s.duration, 4), "end_reason": s.end_reason}
                for s in self.segments
            ],
            "beats": [round(b, 4) for b in self.beats],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Segmentation:
        return cls(
            segmenter=d["segmenter"],
            params=d["params"],
            song_duration=d["song_duration"],
            tempo_bpm=d.get("tempo_bpm"),
            beats=list(d.get("beats", [])),
            segments=[Segment(s["index"], s["start"], s["end"], s["end_reason"]) for s in d["segments"]],
        )

    def frame_counts(self, fps: int) -> dict[int, int]:
        """Each segment's frames at `fps`, by index (timing.frame_count: they add up to the song's)."""
        return {s.index: frame_count(s.start, s.end, fps) for s in self.segments}

    def to_text(self) -> str:
        tempo = f"{self.tempo_bpm:.1f} BPM" if self.tempo_bpm else "unknown tempo"
        lines = [f"{len(self.segments)} segments over {clock(self.song_duration)} "
                 f"({self.segmenter} segmenter, {tempo})", ""]
        lines += [f"{s.index:4d}  {clock(s.start)} - {clock(s.end)}  {s.duration:5.2f} s  cut: {s.end_reason}"
                  for s in self.segments]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float  # normalised over the label's group: how sure the analyser was


@dataclass
class LabelGroup:
    labels: list[LabelScore]  # top-k, best first; empty when the analyser cannot know
    note: str = ""  # why a group is empty or how it was decided

    def top(self) -> str | None:
        return self.labels[0].label if self.labels else None


@dataclass
class SegmentLabels:
    index: int
    groups: dict[str, LabelGroup]
    measures: dict[str, float] = field(default_factory=dict)  # the raw numbers the labels came from


@dataclass
class Labels:
    analyzer: str
    track: dict[str, LabelGroup]
    segments: list[SegmentLabels]
    track_measures: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "analyzer": self.analyzer,
            "track": {name: _group_dict(g) for name, g in self.track.items()},
            "track_measures": _round_all(self.track_measures),
            "segments": [
                {"index": s.index, "groups": {n: _group_dict(g) for n, g in s.groups.items()},
                 "measures": _round_all(s.measures)}
                for s in self.segments
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Labels:
        return cls(
            analyzer=d["analyzer"],
            track={n: _group_from(g) for n, g in d["track"].items()},
            track_measures=d.get("track_measures", {}),
            segments=[
                SegmentLabels(s["index"], {n: _group_from(g) for n, g in s["groups"].items()}, s.get("measures", {}))
                for s in d["segments"]
            ],
        )


@dataclass(frozen=True)
class LyricWord:
    text: str
    start: float  # seconds from the song's start
    end: float
    probability: float = 1.0  # the transcriber's confidence; 1.0 for words a person gave


@dataclass
class SegmentLyrics:
    """The words sung in one segment, or none: `vocal` says whether a voice sings there at all."""

    index: int
    start: float
    end: float
    vocal: bool
    words: list[LyricWord] = field(default_factory=list)
    no_speech: float = 0.0  # the transcriber's probability that nobody sings here (0 for a person's lyrics)

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words).strip()


@dataclass
class Lyrics:
    """lyrics.json: what is sung, word by word with times, gathered per segment.

    `source` says where the words came from: a transcriber ("whisper-base") or the person's own
    lyrics ("file:lrc", "file:plain"). An instrumental song has no vocal segment and no words.
    """

    source: str
    language: str  # ISO 639-1 ("en"), or "" when unknown
    segments: list[SegmentLyrics]
    note: str = ""  # how the words were decided, for the person reading the run folder

    @property
    def vocal_segments(self) -> int:
        return sum(1 for s in self.segments if s.vocal)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "language": self.language,
            "note": self.note,
            "vocal_segments": self.vocal_segments,
            "segments": [
                {"index": s.index, "start": round(s.start, 3), "end": round(s.end, 3), "vocal": s.vocal,
                 "no_speech": round(s.no_speech, 3), "text": s.text,
                 "words": [{"text": w.text, "start": round(w.start, 3), "end": round(w.end, 3),
                            "probability": round(w.probability, 3)} for w in s.words]}
                for s in self.segments
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Lyrics:
        return cls(
            source=d["source"],
            language=d.get("language", ""),
            note=d.get("note", ""),
            segments=[SegmentLyrics(s["index"], s["start"], s["end"], bool(s["vocal"]),
                                    [LyricWord(w["text"], w["start"], w["end"], w.get("probability", 1.0))
                                     for w in s.get("words", [])], s.get("no_speech", 0.0))
                      for s in d["segments"]],
        )

    def to_text(self) -> str:
        lines = [f"Lyrics ({self.source}{', ' + self.language if self.language else ''}): "
                 f"{self.vocal_segments} of {len(self.segments)} segments sung", ""]
        if self.note:
            lines[1:1] = [self.note]
        for s in self.segments:
            words = s.text if s.vocal else "(instrumental)"
            lines.append(f"{s.index:4d}  {clock(s.start)} - {clock(s.end)}  {words}")
        return "\n".join(lines) + "\n"


@dataclass
class StyleBible:
    """What every clip of the video shares, so that scenes look like one film."""

    palette: list[str]  # hex colours, most important first
    look: str
    lighting: str
    camera: str
    atmosphere: str

    def prompt_text(self) -> str:
        return f"{self.look}; {self.lighting}; {self.camera}; {self.atmosphere}; palette {', '.join(self.palette)}"


@dataclass(frozen=True)
class Character:
    name: str
    description: str  # a fixed visual description repeated verbatim in every clip prompt


@dataclass(frozen=True)
class Scene:
    index: int
    text: str  # exactly one sentence


@dataclass
class Script:
    writer: str
    title: str
    style: StyleBible
    characters: list[Character]
    scenes: list[Scene]

    def to_dict(self) -> dict[str, Any]:
        return {
            "writer": self.writer,
            "title": self.title,
            "style": asdict(self.style),
            "characters": [asdict(c) for c in self.characters],
            "scenes": [asdict(s) for s in self.scenes],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Script:
        return cls(
            writer=d["writer"],
            title=d.get("title", ""),
            style=StyleBible(**d["style"]),
            characters=[Character(**c) for c in d.get("characters", [])],
            scenes=[Scene(**s) for s in d["scenes"]],
        )

    def to_text(self) -> str:
        lines = [self.title, "", f"Style: {self.style.prompt_text()}"]
        for c in self.characters:
            lines.append(f"Character {c.name}: {c.description}")
        lines.append("")
        lines += [f"{s.index:4d}  {s.text}" for s in self.scenes]
        return "\n".join(lines) + "\n"


def _group_dict(g: LabelGroup) -> dict[str, Any]:
    out: dict[str, Any] = {"labels": [{"label": x.label, "score": round(x.score, 4)} for x in g.labels]}
    if g.note:
        out["note"] = g.note
    return out


def _group_from(d: dict[str, Any]) -> LabelGroup:
    return LabelGroup([LabelScore(x["label"], x["score"]) for x in d["labels"]], d.get("note", ""))


def _round_all(measures: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in measures.items()}
