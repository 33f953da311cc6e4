"""What makes a script usable by the video stage, checked before script.json is written, and what
makes a plan usable by the section writer.

`script_problems` and `plan_problems` list every problem in words a model can act on, so that an
LLM writer can send them back in a repair turn; `validate_script` raises them all at once. The
rules of a scene that only LLM-written scenes are held to (no sound, no text on screen, no
reference to another scene, no near-duplicate) are in scene_rules.py; the checks of one sentence, a
style and a cast, which the gateway holds a person's revision to as well, in script_checks.py.
"""

from __future__ import annotations

from services.common.artifacts import Character, Script, StyleBible
from services.common.errors import StageFailedError

# The checks of one sentence, style and cast are shared with the gateway (a person's revision); the rest of
# the scripting stage imports them from here.
from services.common.script_checks import (  # noqa: F401
    MAX_PALETTE_COLOURS,
    character_problems,
    sentence_count,
    sentence_problems,
    style_problems,
)


class ScriptValidationError(StageFailedError):
    def __init__(self, problems: list[str]):
        super().__init__("the script is not valid: " + "; ".join(problems))
        self.problems = problems


def validate_script(script: Script, segment_count: int) -> None:
    problems = script_problems(script, segment_count)
    if problems:
        raise ScriptValidationError(problems)


def script_problems(script: Script, segment_count: int) -> list[str]:
    problems = []
    if len(script.scenes) != segment_count:
        problems.append(
            f"there are {len(script.scenes)} scenes; there must be exactly {segment_count}, one per segment")
    indices = [scene.index for scene in script.scenes]
    if indices != list(range(len(script.scenes))):
        problems.append(f"scene indices must be 0, 1, 2, ... in order; they are {indices}")
    for index, found in scene_problems(script).items():
        problems += [f"scene {index}{'' if p.startswith('repeats') else ':'} {p}" for p in found]
    return problems + style_problems(script.style) + character_problems(script.characters)


def plan_problems(title: str, style: StyleBible, characters: list[Character],
                  sections: list[tuple[str, str]]) -> list[str]:
    """What is wrong with a plan: its title, style, characters, and each section's place and action."""
    return [problem for problems in plan_part_problems(title, style, characters, sections).values()
            for problem in problems]


def plan_part_problems(title: str, style: StyleBible, characters: list[Character],
                       sections: list[tuple[str, str]]) -> dict[str, list[str]]:
    """part -> what is wrong with it, for the parts of a plan that have something wrong: "title", "style",
    "characters", "section <i>"."""
    found = {"title": [] if title.strip() else ["the title is empty"], "style": style_problems(style),
             "characters": character_problems(characters)}
    seen: dict[str, int] = {}
    for index, (place, action) in enumerate(sections):
        key = " ".join(action.lower().split())
        if not place.strip() or not key:
            found[f"section {index}"] = ["it needs a place and an action"]
        elif key in seen:
            found[f"section {index}"] = [f"it repeats section {seen[key]}; every section must move the story on"]
        seen.setdefault(key, index)
    return {part: problems for part, problems in found.items() if problems}


def scene_problems(script: Script) -> dict[int, list[str]]:
    """What is wrong with each scene on its own (its sentence) or against the ones before it (a repeat)."""
    found: dict[int, list[str]] = {}
    seen: dict[str, int] = {}
    for scene in script.scenes:
        problems = sentence_problems(scene.text)
        key = " ".join(scene.text.lower().split())
        if key and key in seen:
            problems.append(f"repeats scene {seen[key]}; every scene must be different")
        seen.setdefault(key, scene.index)
        if problems:
            found[scene.index] = problems
    return found
