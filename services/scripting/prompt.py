"""The prompts of both pipelines, rendered from the templates in prompts/:

- script_prompt.md.j2 (CLAP pipeline): labels, segments and the person's wishes;
- story_prompt.md.j2 (LALM pipeline): the segments' times and the person's wishes, sent with the song;
- story_to_scenes.md.j2 (LALM pipeline): the story told, broken into one scene per segment.

Every writer saves what it renders (prompt.txt, scenes_prompt.txt); LLM writers send exactly this
text. The person's text, and the story a model wrote from it, go in as data between tags; they
are cleaned first so that they can neither close their tag nor open another one, and cut to a
length limit, so the rules after them always reach the model intact.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from services.common.artifacts import LabelGroup, Labels, Segment, Segmentation
from services.common.errors import InvalidInputError
from services.common.settings import PROMPTS_DIR
from services.common.stage_api import ScriptInputs
from services.scripting.label_sets import LabelSets

PROMPT_TEMPLATE = "script_prompt.md.j2"
STORY_TEMPLATE = "story_prompt.md.j2"
SCENES_TEMPLATE = "story_to_scenes.md.j2"
# Characters of user text kept per field: enough for a paragraph of story, not for a second prompt.
USER_TEXT_LIMITS = {"story": 1500, "characters": 500, "style": 500}
TOLD_STORY_LIMIT = 6000  # an audio model's story: 400 words asked, room for a verbose model
# A segment's label is shown when it scores at least this, or is its group's best: weaker ones are noise
# that lengthens the prompt (and a small model's reading time) without changing the scene.
STRONG_LABEL_SCORE = 0.25
TRUNCATION_MARK = " [cut: too long]"
SEGMENT_GROUPS = ("instrumental_intensity", "prominent_elements", "dynamic_shift", "rhythmic_function")
TRACK_GROUPS = ("tempo_range", "mood", "visual_style", "genre")

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Angle brackets and their look-alikes become single guillemets: no tag can be written.
_BRACKETS = str.maketrans({"<": "‹", "＜": "‹", "﹤": "‹", "〈": "‹",
                           ">": "›", "＞": "›", "﹥": "›", "〉": "›"})


def render_prompt(labels: Labels, segmentation: Segmentation, inputs: ScriptInputs,
                  prompts_dir: Path = PROMPTS_DIR) -> str:
    """The prompt for `labels` of `segmentation`; fails loudly on any placeholder left unfilled."""
    pairs = paired_segments(labels, segmentation)
    label_sets = _label_sets(prompts_dir)
    style = label_sets.style_for(labels)
    context = {
        "genre": _top_text(labels, "genre"),
        "voice": label_sets.voice_for(labels),
        "analyzer": labels.analyzer,
        "n_scenes": len(pairs),
        "track_groups": [_group_view(name, labels.track[name]) for name in _ordered(labels.track, TRACK_GROUPS)],
        "segments": [
            {
                "index": segment.index,
                "start": _clock(segment.start),
                "end": _clock(segment.end),
                "duration": f"{segment.duration:.1f}",
                "groups": [_group_view(name, groups[name]) for name in _ordered(groups, SEGMENT_GROUPS)],
            }
            for segment, groups in pairs
        ],
        "mood": _top_text(labels, "mood"),
        "visual_style": _top_text(labels, "visual_style"),
        "palette": ", ".join(style.palette),
        "lighting": style.lighting,
        "atmosphere": style.atmosphere,
        **_user_context(inputs),
    }
    return render_template(PROMPT_TEMPLATE, prompts_dir, **context)


def render_story_prompt(segmentation: Segmentation, inputs: ScriptInputs, prompts_dir: Path = PROMPTS_DIR) -> str:
    """The LALM pipeline's prompt, sent with the song: tell the video's story."""
    return render_template(STORY_TEMPLATE, prompts_dir, duration=_clock(segmentation.song_duration),
                           n_scenes=len(segmentation.segments), segments=_timeline(segmentation),
                           **_user_context(inputs))


def render_scenes_prompt(story: str, segmentation: Segmentation, inputs: ScriptInputs,
                         prompts_dir: Path = PROMPTS_DIR) -> str:
    """The LALM pipeline's second prompt: the told story into one scene per segment."""
    if not segmentation.segments:
        raise InvalidInputError("the segmentation has no segments")
    return render_template(SCENES_TEMPLATE, prompts_dir, story=clean_user_text(story, TOLD_STORY_LIMIT),
                           n_scenes=len(segmentation.segments), segments=_timeline(segmentation),
                           **_user_context(inputs))


def render_template(name: str, prompts_dir: Path = PROMPTS_DIR, **context: Any) -> str:
    """prompts/`name` rendered; fails loudly on any placeholder left unfilled."""
    return _environment(prompts_dir).get_template(name).render(context)


def _user_context(inputs: ScriptInputs) -> dict[str, str]:
    return {f"user_{name}": clean_user_text(getattr(inputs, name), limit) for name, limit in USER_TEXT_LIMITS.items()}


def _timeline(segmentation: Segmentation) -> list[dict[str, Any]]:
    return [{"index": s.index, "start": _clock(s.start), "end": _clock(s.end), "duration": f"{s.duration:.1f}"}
            for s in segmentation.segments]


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


@lru_cache(maxsize=4)
def _label_sets(prompts_dir: Path) -> LabelSets:
    return LabelSets(prompts_dir)


def _ordered(groups: dict[str, LabelGroup], known: tuple[str, ...]) -> list[str]:
    """The known groups in their usual order, then any others an analyser added."""
    return [g for g in known if g in groups] + sorted(g for g in groups if g not in known)


def _group_view(name: str, group: LabelGroup) -> dict[str, Any]:
    labels = "; ".join(f'"{x.label}" {x.score:.2f}' for x in group.labels) or "unknown"
    strong = [x for i, x in enumerate(group.labels) if i == 0 or x.score >= STRONG_LABEL_SCORE]
    return {"title": name.replace("_", " "), "labels": labels, "note": group.note,
            "strong": "; ".join(f'"{x.label}" {x.score:.2f}' for x in strong) or "unknown"}


def _top_text(labels: Labels, group: str) -> str:
    found = labels.track.get(group)
    return (found.top() if found else None) or "not known"


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}"
