"""The JSON schemas of the answers a writer asks for, sent as structured output to servers that take
one, and the readers of those answers.

- the plan: title, style bible, characters, and each section's place and action (`plan_schema`);
- a section's scenes, or the scenes a repair asks for again (`scenes_schema`): one sentence per
  key "scene <segment index>", in order.

Written for a constrained decoder: the keys are fixed and ordered, so the count and the order
cannot come out wrong, and a scene's text is shaped like one sentence. What a grammar cannot say
(no two scenes alike, no sound, no text on screen) is checked afterwards on every reply
(validation.py, scene_rules.py), whether or not the server honoured the schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.common.artifacts import Character, StyleBible
from services.scripting.validation import MAX_PALETTE_COLOURS

# A capital or a digit, then 15 to 280 characters with no line break, no sentence end and no quote
# (a small model's runaway scene becomes several sentences), ending with . ! or ?.
SENTENCE_PATTERN = r'^[A-Z0-9][^\n.!?"\\]{15,280}[.!?]$'
SHORT_TEXT = {"type": "string", "minLength": 3, "maxLength": 300}
SENTENCE = {"type": "string", "pattern": SENTENCE_PATTERN}
PLACE = {"type": "string", "minLength": 3, "maxLength": 100}
PLANNED_SECTION = {"type": "object", "additionalProperties": False, "required": ["place", "action"],
                   "properties": {"place": PLACE, "action": SENTENCE}}


def scene_key(index: int) -> str:
    return f"scene {index}"


def section_key(index: int) -> str:
    return f"section {index}"


TITLE = {"type": "string", "minLength": 1, "maxLength": 120}
STYLE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["palette", "look", "lighting", "camera", "atmosphere"],
    "properties": {
        "palette": {"type": "array", "minItems": 1, "maxItems": MAX_PALETTE_COLOURS,
                    "items": {"type": "string", "pattern": "^#[0-9A-Fa-f]{6}$"}},
        "look": SHORT_TEXT, "lighting": SHORT_TEXT, "camera": SHORT_TEXT, "atmosphere": SHORT_TEXT,
    },
}
CHARACTERS = {
    "type": "array", "maxItems": 3,
    "items": {"type": "object", "additionalProperties": False, "required": ["name", "description"],
              "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 40}, "description": SHORT_TEXT}},
}
PLAN_PARTS = {"title": TITLE, "style": STYLE, "characters": CHARACTERS}  # and "section <i>": PLANNED_SECTION


def plan_schema(sections: Sequence[int]) -> dict[str, Any]:
    """The plan's first reply: title, style, characters, and the sections `sections`."""
    return {"type": "object", "additionalProperties": False, "required": ["title", "style", "characters", "sections"],
            "properties": {**PLAN_PARTS, "sections": planned_sections_schema(sections)}}


def plan_parts_schema(parts: Sequence[str]) -> dict[str, Any]:
    """Some parts of a plan written again: "title", "style", "characters", "section <i>" (a plan repair)."""
    return {"type": "object", "additionalProperties": False, "required": list(parts),
            "properties": {part: PLAN_PARTS.get(part, PLANNED_SECTION) for part in parts}}


def planned_sections_schema(indices: Sequence[int]) -> dict[str, Any]:
    """A new place and action for each of the plan's sections `indices`: the answer to a plan repair."""
    keys = [section_key(i) for i in indices]
    return {"type": "object", "additionalProperties": False, "required": keys,
            "properties": {key: PLANNED_SECTION for key in keys}}


def planned_sections_from_json(data: Any, indices: Sequence[int]) -> dict[int, tuple[str, str]]:
    """index -> (place, action) for the sections `indices` an answer gives; ValueError naming what is missing."""
    if not isinstance(data, dict):
        raise ValueError("the answer must be one JSON object")
    found = {}
    for i in indices:
        entry = data.get(section_key(i))
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("place", "action")):
            raise ValueError(f"the answer lacks a place and an action for {section_key(i)}")
        found[i] = (entry["place"].strip().rstrip(".:;, "), entry["action"].strip())  # the place goes mid-sentence
    return found


def scenes_schema(indices: Sequence[int]) -> dict[str, Any]:
    """One sentence for each of the scenes `indices`, in that order."""
    return _keyed([scene_key(i) for i in indices])


def _keyed(keys: list[str]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": keys,
            "properties": {key: SENTENCE for key in keys}}


def scene_texts_from_json(data: Any, indices: Sequence[int]) -> dict[int, str]:
    """index -> sentence for the scenes `indices` an answer gives; ValueError naming what is missing."""
    if not isinstance(data, dict):
        raise ValueError("the answer must be one JSON object")
    missing = [scene_key(i) for i in indices if not isinstance(data.get(scene_key(i)), str)]
    if missing:
        raise ValueError(f"the answer lacks a sentence for {', '.join(missing)}")
    return {i: data[scene_key(i)].strip() for i in indices}


def plan_parts_from_json(data: Any, sections: Sequence[int]) -> tuple[str, StyleBible, list[Character],
                                                                     list[tuple[str, str]]]:
    """(title, style, characters, (place, action) per section) from a plan's first reply, which writes the
    sections `sections` (0, 1, ...); ValueError naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("the answer must be one JSON object")
    if "style" not in data or "sections" not in data:
        raise ValueError(f"a required field is missing: {'style' if 'style' not in data else 'sections'!r}")
    planned = planned_sections_from_json(data["sections"], sections)
    return (_title(data.get("title", "")), _style(data["style"]), _characters(data.get("characters") or []),
            [planned[i] for i in sections])


def mended_plan(plan: tuple[str, StyleBible, list[Character], list[tuple[str, str]]], data: Any,
                parts: Sequence[str]) -> tuple[str, StyleBible, list[Character], list[tuple[str, str]]]:
    """`plan` with the `parts` an answer wrote (again, or next: its next sections); ValueError naming what is
    missing."""
    if not isinstance(data, dict):
        raise ValueError("the answer must be one JSON object")
    missing = [part for part in parts if part not in data]
    if missing:
        raise ValueError(f"the answer lacks {', '.join(missing)}")
    title, style, characters, sections = plan
    new_sections = planned_sections_from_json(data, [int(p.split()[1]) for p in parts if p.startswith("section ")])
    count = max([len(sections), *(i + 1 for i in new_sections)])
    return (_title(data["title"]) if "title" in parts else title,
            _style(data["style"]) if "style" in parts else style,
            _characters(data["characters"]) if "characters" in parts else characters,
            [new_sections.get(i) or sections[i] for i in range(count)])


def _title(value: Any) -> str:
    return str(value).strip()


def _style(style: Any) -> StyleBible:
    if not isinstance(style, dict):
        raise ValueError('"style" must be an object')
    palette = style.get("palette")
    if not isinstance(palette, list):
        raise ValueError('"palette" must be a list of hex colours')
    return StyleBible(palette=[str(c) for c in palette], look=str(style.get("look", "")),
                      lighting=str(style.get("lighting", "")), camera=str(style.get("camera", "")),
                      atmosphere=str(style.get("atmosphere", "")))


def _characters(characters: Any) -> list[Character]:
    if not isinstance(characters, list) or not all(isinstance(c, dict) for c in characters):
        raise ValueError('"characters" must be a list of objects with a "name" and a "description"')
    try:
        return [Character(name=str(c["name"]).strip(), description=str(c["description"]).strip()) for c in characters]
    except KeyError as exc:
        raise ValueError(f"a character lacks its {exc}") from None
