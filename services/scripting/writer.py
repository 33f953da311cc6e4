"""What every script writer backend offers the scripting stage."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

from services.common.artifacts import Labels, Script, Segmentation
from services.common.lifecycle import Backend
from services.common.stage_api import ScriptInputs


@dataclass(frozen=True)
class ScriptTask:
    """Everything a writer may use: the rendered prompt (what LLM writers send) and what it was made from."""

    prompt: str
    labels: Labels
    segmentation: Segmentation
    inputs: ScriptInputs
    seed: int


class ScriptWriter(Backend):
    @abstractmethod
    def write(self, task: ScriptTask) -> Script:
        """A script with one scene per segment; the stage validates it before it is stored."""
