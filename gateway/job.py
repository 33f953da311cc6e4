"""What a job is: its options, where its artifacts live, and its manifest.

The manifest (manifest.json in the job's folder/prefix) is the job's memory: stage states,
fingerprints of what produced each output, per-clip status and timings. It lives in the store
beside the artifacts, so a restarted process resumes a job by reading it back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from services.common import encoding
from services.common.errors import InvalidInputError
from services.common.stage_api import LISTENING_STORYTELLERS, ScriptInputs, SegmenterParams
from services.common.store import ArtifactStore

STAGES = ("segmentation", "analysis", "scripting", "video", "assembly")
# A job's state when a shutdown stopped it: not terminal, so whoever runs jobs resumes it.
INTERRUPTED = "interrupted"
MAX_SCRIPT_INPUT_CHARS = 4000  # per user text; the writer trims further, this refuses the absurd
MAX_LYRICS_CHARS = 32_000  # a 7-minute rap holds about 6,000; this refuses a book
PIPELINES = ("clap", "lalm")


@dataclass(frozen=True)
class JobOptions:
    segmenter: SegmenterParams = field(default_factory=SegmenterParams)
    # clap: analysis labels, then `writer` writes the script; lalm: `storyteller` hears the song and
    # tells the story, which `writer` ('' = the storyteller) breaks into scenes; analysis is skipped,
    # unless the storyteller tells from what analysis heard (LISTENING_STORYTELLERS).
    pipeline: str = "clap"
    analyzer: str = "descriptors"
    transcriber: str = ""  # lyrics: the analysis backend that transcribes them ("whisper"); '' = none
    lyrics: str = ""  # the person's own lyrics (plain text or LRC), used instead of transcribing
    writer: str = "template"
    storyteller: str = "openai-audio"
    fallback_writer: str = ""  # clap: writes the script when `writer` gives no valid one; '' = fail
    generator: str = "animatic"
    script_inputs: ScriptInputs = field(default_factory=ScriptInputs)
    seed: int = 0
    top_k: int = 3
    fps: int = 24
    width: int = 640
    height: int = 360

    def check(self) -> None:
        """Raise InvalidInputError for an option no stage could honour, before any work starts."""
        self.segmenter.check()
        problems = encoding.format_problems(self.fps, self.width, self.height)
        if not 1 <= self.top_k <= 20:
            problems.append(f"top_k must be between 1 and 20 (got {self.top_k})")
        if self.seed < 0:
            problems.append(f"seed must be >= 0 (got {self.seed})")
        problems += self._pipeline_problems()
        for name in ("story", "characters", "style"):
            if len(getattr(self.script_inputs, name)) > MAX_SCRIPT_INPUT_CHARS:
                problems.append(f"{name} is longer than {MAX_SCRIPT_INPUT_CHARS} characters")
        if len(self.lyrics) > MAX_LYRICS_CHARS:
            problems.append(f"the lyrics are longer than {MAX_LYRICS_CHARS} characters ({len(self.lyrics)})")
        if problems:
            raise InvalidInputError("; ".join(problems))

    def _pipeline_problems(self) -> list[str]:
        if self.pipeline not in PIPELINES:
            return [f"pipeline must be one of {', '.join(PIPELINES)} (got {self.pipeline!r})"]
        problems = []
        if self.fallback_writer and self.fallback_writer == self.writer:
            problems.append(f"the fallback writer must differ from the writer ({self.writer!r})")
        if self.pipeline == "lalm":
            if self.writer == "template":
                problems.append("the template writer cannot break a story into scenes: in the LALM pipeline the "
                                "writer is an LLM writer (openai, llamacpp, vllm) or empty for the storyteller itself")
            if self.fallback_writer:
                problems.append("a fallback writer needs the CLAP pipeline's labels; the LALM pipeline has none")
            if self.wants_lyrics and not self.runs_analysis:
                problems.append(f"lyrics are heard by the analysis stage, which the LALM pipeline skips when an "
                                f"audio-language model ({self.storyteller}) hears the song; use the storyteller "
                                f"{' or '.join(LISTENING_STORYTELLERS)} or the CLAP pipeline")
        return problems

    @property
    def runs_analysis(self) -> bool:
        """Whether the job has labels: the CLAP pipeline, or a storyteller that tells from them."""
        return self.pipeline == "clap" or self.storyteller in LISTENING_STORYTELLERS

    @property
    def wants_lyrics(self) -> bool:
        return bool(self.transcriber or self.lyrics)

    @property
    def scene_writer(self) -> str:
        """The backend that writes the scenes: the writer, or in the LALM pipeline by default the storyteller."""
        return self.writer or (self.storyteller if self.pipeline == "lalm" else "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["segmenter"] = self.segmenter.to_dict()
        # The manifest names the person's lyrics by digest; the text itself is lyrics_source.txt.
        d["lyrics"] = {"sha256": hashlib.sha256(self.lyrics.encode()).hexdigest(),
                       "chars": len(self.lyrics)} if self.lyrics else ""
        return d


def read_lyrics_file(path: str) -> str:
    """A person's lyrics file (plain text or LRC) as text, or one line saying why it cannot be."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read the lyrics file {path}: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"the lyrics file {path} is not UTF-8 text (byte {exc.start} is not)") from exc
    if not text.strip():
        raise InvalidInputError(f"the lyrics file {path} is empty")
    if len(text) > MAX_LYRICS_CHARS:
        raise InvalidInputError(f"the lyrics file {path} is longer than {MAX_LYRICS_CHARS} characters ({len(text)})")
    return text


@dataclass(frozen=True)
class JobLayout:
    """Keys of a job's artifacts below its prefix ('' for a run folder, 'jobs/<id>/' in S3)."""

    prefix: str = ""

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def song(self, extension: str) -> str:
        return self.key(f"song{extension.lower()}")

    @property
    def manifest(self) -> str:
        return self.key("manifest.json")

    @property
    def segments(self) -> str:
        return self.key("segments.json")

    @property
    def segments_text(self) -> str:
        return self.key("segments.txt")

    @property
    def labels(self) -> str:
        return self.key("labels.json")

    @property
    def lyrics_source(self) -> str:
        return self.key("lyrics_source.txt")

    @property
    def lyrics(self) -> str:
        return self.key("lyrics.json")

    @property
    def lyrics_text(self) -> str:
        return self.key("lyrics.txt")

    @property
    def prompt(self) -> str:
        return self.key("prompt.txt")

    @property
    def story(self) -> str:
        return self.key("story.txt")

    @property
    def scenes_prompt(self) -> str:
        return self.key("scenes_prompt.txt")

    @property
    def response(self) -> str:
        return self.key("response.txt")

    @property
    def reasoning(self) -> str:
        return self.key("reasoning.txt")

    @property
    def plan(self) -> str:
        return self.key("plan.json")

    @property
    def plan_text(self) -> str:
        return self.key("plan.txt")

    @property
    def sections(self) -> str:
        return self.key("sections.json")

    @property
    def script(self) -> str:
        return self.key("script.json")

    @property
    def script_text(self) -> str:
        return self.key("script.txt")

    def clip(self, index: int) -> str:
        return self.key(f"clips/{index:04d}.mp4")

    @property
    def final(self) -> str:
        return self.key("final.mp4")


def fingerprint(*parts: Any) -> str:
    """A content key: the same inputs, stage, configuration and model give the same fingerprint."""
    blob = json.dumps(parts, sort_keys=True, default=_jsonable).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return asdict(value)


class Manifest:
    """manifest.json, read and written through the store. Every change is saved at once.

    The async methods change the manifest on the event loop's thread and write it from a worker
    thread, in order: a slow store (S3 retrying) never stalls the loop that serves progress."""

    def __init__(self, store: ArtifactStore, layout: JobLayout, data: dict[str, Any]):
        self.store = store
        self.layout = layout
        self.data = data
        self._write_lock = asyncio.Lock()

    @classmethod
    def open(cls, store: ArtifactStore, layout: JobLayout, job_id: str, song: dict[str, Any],
             options: JobOptions) -> Manifest:
        if store.exists(layout.manifest):
            data = json.loads(store.get_bytes(layout.manifest))
        else:
            data = {"job_id": job_id, "created_at": utc_now(), "stages": {}, "clips": {}}
        data.update(song=song, options=options.to_dict(), state="running", error=None)
        manifest = cls(store, layout, data)
        manifest.save()
        return manifest

    def save(self) -> None:
        self.store.put_bytes(self.layout.manifest, self._serialize())

    async def save_async(self) -> None:
        payload = self._serialize()  # a snapshot taken now; writes happen in the order of snapshots
        async with self._write_lock:
            await asyncio.to_thread(self.store.put_bytes, self.layout.manifest, payload)

    def _serialize(self) -> bytes:
        self.data["updated_at"] = utc_now()
        return (json.dumps(self.data, indent=2) + "\n").encode()

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].setdefault(name, {"state": "pending"})

    def clip(self, index: int) -> dict[str, Any]:
        return self.data["clips"].setdefault(f"{index:04d}", {"state": "pending"})

    async def is_fresh(self, record: dict[str, Any], fp: str) -> bool:
        """True when `record` was produced from the same fingerprint and all its outputs still exist."""
        outputs = record.get("outputs", {})
        if record.get("state") != "succeeded" or record.get("fingerprint") != fp or not outputs:
            return False
        return await asyncio.to_thread(lambda: all(self.store.exists(k) for k in outputs.values()))

    async def mark(self, record: dict[str, Any], state: str, **fields: Any) -> None:
        record["state"] = state
        record.update(fields)
        await self.save_async()

    async def finish(self, state: str, error: str | None = None) -> None:
        self.data.update(state=state, error=error)
        await self.save_async()

    def finish_now(self, state: str, error: str | None = None) -> None:
        """`finish` for code off the event loop (a worker thread settling a job that never ran)."""
        self.data.update(state=state, error=error)
        self.save()


def utc_now() -> str:
    """Now, in UTC, to the millisecond: when a stage or a clip started and ended is part of its record."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
