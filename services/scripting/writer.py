"""What every script writer backend offers the scripting stage."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from services.common.artifacts import Labels, Script, Segmentation
from services.common.lifecycle import Backend
from services.common.stage_api import ScriptInputs
from services.scripting.llm.transcript import Transcript
from services.scripting.sectioned import ProgressCallback, ScriptJournal, SectionedTask


@dataclass(frozen=True)
class ScriptTask:
    """Everything a writer may use: what the script is made from, the sectioned task (the plan prompt and
    the section prompts LLM writers send), and where an LLM writer keeps its work as it goes."""

    labels: Labels
    segmentation: Segmentation
    inputs: ScriptInputs
    seed: int
    sectioned: SectionedTask
    journal: ScriptJournal
    transcript: Transcript
    on_progress: ProgressCallback
    is_cancelled: Callable[[], bool]


class ScriptWriter(Backend):
    @abstractmethod
    def write(self, task: ScriptTask) -> Script:
        """A script with one scene per segment; the stage validates it before it is stored."""
