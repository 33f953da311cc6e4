"""What every script writer backend offers the scripting stage."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

from services.common.artifacts import Labels, Script, Segmentation
from services.common.lifecycle import Backend
from services.common.stage_api import ScriptInputs
from services.scripting.llm.conversation import Transcript


@dataclass(frozen=True)
class ScriptTask:
    """Everything a writer may use: the rendered prompt (what LLM writers send) and what it was made from."""

    prompt: str
    labels: Labels
    segmentation: Segmentation
    inputs: ScriptInputs
    seed: int


@dataclass(frozen=True)
class Draft:
    script: Script
    model: str = ""
    transcript: Transcript | None = None  # LLM writers: every reply, the repaired ones included


class ScriptWriter(Backend):
    @abstractmethod
    def write(self, task: ScriptTask) -> Draft:
        """A script with one scene per segment; the stage validates it before it is stored."""
