"""The scene rules no grammar can hold (prompts/scene_rules.yaml): what they refuse, what they let
through, and the near-duplicate measure. The refused sentences are ones the local model wrote."""

from __future__ import annotations

import shutil

import pytest

from services.common.errors import StageFailedError
from services.common.scene_rules import load_scene_rules, names_of
from services.common.settings import PROMPTS_DIR

RULES = load_scene_rules()


@pytest.mark.parametrize(("scene", "rule", "words"), [
    ("Ada and Ben walk on as they reach the climax of the song.", "sound", ["climax", "song"]),
    ("A crowd sways, listening to live music in the park.", "sound", ["listening", "music"]),
    ("Birds rest on a wire, the sound of birds chirping all around.", "sound", ["sound", "chirping"]),
    ("Some cars pass by, creating a rhythmic backdrop for their walk.", "sound", ["rhythmic"]),
    ("A woman sings on a rooftop at dusk.", "sound", ["sings"]),
    ("A neon sign that reads OPEN glows above the diner door.", "text on screen", ["sign that reads"]),
    ("Subtitles roll over a black frame.", "text on screen", ["Subtitles"]),
    ("Ada walks along the beach again, watching the tide.", "other scenes", ["again"]),
    ("Ben continues walking down the street at night.", "other scenes", ["continues"]),
    ("The scene fades as the camera pulls away from the pier.", "other scenes", ["scene"]),
    ("Ada heads back to the lighthouse as the storm breaks.", "other scenes", ["heads back"]),
])
def test_a_scene_that_breaks_a_rule_is_refused_with_the_words_named(scene, rule, words):
    problems = RULES.problems(scene)
    reason = next(r.reason for r in RULES.word_rules if r.name == rule)
    assert any(p.endswith(reason) and all(repr(w) in p for w in words) for p in problems), problems


@pytest.mark.parametrize("scene", [
    "A drummer hits the drums under red stage lights in a smoky club.",
    "Ada stands with her back to the camera on a windswept pier at dusk.",
    "A quiet street glistens with rain under orange streetlamps at night.",
    "Ben reads a worn paperback on a night train crossing the snowy plain.",
    "Waves break white against the black rocks below the lighthouse.",
])
def test_what_a_camera_can_film_passes(scene):
    assert RULES.problems(scene) == []


@pytest.mark.parametrize(("a", "b", "alike"), [
    # the same shot with a clause added or a word changed
    ("Lily and Ben walk along the beach, admiring the beauty of nature.",
     "Lily is walking along the beach, admiring the beauty of nature.", True),
    ("Ben notices Lily's expression and approaches her, leading her to the bench to chat about their plans.",
     "Ben notices Lily's expression and approaches her, leading her to the park to chat about their plans as "
     "they enjoy the warm atmosphere of the park.", True),
    ("A red kite rises over the harbour.", "a red kite  rises over the harbour.", True),
    # the same characters and place, another moment
    ("Lily and Ben sip coffee at a cozy café by the fire.",
     "Lily and Ben stand on a cliff overlooking the ocean at sunset.", False),
    ("Ada climbs the spiral stairs of the lighthouse at dusk.",
     "Ada lights the great lamp at the top of the lighthouse.", False),
])
def test_near_duplicates_are_the_same_shot_not_the_same_characters(a, b, alike):
    names = names_of(["Lily", "Ben", "Ada"])
    assert RULES.near_duplicate(a, b, names) is alike


def test_a_broken_rules_file_is_named(tmp_path):
    shutil.copytree(PROMPTS_DIR, tmp_path / "prompts")
    path = tmp_path / "prompts" / "scene_rules.yaml"
    path.write_text(path.read_text().replace("threshold: 0.7", "threshold: high"))
    with pytest.raises(StageFailedError, match="scene_rules.yaml is not a valid rules file"):
        load_scene_rules(tmp_path / "prompts")


def test_the_template_writers_phrases_keep_the_scene_rules():
    """The template writer is held to the rules the LLM writers are: every phrase it may put into a scene or a
    style (the review found 'rhythm' in three of them)."""
    from services.scripting import template_writer

    rules = load_scene_rules()
    phrases = [p for table in template_writer.PHRASES_BY_GROUP.values() for value in table.values()
               for p in ((value,) if isinstance(value, str) else value)]
    assert len(phrases) > 30
    broken = {p: rules.problems(p, style=True) for p in phrases if rules.problems(p, style=True)}
    assert not broken
