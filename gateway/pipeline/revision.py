"""A revision of a finished job (the gateway's ReviseJob): new text for some scenes, and perhaps a new
style bible or new characters, applied to the script the scripting stage wrote.

The revision job asks for everything its parent asked for, so each stage's fingerprint is its
parent's and its output is copied from the output cache; the orchestrator then applies the edits
to script.json (and script.txt). A clip's fingerprint covers its own scene, the style and the
characters, so exactly the clips the edits touch are generated again, and assembly, whose
fingerprint covers the clips', runs again. Applying the edits is idempotent: a resumed revision
applies them again to the same script.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from services.common.artifacts import Character, Scene, Script, StyleBible
from services.common.errors import MvgenError


@dataclass(frozen=True)
class ScriptEdits:
    """Changes to a script; what they do not name is kept."""

    scenes: tuple[tuple[int, str], ...] = ()  # (scene index, new text), in index order, one per index
    style: StyleBible | None = None  # None: kept
    characters: tuple[Character, ...] | None = None  # None: kept; () : no characters

    @property
    def is_empty(self) -> bool:
        return not self.scenes and self.style is None and self.characters is None

    def then(self, later: ScriptEdits) -> ScriptEdits:
        """These edits, then `later`'s: a later text of a scene, style or cast wins."""
        return ScriptEdits(scenes=tuple(sorted((dict(self.scenes) | dict(later.scenes)).items())),
                           style=later.style if later.style is not None else self.style,
                           characters=later.characters if later.characters is not None else self.characters)

    def apply(self, script: Script) -> Script:
        """`script` with these edits; MvgenError when one names a scene the script does not have."""
        texts = dict(self.scenes)
        missing = sorted(set(texts) - {scene.index for scene in script.scenes})
        if missing:
            raise MvgenError(f"the revision changes scenes {missing}, which the script does not have "
                             f"(it has {len(script.scenes)} scenes)")
        return replace(script,
                       style=replace(self.style, palette=list(self.style.palette)) if self.style else script.style,
                       characters=list(self.characters) if self.characters is not None else script.characters,
                       scenes=[Scene(scene.index, texts.get(scene.index, scene.text)) for scene in script.scenes])


@dataclass(frozen=True)
class Revision:
    """What a revision job changes of the job it revises."""

    revises_job_id: str
    changes: ScriptEdits  # what this revision changed
    script_edits: ScriptEdits  # every edit of the written script: the job revised's (a revision too), then changes

    def to_dict(self) -> dict[str, Any]:
        """For the manifest, where a person reads what this job revised."""
        changes = self.changes
        return {"revises_job_id": self.revises_job_id, "scenes": [index for index, _ in changes.scenes],
                "style": changes.style is not None, "characters": changes.characters is not None,
                "edited_scenes": [index for index, _ in self.script_edits.scenes]}
