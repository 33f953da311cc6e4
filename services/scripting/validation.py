"""What makes a script usable by the video stage, checked before script.json is written, and what
makes a plan usable by the section writer.

`script_problems` and `plan_problems` list every problem in words a model can act on, so that an
LLM writer can send them back in a repair turn; `validate_script` raises them all at once. The
rules of a scene that only LLM-written scenes are held to (no sound, no text on screen, no
reference to another scene, no near-duplicate) are in scene_rules.py.
"""

from __future__ import annotations

import re

from services.common.artifacts import Character, Script, StyleBible
from services.common.errors import StageFailedError

MAX_SCENE_WORDS = 60  # the prompt asks for 40; text-to-video encoders lose detail past this
MAX_PALETTE_COLOURS = 8
HEX_COLOUR = re.compile(r"#[0-9A-Fa-f]{6}")
# A sentence ends at . ! or ? (possibly repeated or followed by a closing quote or bracket).
SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*")
ENDS_WITH_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*$")
# Abbreviations whose full stop does not end a sentence.
ABBREVIATIONS = ("mr", "mrs", "ms", "dr", "st", "e.g", "i.e", "vs", "etc", "approx")


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


def character_problems(characters: list[Character]) -> list[str]:
    problems = []
    names = [c.name.strip() for c in characters]
    if any(not n for n in names) or len(set(names)) != len(names):
        problems.append("every character needs a name of its own")
    if any(not c.description.strip() for c in characters):
        problems.append("every character needs a visual description")
    return problems


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


def sentence_problems(text: str) -> list[str]:
    """Why `text` is not exactly one non-empty sentence of at most MAX_SCENE_WORDS words."""
    stripped = text.strip()
    if not stripped:
        return ["the scene is empty"]
    problems = []
    if "\n" in stripped:
        problems.append("the scene spans several lines; write one sentence on one line")
    count = sentence_count(stripped)
    if count > 1:
        problems.append(f"the scene has {count} sentences; write exactly one")
    if not ENDS_WITH_SENTENCE_END.search(stripped):
        problems.append("the sentence must end with '.', '!' or '?'")
    words = len(stripped.split())
    if words > MAX_SCENE_WORDS:
        problems.append(f"the scene has {words} words; keep it under {MAX_SCENE_WORDS}")
    return problems


def sentence_count(text: str) -> int:
    """Sentences in `text`: sentence ends followed by a space and a new sentence, plus the last one.

    A new sentence starts with anything but a lowercase letter ("Wait... the light fades" is one);
    a full stop after an abbreviation ("Dr.") or inside a number ("3.5") ends nothing.
    """
    stripped = text.strip()
    count = 1
    for match in SENTENCE_END.finditer(stripped):
        rest = stripped[match.end():]
        if not rest[:1].isspace() or rest.lstrip()[:1].islower():
            continue
        word_before = re.search(r"[\w.]+$", stripped[:match.start()])
        if match.group() == "." and word_before and word_before.group().lower() in ABBREVIATIONS:
            continue
        count += 1
    return count


def style_problems(style: StyleBible) -> list[str]:
    problems = []
    if not 1 <= len(style.palette) <= MAX_PALETTE_COLOURS:
        problems.append(f"the palette must hold 1 to {MAX_PALETTE_COLOURS} colours")
    bad = [c for c in style.palette if not (isinstance(c, str) and HEX_COLOUR.fullmatch(c))]
    if bad:
        problems.append(f"palette colours must be hex like '#1A2B3C'; these are not: {bad}")
    for field in ("look", "lighting", "camera", "atmosphere"):
        if not str(getattr(style, field)).strip():
            problems.append(f"the style's {field} is empty")
    return problems
