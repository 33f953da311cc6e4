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

DEFAULT_CUT_FRAMES = 6  # a cut made a transition without a length: a quarter of a second at 24 fps


@dataclass(frozen=True)
class ScriptEdits:
    """Changes to a script; what they do not name is kept."""

    scenes: tuple[tuple[int, str], ...] = ()  # (scene index, new text), in index order, one per index
    style: StyleBible | None = None  # None: kept
    characters: tuple[Character, ...] | None = None  # None: kept; () : no characters
    # The edit's cuts: (cut index as edit.json numbers it, transition, frames; 0 = the edit's own), in index order.
    cuts: tuple[tuple[int, str, int], ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.scenes and self.style is None and self.characters is None and not self.cuts

    def then(self, later: ScriptEdits) -> ScriptEdits:
        """These edits, then `later`'s: a later text of a scene, style, cast or cut wins."""
        cuts = {cut[0]: cut for cut in self.cuts} | {cut[0]: cut for cut in later.cuts}
        return ScriptEdits(scenes=tuple(sorted((dict(self.scenes) | dict(later.scenes)).items())),
                           style=later.style if later.style is not None else self.style,
                           characters=later.characters if later.characters is not None else self.characters,
                           cuts=tuple(cuts[index] for index in sorted(cuts)))

    def apply_to_edit(self, edit: dict[str, Any]) -> dict[str, Any]:
        """edit.json (its dict) with these cuts' transitions; MvgenError for a cut the edit does not have.
        Whether the result fits the segments is the assembly stage's check (Edit.checked)."""
        cuts = {cut["index"]: dict(cut) for cut in edit.get("cuts", [])}
        missing = sorted(index for index, _, _ in self.cuts if index not in cuts)
        if missing:
            raise MvgenError(f"the revision changes cuts {missing}, which the edit does not have")
        for index, transition, frames in self.cuts:
            cut = cuts[index]
            if cut["transition"] != transition:
                cut.update(transition=transition, reason="changed by a revision (ReviseJob)")
                if not frames and cut.get("frames", 0) == 0 and transition != "cut":
                    frames = DEFAULT_CUT_FRAMES
            if frames:
                cut["frames"] = frames
            if transition == "cut":
                cut["frames"] = 0
        return {**edit, "cuts": [cuts[cut["index"]] for cut in edit.get("cuts", [])]}

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
    revised_edit_key: str = ""  # edit.json of the job revised: what the cuts of script_edits change

    def to_dict(self) -> dict[str, Any]:
        """For the manifest, where a person reads what this job revised."""
        changes = self.changes
        return {"revises_job_id": self.revises_job_id, "scenes": [index for index, _ in changes.scenes],
                "style": changes.style is not None, "characters": changes.characters is not None,
                "cuts": [index for index, _, _ in changes.cuts],
                "edited_scenes": [index for index, _ in self.script_edits.scenes]}
