"""The `template` writer: a deterministic script built from the labels and the seed, with no model.

It is a preview of what the pipeline will film, not AI authorship: every scene is one sentence
assembled from phrase tables keyed by the segment's top labels -- camera from the dynamic shift,
subject from the instrumental intensity, action from the rhythmic function, setting from the
track's mood, a visual motif from the prominent element. The style bible comes from the track's
visual style (prompts/labels/visual_style.yaml). The seed picks among the phrases; each table is
dealt like a shuffled deck, so neighbouring scenes differ, and the same labels and seed always
give the same script. It follows no story: the person's story cues need an LLM writer. Characters
the person described become one fixed character; their style wishes are added to the look. It
does not use the lyrics: turning words into pictures of one's own needs a writer that reads them
(the plan prompt in prompt.txt still shows them).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from services.common.artifacts import Character, LabelGroup, Scene, Script, StyleBible
from services.common.errors import StageFailedError
from services.common.settings import PROMPTS_DIR
from services.scripting.label_sets import LabelSets
from services.scripting.prompt import USER_TEXT_LIMITS, clean_user_text, paired_segments
from services.scripting.writer import ScriptTask, ScriptWriter

PROTAGONIST = "the protagonist"
MAX_DRAWS = 50  # redraws allowed to find a sentence not used yet

CAMERA_BY_SHIFT = {
    "building": ("In a slow push-in,", "As the camera cranes slowly upward,", "In an accelerating tracking shot,"),
    "steady": ("In a steady wide shot,", "In a smooth sideways tracking shot,", "In a still, centred frame,"),
    "dropping": ("As the camera pulls back,", "In a slow downward tilt,", "As the camera eases away,"),
    "burst": ("In a sudden whip pan,", "In a fast handheld rush,", "In a quick snap zoom,"),
    "fading": ("As the camera drifts away,", "As the frame slowly dims,", "In a long, receding shot,"),
}
SUBJECT_BY_INTENSITY = {
    "soft": ("a lone figure", "a single paper lantern", "a small rowing boat", "a white bird", "a child with a kite"),
    "moderate": ("a cyclist", "a pair of dancers", "a flock of birds", "a night train", "a group of friends"),
    "intense": ("a crowd of dancers", "a roaring motorbike", "a swarm of sparks", "a herd of galloping horses",
                "a troupe of acrobats"),
}
ACTION_BY_FUNCTION = {
    "intro": ("comes into view", "appears out of the distance", "emerges slowly from the shadows"),
    "groove": ("moves steadily forward", "sways back and forth, evenly", "circles slowly around"),
    "transition": ("crosses a long bridge", "passes through a glowing archway", "turns a sharp corner"),
    "climax": ("races forward at full speed", "spins wildly", "leaps high into the air"),
    "breakdown": ("stops and stands still", "slows down and comes to rest", "hovers quietly in place"),
    "outro": ("drifts away into the distance", "fades slowly toward the horizon", "settles as everything grows still"),
}
SETTING_BY_MOOD = {
    "calm": ("on a still lake at dawn", "in a quiet meadow", "along a misty shoreline", "in a sunlit garden"),
    "melancholic": ("on a rain-soaked street at night", "in an empty train station", "beside a fogged window",
                    "across a grey winter beach"),
    "uplifting": ("on a sunlit hilltop", "across a field of golden wheat", "above a city at sunrise",
                  "along a bright coastal road"),
    "energetic": ("in a neon-lit city street", "on a crowded dance floor", "along a desert highway",
                  "through a glowing tunnel"),
    "tense": ("in a dark industrial corridor", "beneath a stormy sky", "in an abandoned warehouse",
              "on a deserted rooftop at night"),
    "dreamy": ("among floating clouds", "in a field of glowing flowers", "beneath a violet sky full of stars",
               "inside a hall of drifting mirrors"),
}
MOTIF_BY_ELEMENT = {
    "percussive": ("with lights flashing at a steady pace", "as dust jumps up in regular pulses",
                   "with strobes beating across every surface"),
    "bass": ("as the ground trembles underneath", "with deep shadows rolling across the ground",
             "as heavy waves of air ripple the scenery"),
    "melodic": ("with ribbons of coloured light flowing through the air", "as soft lights drift through the air",
                "with long curving trails of light winding overhead"),
    "bright": ("with glittering sparks catching the light", "under a shower of sparkling points of light",
               "as tiny crystals glint in the air"),
    "noisy": ("through a haze of grain and static", "amid flickering, distorted light",
              "behind a veil of rough, crackling texture"),
}
CAMERA_STYLE_BY_TEMPO = {
    "slow": "long, slow takes with gentle camera moves",
    "moderate": "smooth, measured camera moves",
    "upbeat": "fluid tracking shots that glide with every movement",
    "fast": "quick, energetic handheld camera work",
}
PHRASES_BY_GROUP: dict[str, dict[str, Any]] = {
    "dynamic_shift": CAMERA_BY_SHIFT,
    "instrumental_intensity": SUBJECT_BY_INTENSITY,
    "rhythmic_function": ACTION_BY_FUNCTION,
    "mood": SETTING_BY_MOOD,
    "prominent_elements": MOTIF_BY_ELEMENT,
    "tempo_range": CAMERA_STYLE_BY_TEMPO,
}
# When a label is missing or not in this vocabulary (another analyser's label set).
FALLBACK_IDS = {
    "dynamic_shift": "steady",
    "instrumental_intensity": "moderate",
    "rhythmic_function": "groove",
    "prominent_elements": "melodic",
    "tempo_range": "moderate",
}


class TemplateWriter(ScriptWriter):
    name = "template"

    def __init__(self, prompts_dir: Path = PROMPTS_DIR, environ: Mapping[str, str] | None = None):
        super().__init__(environ)
        self.prompts_dir = prompts_dir
        self.label_sets: LabelSets | None = None

    def _load(self) -> None:
        label_sets = LabelSets(self.prompts_dir)
        for group, table in PHRASES_BY_GROUP.items():
            missing = sorted(set(label_sets.ids(group)) - set(table))
            if missing:
                raise StageFailedError(f"the template writer has no phrases for the {group} labels {missing}")
        self.label_sets = label_sets

    def write(self, task: ScriptTask) -> Script:
        if self.label_sets is None:
            raise StageFailedError("the template writer is not loaded")
        label_sets, labels = self.label_sets, task.labels

        def label_id(groups: dict[str, LabelGroup], group: str) -> str:
            return label_sets.label_id(group, _top(groups, group)) or FALLBACK_IDS[group]

        visual = label_sets.style_for(labels)
        mood = label_sets.label_id("mood", _top(labels.track, "mood")) or visual.mood
        wishes = clean_user_text(" ".join(task.inputs.style.split()), USER_TEXT_LIMITS["style"])
        style = StyleBible(
            palette=list(visual.palette),
            look=f"{visual.look}; {wishes}" if wishes else visual.look,
            lighting=visual.lighting,
            camera=CAMERA_STYLE_BY_TEMPO[label_id(labels.track, "tempo_range")],
            atmosphere=visual.atmosphere,
        )
        described = clean_user_text(" ".join(task.inputs.characters.split()), USER_TEXT_LIMITS["characters"])
        characters = [Character(PROTAGONIST, described)] if described else []

        deck = _Deck(random.Random(task.seed))
        scenes: list[Scene] = []
        used: set[str] = set()
        for segment, groups in paired_segments(labels, task.segmentation):
            intensity = label_id(groups, "instrumental_intensity")
            for _ in range(MAX_DRAWS):
                text = " ".join((
                    deck.draw("camera", CAMERA_BY_SHIFT[label_id(groups, "dynamic_shift")]),
                    PROTAGONIST if characters else deck.draw(f"subject-{intensity}", SUBJECT_BY_INTENSITY[intensity]),
                    deck.draw("action", ACTION_BY_FUNCTION[label_id(groups, "rhythmic_function")]),
                    deck.draw("setting", SETTING_BY_MOOD[mood]) + ",",
                    deck.draw("motif", MOTIF_BY_ELEMENT[label_id(groups, "prominent_elements")]) + ".",
                ))
                if text.lower() not in used:
                    break
            else:
                raise StageFailedError(f"the template writer found no new sentence for segment {segment.index}")
            used.add(text.lower())
            scenes.append(Scene(segment.index, text))
        title = f"{(_top(labels.track, 'mood') or visual.text).capitalize()}: a template storyboard"
        return Script(writer=self.name, title=title, style=style, characters=characters, scenes=scenes)


class _Deck:
    """Seeded draws from phrase tables, each dealt as a shuffled deck: no phrase repeats before all are used."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.piles: dict[tuple[str, Sequence[str]], list[str]] = {}
        self.last: dict[str, str] = {}

    def draw(self, table: str, phrases: Sequence[str]) -> str:
        pile = self.piles.setdefault((table, phrases), [])
        if not pile:
            pile.extend(phrases)
            self.rng.shuffle(pile)
            if len(pile) > 1 and pile[-1] == self.last.get(table):  # no repeat across a reshuffle
                pile[0], pile[-1] = pile[-1], pile[0]
        self.last[table] = pile.pop()
        return self.last[table]


def _top(groups: dict[str, LabelGroup], group: str) -> str | None:
    found = groups.get(group)
    return found.top() if found else None
