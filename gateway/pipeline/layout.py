"""Where a job's artifacts live: one key per artifact below the job's prefix."""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def edit(self) -> str:
        return self.key("edit.json")

    @property
    def edit_text(self) -> str:
        return self.key("edit.txt")

    @property
    def evaluation(self) -> str:
        return self.key("evaluation.json")

    @property
    def evaluation_text(self) -> str:
        return self.key("evaluation.txt")

    @property
    def storyboard(self) -> str:
        return self.key("storyboard.html")
