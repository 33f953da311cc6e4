"""ReviseJob's changes, checked before any job is made, and a revision in its two forms: the contract's
(job_pb2.JobRevision: kept in job.json, shown in Job.revision) and the orchestrator's (Revision).

A revision's texts come from a client and go into every clip prompt they touch: they are held to
what the script writers are held to (one sentence, the scene rules of prompts/scene_rules.yaml), to
a length, and to printable characters; a problem is named with its scene, and what the client sent
is quoted only through `untrusted.quoted`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.common.artifacts import Character, Script, StyleBible
from services.common.errors import InvalidInputError
from services.common.pb import artifacts_pb2, job_pb2
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.scene_rules import SceneRules, load_scene_rules
from services.common.script_checks import HEX_COLOUR, character_problems, sentence_problems, style_problems
from services.common.untrusted import quoted
from gateway.pipeline.revision import Revision, ScriptEdits

TRANSITIONS = ("cut", "dissolve", "flash", "whip", "fade_in", "fade_out")  # services/assembly/edit.py's
MAX_CUT_FRAMES = 240  # ten seconds at 24 fps: the assembly stage holds a transition to its segments
MAX_SCENE_CHARS = 600  # a scene is one sentence of at most 60 words
MAX_STYLE_CHARS = 300  # each of the style bible's texts
MAX_CHARACTERS = 12
MAX_NAME_CHARS = 80
MAX_DESCRIPTION_CHARS = 600
SHOWN_PROBLEMS = 8  # in one message; the rest are counted
STYLE_TEXTS = ("look", "lighting", "camera", "atmosphere")


def requested_changes(request: api_pb2.ReviseJobRequest) -> ScriptEdits:
    """The changes a request asks for, in the orchestrator's form; InvalidInputError when it asks for none."""
    changes = ScriptEdits(
        scenes=tuple(sorted({scene.index: scene.text for scene in request.scenes}.items())),
        style=_style(request.style) if request.HasField("style") else None,
        characters=tuple(Character(c.name, c.description) for c in request.characters.characters)
        if request.HasField("characters") else None,
        cuts=tuple(sorted({cut.index: (cut.index, cut.transition, cut.frames) for cut in request.cuts}.values())))
    if changes.is_empty:
        raise InvalidInputError("the revision changes nothing: give new text for at least one scene (scenes), "
                                "a new style bible (style), new characters (characters) or new transitions (cuts)")
    return changes


def check_revision(request: api_pb2.ReviseJobRequest, changes: ScriptEdits, script: Script,
                   lyric_lines: Sequence[str] = (), edit: dict[str, Any] | None = None) -> None:
    """InvalidInputError naming every problem of `changes` to `script` (the script of the job revised, as it
    is) and to `edit` (its edit.json; None: it was made with hard cuts), each with its scene (or its part of
    the style or cast, or its cut)."""
    rules = load_scene_rules().with_lyrics(lyric_lines)
    problems = _cut_problems(request, changes, edit)
    indices = [scene.index for scene in request.scenes]
    have = {scene.index: scene.text for scene in script.scenes}
    for index in sorted({i for i in indices if indices.count(i) > 1}):
        problems.append(f"scene {index} is given {indices.count(index)} times; give each scene once")
    for index, text in changes.scenes:
        if index not in have:
            problems.append(f"scene {index}: the script has no such scene (its scenes are 0 to {len(have) - 1})")
            continue
        if text == have[index]:
            continue  # no change (a writer's scene is held to no rule it was not written to)
        problems += [f"scene {index}: {p}" for p in _text_problems(text, MAX_SCENE_CHARS, rules, scene=True)]
    if changes.style is not None:
        style = changes.style
        odd = next((colour for colour in style.palette if not HEX_COLOUR.fullmatch(colour)), None)
        if odd is not None:
            problems.append(f"style palette: colours are hex like '#1A2B3C', not {quoted(odd)}")
        else:
            problems += [f"style: {p}" for p in style_problems(style) if "is empty" not in p]
        for name in STYLE_TEXTS:
            problems += [f"style {name}: {p}" for p in
                         _text_problems(getattr(style, name), MAX_STYLE_CHARS, rules, scene=False)]
    if changes.characters is not None:
        if len(changes.characters) > MAX_CHARACTERS:
            problems.append(f"characters: {len(changes.characters)} given; at most {MAX_CHARACTERS}")
        else:
            problems += [f"characters: {p}" for p in character_problems(list(changes.characters))]
            for number, character in enumerate(changes.characters, 1):
                problems += [f"character {number} name: {p}" for p in
                             _text_problems(character.name, MAX_NAME_CHARS, rules, scene=False)]
                problems += [f"character {number} description: {p}" for p in
                             _text_problems(character.description, MAX_DESCRIPTION_CHARS, rules, scene=False)]
    if not problems:
        problems += _repeats(changes, script)
    if not problems and changes.apply(script) == script and (edit is None or changes.apply_to_edit(edit) == edit):
        problems.append("the revision changes nothing: the script (and the edit) already read so")
    if problems:
        shown = problems[:SHOWN_PROBLEMS]
        more = len(problems) - len(shown)
        raise InvalidInputError("the revision is not valid: " + "; ".join(shown) +
                                (f"; and {more} more problems" if more else ""))


def _cut_problems(request: api_pb2.ReviseJobRequest, changes: ScriptEdits, edit: dict[str, Any] | None) -> list[str]:
    """What is wrong with the new transitions: a cut the edit does not have, an unknown transition, a length.
    Whether a transition fits its place and the segments beside it, the assembly stage says (Edit.checked)."""
    if not changes.cuts:
        return []
    if edit is None:
        return ["cuts: the job was made with hard cuts (transitions none), so it has no edit to change; create a "
                "job with transitions auto"]
    have = {cut.get("index") for cut in edit.get("cuts", []) if isinstance(cut, dict)}
    indices = [cut.index for cut in request.cuts]
    problems = [f"cut {index} is given {indices.count(index)} times; give each cut once"
                for index in sorted({i for i in indices if indices.count(i) > 1})]
    for index, transition, frames in changes.cuts:
        if index not in have:
            problems.append(f"cut {index}: the edit has no such cut (its cuts are -1, the start, to "
                            f"{max(i for i in have if isinstance(i, int))}, the end)")
        if transition not in TRANSITIONS:
            problems.append(f"cut {index}: unknown transition {quoted(transition)}; "
                            f"use one of {', '.join(TRANSITIONS)}")
        if not 0 <= frames <= MAX_CUT_FRAMES:
            problems.append(f"cut {index}: frames must be 0 (the edit's own length) to {MAX_CUT_FRAMES}, "
                            f"not {frames}")
    return problems


def _text_problems(text: str, limit: int, rules: SceneRules, *, scene: bool) -> list[str]:
    """What is wrong with one text of a revision: `scene`: a scene's sentence, else a text of the style or cast."""
    if len(text) > limit:
        return [f"it is {len(text)} characters long; at most {limit}"]
    problems = _printable_problems(text)
    if problems:
        return problems
    if scene:
        problems = sentence_problems(text)
    elif not text.strip():
        return ["it is empty"]
    return problems + rules.problems(text, style=not scene)


def _printable_problems(text: str) -> list[str]:
    odd = next((char for char in text if not char.isprintable()), None)
    return [] if odd is None else [f"it holds a control or formatting character ({quoted(odd)}); write one line "
                                   "of plain text"]


def _repeats(changes: ScriptEdits, script: Script) -> list[str]:
    """A new scene text that repeats another scene of the revised script word for word."""
    revised = changes.apply(script)
    problems = []
    for index, text in changes.scenes:
        other = next((s.index for s in revised.scenes if s.index != index and _same(s.text, text)), None)
        if other is not None:
            problems.append(f"scene {index}: it repeats scene {other}; every scene must be different")
    return problems


def _same(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


# The two forms -------------------------------------------------------------------------------------------

def job_revision(revises_job_id: str, changes: ScriptEdits, earlier: job_pb2.JobRevision | None) -> job_pb2.JobRevision:
    """The revision of job `revises_job_id` by `changes`; `earlier`: that job's own revision, if it was one."""
    script_edits = (edits_of(earlier.script_edits) if earlier is not None else ScriptEdits()).then(changes)
    return job_pb2.JobRevision(revises_job_id=revises_job_id, changes=edits_message(changes),
                               script_edits=edits_message(script_edits))


def script_revision(message: job_pb2.JobRevision) -> Revision:
    return Revision(message.revises_job_id, edits_of(message.changes), edits_of(message.script_edits))


def edits_of(message: job_pb2.ScriptEdits) -> ScriptEdits:
    return ScriptEdits(
        scenes=tuple(sorted((scene.index, scene.text) for scene in message.scenes)),
        style=_style(message.style) if message.HasField("style") else None,
        characters=tuple(Character(c.name, c.description) for c in message.characters.characters)
        if message.HasField("characters") else None,
        cuts=tuple(sorted((cut.index, cut.transition, cut.frames) for cut in message.cuts)))


def edits_message(edits: ScriptEdits) -> job_pb2.ScriptEdits:
    message = job_pb2.ScriptEdits(scenes=[job_pb2.SceneRevision(index=i, text=t) for i, t in edits.scenes],
                                  cuts=[job_pb2.CutRevision(index=i, transition=t, frames=f) for i, t, f in edits.cuts])
    if edits.style is not None:
        style = edits.style
        message.style.CopyFrom(artifacts_pb2.StyleBible(palette=style.palette, look=style.look,
                                                        lighting=style.lighting, camera=style.camera,
                                                        atmosphere=style.atmosphere))
    if edits.characters is not None:
        message.characters.SetInParent()  # set, even when empty: "no characters"
        message.characters.characters.extend(artifacts_pb2.Character(name=c.name, description=c.description)
                                             for c in edits.characters)
    return message


def _style(message: artifacts_pb2.StyleBible) -> StyleBible:
    return StyleBible(palette=list(message.palette), look=message.look, lighting=message.lighting,
                      camera=message.camera, atmosphere=message.atmosphere)
