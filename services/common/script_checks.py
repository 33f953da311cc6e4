"""What makes a scene's sentence, a style bible and a cast usable by the video stage, on their own:
the checks the scripting stage holds every script to (services/scripting/validation.py) and the
gateway holds a person's revision of a script to (ReviseJob). The rules of a scene's words (no
sound, no text on screen, no reference to another scene) are in scene_rules.py."""

from __future__ import annotations

import re

from services.common.artifacts import Character, StyleBible

MAX_SCENE_WORDS = 60  # the prompt asks for 40; text-to-video encoders lose detail past this
MAX_PALETTE_COLOURS = 8
HEX_COLOUR = re.compile(r"#[0-9A-Fa-f]{6}")
# A sentence ends at . ! or ? (possibly repeated or followed by a closing quote or bracket).
SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*")
ENDS_WITH_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*$")
# Abbreviations whose full stop does not end a sentence.
ABBREVIATIONS = ("mr", "mrs", "ms", "dr", "st", "e.g", "i.e", "vs", "etc", "approx")


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


def character_problems(characters: list[Character]) -> list[str]:
    problems = []
    names = [c.name.strip() for c in characters]
    if any(not n for n in names) or len(set(names)) != len(names):
        problems.append("every character needs a name of its own")
    if any(not c.description.strip() for c in characters):
        problems.append("every character needs a visual description")
    return problems
