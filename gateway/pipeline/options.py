"""What a job asks for (JobOptions), checked before any work starts, and a person's lyrics file."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.common import encoding
from services.common.errors import InvalidInputError
from services.common.stage_api import LISTENING_STORYTELLERS, TRANSITION_MODES, ScriptInputs, SegmenterParams

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
    # The edit: "none" joins the clips by hard cuts; "auto" chooses a transition at each cut from what the
    # music does there (edit.json, which a person may change). Hard cuts stay the default until auto has
    # been through every fault test (a conformed clip of another format gave one frame too many).
    transitions: str = "none"

    def check(self) -> None:
        """Raise InvalidInputError for an option no stage could honour, before any work starts."""
        self.segmenter.check()
        problems = encoding.format_problems(self.fps, self.width, self.height)
        if self.transitions not in TRANSITION_MODES:
            problems.append(f"transitions must be one of {', '.join(TRANSITION_MODES)} (got {self.transitions!r})")
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
