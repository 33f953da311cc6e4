"""The JSON schema of a script for `n` scenes, sent as structured output to servers that take one.

It is what validation.py checks, written for a constrained decoder: scenes are positional
(`prefixItems`, each index a constant), so the count and the order cannot come out wrong, and a
scene's text is shaped like one sentence. What a grammar cannot say (no two scenes alike, no
sentence break inside the text) validation checks afterwards, on every reply, whether or not the
server honoured the schema.
"""

from __future__ import annotations

from typing import Any

from services.common.artifacts import Character, Scene, Script, StyleBible
from services.scripting.validation import MAX_PALETTE_COLOURS

# A capital or a digit, then 15 to 280 characters with no line break, no sentence end and no quote
# (a small model's runaway scene becomes several sentences), ending with . ! or ?.
SENTENCE_PATTERN = r'^[A-Z0-9][^\n.!?"\\]{15,280}[.!?]$'
SHORT_TEXT = {"type": "string", "minLength": 3, "maxLength": 300}


def script_schema(n_scenes: int) -> dict[str, Any]:
    scene = {
        "type": "object",
        "additionalProperties": False,
        "required": ["index", "text"],
        "properties": {"index": {"type": "integer"}, "text": {"type": "string", "pattern": SENTENCE_PATTERN}},
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["title", "style", "characters", "scenes"],
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 120},
            "style": {
                "type": "object",
                "additionalProperties": False,
                "required": ["palette", "look", "lighting", "camera", "atmosphere"],
                "properties": {
                    "palette": {"type": "array", "minItems": 1, "maxItems": MAX_PALETTE_COLOURS,
                                "items": {"type": "string", "pattern": "^#[0-9A-Fa-f]{6}$"}},
                    "look": SHORT_TEXT, "lighting": SHORT_TEXT, "camera": SHORT_TEXT, "atmosphere": SHORT_TEXT,
                },
            },
            "characters": {
                "type": "array", "maxItems": 3,
                "items": {"type": "object", "additionalProperties": False, "required": ["name", "description"],
                          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 40},
                                         "description": SHORT_TEXT}},
            },
            "scenes": {
                "type": "array",
                "minItems": n_scenes,
                "maxItems": n_scenes,
                "prefixItems": [_with_index(scene, i) for i in range(n_scenes)],
            },
        },
    }


def scenes_schema(indices: list[int]) -> dict[str, Any]:
    """New sentences for the scenes `indices` only, in that order: the answer to a scene repair."""
    scene = {"type": "object", "additionalProperties": False, "required": ["index", "text"],
             "properties": {"index": {"type": "integer"}, "text": {"type": "string", "pattern": SENTENCE_PATTERN}}}
    return {"type": "object", "additionalProperties": False, "required": ["scenes"],
            "properties": {"scenes": {"type": "array", "minItems": len(indices), "maxItems": len(indices),
                                      "prefixItems": [_with_index(scene, i) for i in indices]}}}


def scene_texts_from_json(data: Any) -> dict[int, str]:
    """index -> sentence from a scene repair's answer; ValueError when it has no usable scenes."""
    scenes = data.get("scenes") if isinstance(data, dict) else None
    if not isinstance(scenes, list):
        raise ValueError('the answer must be one JSON object with a "scenes" list')
    try:
        return {int(s["index"]): str(s["text"]).strip() for s in scenes}
    except (KeyError, TypeError, ValueError):
        raise ValueError('every scene needs an integer "index" and a "text"') from None


def script_from_json(data: Any, writer: str) -> Script:
    """A Script from a model's parsed JSON; raises ValueError naming what is missing or mistyped."""
    if not isinstance(data, dict):
        raise ValueError("the answer must be one JSON object")
    try:
        style = data["style"]
        if not isinstance(style, dict):
            raise ValueError('"style" must be an object')
        characters = data.get("characters") or []
        scenes = data["scenes"]
        if not isinstance(characters, list) or not isinstance(scenes, list):
            raise ValueError('"characters" and "scenes" must be lists')
        return Script(
            writer=writer,
            title=str(data.get("title", "")).strip(),
            style=StyleBible(palette=[str(c) for c in _list(style.get("palette"))],
                             look=str(style.get("look", "")), lighting=str(style.get("lighting", "")),
                             camera=str(style.get("camera", "")), atmosphere=str(style.get("atmosphere", ""))),
            characters=[Character(name=str(c["name"]).strip(), description=str(c["description"]).strip())
                        for c in characters],
            scenes=[Scene(index=int(s["index"]), text=str(s["text"]).strip()) for s in scenes],
        )
    except KeyError as exc:
        raise ValueError(f"a required field is missing: {exc}") from None
    except TypeError as exc:
        raise ValueError(f"a field has the wrong type ({exc})") from None


def _with_index(scene: dict[str, Any], index: int) -> dict[str, Any]:
    properties = dict(scene["properties"], index={"type": "integer", "const": index})
    return dict(scene, properties=properties)


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError('"palette" must be a list of hex colours')
    return value
