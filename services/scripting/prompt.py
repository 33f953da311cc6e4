"""The prompts of both pipelines, rendered from the templates in prompts/:

- plan_prompt.md.j2 (CLAP pipeline): the track's labels, each section's, and the person's wishes;
- story_prompt.md.j2 (LALM pipeline): the segments' times and the person's wishes, sent with the song;
- cascade_story_prompt.md.j2 (LALM pipeline, "cascade" storyteller): what the analysis heard (labels,
  lyrics), part by part of the song, and the person's wishes, for a text LLM to tell the story from;
- story_plan_prompt.md.j2 (LALM pipeline): the story told, made into the plan of the video;
- section_prompt.md.j2 (both): the plan, one section's segments (and their labels), the scene before it.

Every writer saves what it renders (prompt.txt, scenes_prompt.txt); LLM writers send exactly this
text. The person's text, and what a model wrote from it (a story, a plan), go in as data between
tags; they are cleaned first so that they can neither close their tag nor open another one, and
cut to a length limit, so the rules after them always reach the model intact.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from services.common.artifacts import LabelGroup, Labels, Lyrics, Segment, Segmentation
from services.common.errors import InvalidInputError, StageFailedError
from services.common.settings import PROMPTS_DIR
from services.common.stage_api import ScriptInputs
from services.common.timing import clock
from services.scripting.label_sets import LabelSets
from services.scripting.plan import SECTIONS_PER_PLAN_REPLY, Plan
from services.scripting.sections import SongSection

PLAN_TEMPLATE = "plan_prompt.md.j2"
STORY_TEMPLATE = "story_prompt.md.j2"
CASCADE_STORY_TEMPLATE = "cascade_story_prompt.md.j2"
STORY_PLAN_TEMPLATE = "story_plan_prompt.md.j2"
SECTION_TEMPLATE = "section_prompt.md.j2"
DIRECTION_FILE = "direction.yaml"
# Characters of user text kept per field: enough for a paragraph of story, not for a second prompt.
USER_TEXT_LIMITS = {"story": 1500, "characters": 500, "style": 500}
TOLD_STORY_LIMIT = 6000  # an audio model's story: 400 words asked, room for a verbose model
PLAN_TEXT_LIMIT = 400  # one field of a plan (a line of story, a character): the schema allows 300
SECTION_WORDS_LIMIT = 600  # the words sung in one section of the song (8 segments of a fast rap: ~450)
INSTRUMENTS_SHOWN = 4  # the instruments and voices heard most across the song, for the story
# An instrument label this sure or more counts as heard: musicnn's scores are independent tag
# probabilities, and a segment's second-best instrument is often one at 0.05.
INSTRUMENT_HEARD_SCORE = 0.3
TRUNCATION_MARK = " [cut: too long]"
# The song's words (lyrics.json), shown as data: all of a clip's in its section prompt (a fast rap sings
# ~25 words in a 7 s clip), and the first few of each section in the plan prompt, where every section's
# line is read at once.
SUNG_CLIP_LIMIT = 400
SUNG_PLAN_WORDS = 20
LALM_VOICE = "keep the story's voice and its literary flair"
TRACK_GROUPS = ("tempo_range", "mood", "visual_style", "genre")
# The segment groups whose labels have a picture (prompts/labels/*.yaml), in the order a section
# prompt shows them; the plan prompt shows the first two, as they run through each section.
PICTURED_GROUPS = ("rhythmic_function", "instrumental_intensity", "dynamic_shift", "prominent_elements")

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Angle brackets and their look-alikes become single guillemets: no tag can be written.
_BRACKETS = str.maketrans({"<": "‹", "＜": "‹", "﹤": "‹", "〈": "‹",
                           ">": "›", "＞": "›", "﹥": "›", "〉": "›"})


def render_plan_prompt(labels: Labels, segmentation: Segmentation, sections: Sequence[SongSection],
                       inputs: ScriptInputs, prompts_dir: Path = PROMPTS_DIR, lyrics: Lyrics | None = None) -> str:
    """The CLAP pipeline's plan prompt; fails loudly on any placeholder left unfilled. `lyrics`: the words
    sung, a few of each section shown as data."""
    pairs = paired_segments(labels, segmentation)
    sung = sung_by_segment(lyrics, segmentation)
    label_sets = _label_sets(prompts_dir)
    style = label_sets.style_for(labels)
    by_index = {segment.index: groups for segment, groups in pairs}
    context = {
        "genre": _top_text(labels, "genre"),
        "voice": label_sets.voice_for(labels),
        "analyzer": labels.analyzer,
        "n_scenes": len(pairs),
        "n_sections": len(sections),
        "first_reply_sections": SECTIONS_PER_PLAN_REPLY,
        "track_groups": [_group_view(name, labels.track[name]) for name in _ordered(labels.track, TRACK_GROUPS)],
        "sections": [_section_view(s, len(sections), _direction(prompts_dir), [by_index[i] for i in s.segment_indices],
                                   label_sets) for s in sections],
        "mood": _top_text(labels, "mood"),
        "visual_style": _top_text(labels, "visual_style"),
        "palette": ", ".join(style.palette),
        "lighting": style.lighting,
        "atmosphere": style.atmosphere,
        "sung_sections": _sung_sections(sung, sections),
        **_user_context(inputs),
    }
    return render_template(PLAN_TEMPLATE, prompts_dir, **context)


def render_story_prompt(segmentation: Segmentation, inputs: ScriptInputs, prompts_dir: Path = PROMPTS_DIR) -> str:
    """The LALM pipeline's prompt, sent with the song: tell the video's story."""
    return render_template(STORY_TEMPLATE, prompts_dir, duration=clock(segmentation.song_duration, 1),
                           n_scenes=len(segmentation.segments), segments=_timeline(segmentation.segments),
                           **_user_context(inputs))


def render_cascade_story_prompt(labels: Labels, lyrics: Lyrics | None, segmentation: Segmentation,
                                sections: Sequence[SongSection], inputs: ScriptInputs,
                                prompts_dir: Path = PROMPTS_DIR) -> str:
    """The "cascade" storyteller's prompt: what the listening models heard, section by section, for a text LLM."""
    pairs = paired_segments(labels, segmentation)
    label_sets = _label_sets(prompts_dir)
    by_index = {segment.index: groups for segment, groups in pairs}
    words = {index: clean_user_text(text, SECTION_WORDS_LIMIT)
             for index, text in section_words(sung_by_segment(lyrics, segmentation), sections).items()}
    views = [_section_view(s, len(sections), _direction(prompts_dir), [by_index[i] for i in s.segment_indices],
                           label_sets) | {"words": words.get(s.index, "")} for s in sections]
    return render_template(CASCADE_STORY_TEMPLATE, prompts_dir, duration=clock(segmentation.song_duration, 1),
                           analyzer=f"{labels.analyzer} analyser", track=_track_heard(labels), sections=views,
                           lyrics_known=lyrics is not None, sung=any(words.values()),
                           lyrics_source=lyrics.source if lyrics is not None else "", **_user_context(inputs))


def section_words(sung: dict[int, str], sections: Sequence[SongSection]) -> dict[int, str]:
    """The words sung in each section (from sung_by_segment), in order; '' where nobody sings. Not yet data:
    each prompt cleans and cuts them to its own limit."""
    return {section.index: " ".join(sung[i] for i in section.segment_indices if i in sung) for section in sections}


def _track_heard(labels: Labels) -> list[str]:
    """The whole track as heard: its best label per group, and the instruments and voices heard most."""
    heard = [f"{name.replace('_', ' ')}: {group.top()}" for name in _ordered(labels.track, TRACK_GROUPS)
             if (group := labels.track[name]).top()]
    instruments = Counter(label.label for segment in labels.segments
                          for label in (segment.groups.get("instruments") or LabelGroup([])).labels[:2]
                          if label.score >= INSTRUMENT_HEARD_SCORE)
    if instruments:
        heard.append("instruments and voices heard most: " +
                     ", ".join(name for name, _ in instruments.most_common(INSTRUMENTS_SHOWN)))
    return heard or ["nothing is known about the whole song"]


def render_story_plan_prompt(story: str, segmentation: Segmentation, sections: Sequence[SongSection],
                             inputs: ScriptInputs, prompts_dir: Path = PROMPTS_DIR) -> str:
    """The LALM pipeline's plan prompt: the told story made into the plan of the video."""
    if not segmentation.segments:
        raise InvalidInputError("the segmentation has no segments")
    return render_template(STORY_PLAN_TEMPLATE, prompts_dir, story=clean_user_text(story, TOLD_STORY_LIMIT),
                           n_scenes=len(segmentation.segments), n_sections=len(sections),
                           first_reply_sections=SECTIONS_PER_PLAN_REPLY,
                           sections=[_section_view(s, len(sections), _direction(prompts_dir)) for s in sections],
                           **_user_context(inputs))


class SectionPrompts:
    """Renders each section's prompt from the plan: what stays the same for a song is worked out once."""

    def __init__(self, segmentation: Segmentation, labels: Labels | None, *, story: str = "",
                 lyrics: Lyrics | None = None, prompts_dir: Path = PROMPTS_DIR):
        """`labels`: the CLAP pipeline's (each segment's are shown); None in the LALM pipeline, whose `story`
        is shown instead. `lyrics`: the words sung, each clip's shown as data."""
        self.prompts_dir = prompts_dir
        self.n_scenes = len(segmentation.segments)
        label_sets = _label_sets(prompts_dir)
        voice = label_sets.voice_for(labels) if labels is not None else LALM_VOICE
        groups = {s.index: g for s, g in paired_segments(labels, segmentation)} if labels is not None else {}
        direction = _direction(prompts_dir)
        self.shot_list = direction.shots
        self.shots = {s.index: direction.shot(s.index) for s in segmentation.segments}
        sung = sung_by_segment(lyrics, segmentation)
        self.segments = {s.index: {**_timeline([s])[0], "shot": self.shots[s.index],
                                   "labels": _segment_pictures(groups.get(s.index), label_sets),
                                   "sung": clean_user_text(sung.get(s.index, ""), SUNG_CLIP_LIMIT)}
                         for s in segmentation.segments}
        self.common = {"voice": voice, "story": clean_user_text(story, TOLD_STORY_LIMIT) if story else "",
                       "with_labels": labels is not None}

    def __call__(self, plan: Plan, section: SongSection) -> str:
        def told(index: int) -> str:
            """A neighbouring section as the plan tells it, '' past either end."""
            if not 0 <= index < len(plan.sections):
                return ""
            return f"at {_data(plan.sections[index].place)}: {_data(plan.sections[index].action)}"

        this = plan.sections[section.index]
        segments = [self.segments[i] for i in section.segment_indices]
        return render_template(
            SECTION_TEMPLATE, self.prompts_dir, **self.common, n_scenes=self.n_scenes, n_sections=len(plan.sections),
            title=_data(plan.title), style={k: _data(v) for k, v in vars(plan.style).items() if isinstance(v, str)},
            characters=[{"name": _data(c.name), "description": _data(c.description)} for c in plan.characters],
            section={"index": section.index, "start": clock(section.start, 1), "end": clock(section.end, 1),
                     "place": _data(this.place), "action": _data(this.action)},
            previous_section=told(section.index - 1),
            next_section=told(section.index + 1), segments=segments, sung=any(s["sung"] for s in segments))


def sung_by_segment(lyrics: Lyrics | None, segmentation: Segmentation) -> dict[int, str]:
    """The words sung in each vocal segment, by segment index ({} without lyrics); InvalidInputError when
    lyrics.json was made for other segments than segments.json's."""
    if lyrics is None:
        return {}
    found = [s.index for s in lyrics.segments]
    expected = [s.index for s in segmentation.segments]
    if found != expected:
        raise InvalidInputError(f"the lyrics are for segments {_indices(found)}, the segmentation has segments "
                                f"{_indices(expected)}: analyse the song's lyrics with its segments")
    return {s.index: s.text for s in lyrics.segments if s.vocal and s.text}


def lyric_lines(lyrics: Lyrics | None) -> tuple[str, ...]:
    """The song's words, segment by segment in the order sung, for the rule that no scene quotes them."""
    return tuple(s.text for s in lyrics.segments if s.vocal and s.text) if lyrics is not None else ()


def _sung_sections(sung: dict[int, str], sections: Sequence[SongSection]) -> list[dict[str, Any]]:
    """Each section in which words are sung, with its first SUNG_PLAN_WORDS words, as data."""
    views = []
    by_section = section_words(sung, sections)
    for section in sections:
        words = by_section[section.index].split()
        if words:
            shown = " ".join(words[:SUNG_PLAN_WORDS]) + (" …" if len(words) > SUNG_PLAN_WORDS else "")
            views.append({"index": section.index, "words": clean_user_text(shown, SUNG_CLIP_LIMIT)})
    return views


def _indices(indices: list[int]) -> str:
    return f"{indices[0]}-{indices[-1]} ({len(indices)})" if len(indices) > 6 else str(indices)


def segment_roles(labels: Labels, prompts_dir: Path = PROMPTS_DIR) -> list[str]:
    """Each segment's role in the song (its best rhythmic function label's id), '' where not known."""
    label_sets = _label_sets(prompts_dir)
    roles = []
    for segment in labels.segments:
        group = segment.groups.get("rhythmic_function")
        roles.append(label_sets.label_id("rhythmic_function", group.top() if group else None) or "")
    return roles


def render_template(name: str, prompts_dir: Path = PROMPTS_DIR, **context: Any) -> str:
    """prompts/`name` rendered; fails loudly on any placeholder left unfilled."""
    return _environment(prompts_dir).get_template(name).render(context)


def _user_context(inputs: ScriptInputs) -> dict[str, str]:
    return {f"user_{name}": clean_user_text(getattr(inputs, name), limit) for name, limit in USER_TEXT_LIMITS.items()}


def _timeline(segments: Sequence[Segment]) -> list[dict[str, Any]]:
    return [{"index": s.index, "start": clock(s.start, 1), "end": clock(s.end, 1), "duration": f"{s.duration:.1f}"}
            for s in segments]


def _data(text: str) -> str:
    """A field a model wrote, as data inside a tag (a plan is written from the person's text)."""
    return clean_user_text(text, PLAN_TEXT_LIMIT)


def clean_user_text(text: str, limit: int) -> str:
    """The person's text as safe data: no control characters, no angle brackets, at most `limit` characters."""
    text = _CONTROL_CHARS.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = text.translate(_BRACKETS).strip()
    if len(text) > limit:
        text = text[:limit].rstrip() + TRUNCATION_MARK
    return text


def paired_segments(labels: Labels, segmentation: Segmentation) -> list[tuple[Segment, dict[str, LabelGroup]]]:
    """Each segment with its labels; raises InvalidInputError if labels.json and segments.json disagree."""
    segment_indices = [s.index for s in segmentation.segments]
    label_indices = [s.index for s in labels.segments]
    if not segment_indices:
        raise InvalidInputError("the segmentation has no segments")
    if segment_indices != label_indices:
        raise InvalidInputError(
            f"the labels are for segments {label_indices}, the segmentation has segments {segment_indices}")
    return [(segment, labelled.groups) for segment, labelled in zip(segmentation.segments, labels.segments)]


def _section_view(section: SongSection, n_sections: int, direction: Direction,
                  groups: Sequence[dict[str, LabelGroup]] = (), label_sets: LabelSets | None = None) -> dict[str, Any]:
    """A section for the plan prompt: its times and size, its story beat, and (CLAP) what its segments'
    labels show, as they run through it: its part in the story, and how much moves."""
    summary = _section_summary(groups, label_sets) if label_sets is not None else []
    return {"index": section.index, "start": clock(section.start, 1), "end": clock(section.end, 1),
            "size": section.size, "summary": summary, "beat": direction.beat(section.index, n_sections)}


def _section_summary(groups: Sequence[dict[str, LabelGroup]], label_sets: LabelSets) -> list[str]:
    summary = []
    for group in PICTURED_GROUPS[:2]:
        pictures = [label_sets.picture(group, g[group].top()) for g in groups if g.get(group)]
        pictures = [p for p in pictures if p]
        steps = [p for i, p in enumerate(pictures) if i == 0 or p != pictures[i - 1]]
        if len(steps) > 3:  # back and forth: what it mostly is says more than the sequence
            summary.append("mostly " + " or ".join(p for p, _ in Counter(pictures).most_common(2)))
        elif steps:
            summary.append(", then ".join(steps))
    return summary


def _segment_pictures(groups: dict[str, LabelGroup] | None, label_sets: LabelSets) -> str:
    """What a segment's best labels become on screen: 'one or two subjects, little motion; the camera holds
    steady; long flowing lines and curves'. The labels themselves name sounds, which a small model copies
    into its scenes. The segment's part in the story (its rhythmic function) is left to the plan's section
    lines: it is mostly the same all through a section, and every token here is read for every section."""
    if not groups:
        return ""
    pictures = [label_sets.picture(group, groups[group].top()) for group in PICTURED_GROUPS[1:] if group in groups]
    return "; ".join(p for p in pictures if p)


@lru_cache(maxsize=4)
def _environment(prompts_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(prompts_dir),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # plain text for a model, not HTML
    )


@dataclass(frozen=True)
class Direction:
    """prompts/direction.yaml: the story beats spread over the sections, the shots dealt to the segments."""

    story_beats: tuple[str, ...]
    shots: tuple[str, ...]

    def beat(self, section: int, sections: int) -> str:
        return self.story_beats[round(section * (len(self.story_beats) - 1) / max(1, sections - 1))]

    def shot(self, segment: int) -> str:
        return self.shots[segment % len(self.shots)]


@lru_cache(maxsize=4)
def _direction(prompts_dir: Path) -> Direction:
    path = prompts_dir / DIRECTION_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        direction = Direction(*(tuple(str(x).strip() for x in raw[key]) for key in ("story_beats", "shots")))
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise StageFailedError(f"{path} is not a list of story beats and shots ({exc})") from None
    if not all(direction.story_beats) or not all(direction.shots) or not direction.story_beats or not direction.shots:
        raise StageFailedError(f"{path} needs at least one story beat and one shot, none empty")
    return direction


@lru_cache(maxsize=4)
def _label_sets(prompts_dir: Path) -> LabelSets:
    return LabelSets(prompts_dir)


def _ordered(groups: dict[str, LabelGroup], known: tuple[str, ...]) -> list[str]:
    """The known groups in their usual order, then any others an analyser added."""
    return [g for g in known if g in groups] + sorted(g for g in groups if g not in known)


def _group_view(name: str, group: LabelGroup) -> dict[str, Any]:
    labels = "; ".join(f'"{x.label}" {x.score:.2f}' for x in group.labels) or "unknown"
    return {"title": name.replace("_", " "), "labels": labels}


def _top_text(labels: Labels, group: str) -> str:
    found = labels.track.get(group)
    return (found.top() if found else None) or "not known"
