"""The label vocabulary: the groups of labels every analyser scores and every writer reads, from prompts/labels/*.yaml.

The same files serve the `descriptors` analyser (rules keyed by label id) and the `clap` analyser
(it scores each label's text against the audio), so both produce labels.json in one vocabulary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.errors import StageFailedError

# prompts/ holds what a person edits without touching code; images and pods mount it at MVGEN_PROMPTS_DIR.
PROMPTS_DIR = Path(os.environ.get("MVGEN_PROMPTS_DIR") or Path(__file__).resolve().parents[2] / "prompts")
LABELS_DIR = PROMPTS_DIR / "labels"

SEGMENT_GROUPS = ("instrumental_intensity", "prominent_elements", "dynamic_shift", "rhythmic_function")
TRACK_GROUPS = ("tempo_range", "mood", "visual_style", "genre")


@dataclass(frozen=True)
class LabelDef:
    id: str  # what code keys on
    text: str  # what labels.json, the prompt and CLAP see
    data: dict[str, Any] = field(default_factory=dict)  # group-specific extras (bpm bounds, palette)


@dataclass(frozen=True)
class LabelSet:
    group: str
    scope: str  # "segment" or "track"
    description: str
    labels: tuple[LabelDef, ...]

    def ids(self) -> list[str]:
        return [label.id for label in self.labels]

    def text(self, label_id: str) -> str:
        return self.by_id(label_id).text

    def by_id(self, label_id: str) -> LabelDef:
        for label in self.labels:
            if label.id == label_id:
                return label
        raise KeyError(f"{self.group} has no label {label_id!r}")


def load_vocabulary(directory: Path = LABELS_DIR) -> dict[str, LabelSet]:
    """Every label group, by name; raises StageFailedError if a group is missing or malformed."""
    sets: dict[str, LabelSet] = {}
    for path in sorted(directory.glob("*.yaml")):
        label_set = _parse(path)
        sets[label_set.group] = label_set
    missing = [g for g in SEGMENT_GROUPS + TRACK_GROUPS if g not in sets]
    if missing:
        raise StageFailedError(f"label vocabulary in {directory} lacks the groups: {', '.join(missing)}")
    return sets


def _parse(path: Path) -> LabelSet:
    try:
        raw = yaml.safe_load(path.read_text())
        labels = tuple(
            LabelDef(str(item["id"]), str(item["text"]),
                     {k: v for k, v in item.items() if k not in ("id", "text")})
            for item in raw["labels"]
        )
        label_set = LabelSet(str(raw["group"]), str(raw["scope"]), str(raw.get("description", "")), labels)
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise StageFailedError(f"{path}: not a label set ({exc})") from exc
    if label_set.scope not in ("segment", "track"):
        raise StageFailedError(f"{path}: scope must be 'segment' or 'track', not {label_set.scope!r}")
    for what, values in (("id", [x.id for x in labels]), ("text", [x.text for x in labels])):
        if len(set(values)) != len(values):
            raise StageFailedError(f"{path}: a label {what} appears twice")
    return label_set
