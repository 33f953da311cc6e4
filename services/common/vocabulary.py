"""The label vocabulary: the groups of labels every analyser scores and every writer reads, from prompts/labels/*.yaml.

The same files serve the `descriptors` analyser (rules keyed by label id) and the `clap` analyser
(it scores each label's text, put into its group's template, against the audio), so both produce
labels.json in one vocabulary.

The `musicnn` analyser scores the labels that name some of its tags (a label's `musicnn:` list,
e.g. `[mtt:piano]`; services/common/musicnn_tags.py lists them).

The files are written by people, so loading validates them and names the file and line of any
problem (a YAML syntax error, a missing or misspelt key, an empty group, a label id or text given
twice, a template without its `{}`, a musicnn tag that does not exist), as `LabelSetError`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.errors import StageFailedError
from services.common.musicnn_tags import ALL_TAGS as MUSICNN_TAGS
from services.common.settings import PROMPTS_DIR

LABELS_DIR = PROMPTS_DIR / "labels"

# The groups every vocabulary has, in the order labels.json lists them; a vocabulary may add others.
SEGMENT_GROUPS = ("instrumental_intensity", "prominent_elements", "dynamic_shift", "rhythmic_function")
TRACK_GROUPS = ("tempo_range", "mood", "visual_style", "genre")
SCOPES = ("segment", "track")
DEFAULT_TEMPLATE = "{}"  # the label text as it is

FILE_KEYS = {"group", "scope", "description", "template", "labels"}
MUSICNN_KEY = "musicnn"  # a label's musicnn tags: what the musicnn analyser scores it by
LABEL_ID = re.compile(r"[a-z][a-z0-9_]*")  # code keys on ids: keep them plain


class LabelSetError(StageFailedError):
    """A label set file that cannot be used; the message names the file and line."""


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
    template: str = DEFAULT_TEMPLATE  # the sentence a text encoder embeds, with {} for the label text

    def ids(self) -> list[str]:
        return [label.id for label in self.labels]

    def text(self, label_id: str) -> str:
        return self.by_id(label_id).text

    def by_id(self, label_id: str) -> LabelDef:
        for label in self.labels:
            if label.id == label_id:
                return label
        raise KeyError(f"{self.group} has no label {label_id!r}")

    def prompts(self) -> list[str]:
        """Every label's text in the group's template, in label order: what CLAP embeds."""
        return [self.template.replace("{}", label.text) for label in self.labels]


def load_vocabulary(directory: Path = LABELS_DIR) -> dict[str, LabelSet]:
    """Every label group, by name; raises LabelSetError if a group is missing, given twice or malformed."""
    paths = sorted(directory.glob("*.yaml"))
    if not paths:
        raise LabelSetError(f"{directory}: no label sets (*.yaml) there")
    sets: dict[str, LabelSet] = {}
    found_in: dict[str, Path] = {}
    for path in paths:
        label_set = parse_label_set(path)
        if label_set.group in sets:
            raise LabelSetError(f"{path}: group {label_set.group!r} is already defined in {found_in[label_set.group]}")
        sets[label_set.group] = label_set
        found_in[label_set.group] = path
    missing = [g for g in SEGMENT_GROUPS + TRACK_GROUPS if g not in sets]
    if missing:
        raise LabelSetError(f"label vocabulary in {directory} lacks the groups: {', '.join(missing)}")
    for group in SEGMENT_GROUPS + TRACK_GROUPS:
        expected = "segment" if group in SEGMENT_GROUPS else "track"
        if sets[group].scope != expected:
            raise LabelSetError(f"{found_in[group]}: group {group} must have scope {expected}")
    return sets


def groups_in_scope(vocabulary: dict[str, LabelSet], scope: str) -> list[str]:
    """The groups of one scope: the standard ones in their usual order, then any others by name."""
    standard = SEGMENT_GROUPS if scope == "segment" else TRACK_GROUPS
    extra = sorted(g for g, s in vocabulary.items() if s.scope == scope and g not in standard)
    return [g for g in standard if g in vocabulary] + extra


def parse_label_set(path: Path) -> LabelSet:
    """One label set file, validated; LabelSetError names the file and line of the first problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelSetError(f"{path}: cannot be read ({exc})") from exc
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise LabelSetError(f"{path}:1: the file is empty")
        return _label_set(path, loader, root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise LabelSetError(f"{where}: not valid YAML ({exc.problem or exc.context})") from exc
    except yaml.YAMLError as exc:
        raise LabelSetError(f"{path}: not valid YAML ({exc})") from exc
    finally:
        loader.dispose()


def _label_set(path: Path, loader: yaml.SafeLoader, root: yaml.Node) -> LabelSet:
    top = _mapping(path, root, "the file")
    unknown = [k for k in top if k not in FILE_KEYS]
    if unknown:
        raise _error(path, top[unknown[0]][0],
                     f"unknown key {unknown[0]!r}; a label set has: {', '.join(sorted(FILE_KEYS))}")
    for key in ("group", "scope", "labels"):
        if key not in top:
            raise _error(path, root, f"missing key {key!r}")

    group = _string(path, top["group"][1], "group")
    if not LABEL_ID.fullmatch(group):
        raise _error(path, top["group"][1], f"group {group!r}: use lowercase letters, digits and _")
    scope = _string(path, top["scope"][1], "scope")
    if scope not in SCOPES:
        raise _error(path, top["scope"][1], f"scope must be 'segment' or 'track', not {scope!r}")
    description = _string(path, top["description"][1], "description", allow_empty=True) if "description" in top else ""
    template = DEFAULT_TEMPLATE
    if "template" in top:
        template = _string(path, top["template"][1], "template")
        if template.count("{}") != 1 or any(brace in template.replace("{}", "") for brace in "{}"):
            raise _error(path, top["template"][1],
                         f"template {template!r} must hold exactly one {{}} (where the label text goes) "
                         "and no other braces")

    labels_node = top["labels"][1]
    if not isinstance(labels_node, yaml.SequenceNode):
        raise _error(path, labels_node, "labels must be a list of {id, text} entries")
    if not labels_node.value:
        raise _error(path, labels_node, f"group {group} has no labels")
    labels: list[LabelDef] = []
    first_line: dict[tuple[str, str], int] = {}
    for item in labels_node.value:
        entry = _mapping(path, item, "a label")
        for key in ("id", "text"):
            if key not in entry:
                raise _error(path, item, f"a label needs {key!r}")
        label_id = _string(path, entry["id"][1], "id")
        if not LABEL_ID.fullmatch(label_id):
            raise _error(path, entry["id"][1], f"label id {label_id!r}: use lowercase letters, digits and _")
        label_text = " ".join(_string(path, entry["text"][1], "text").split())
        for what, value in (("id", label_id), ("text", label_text)):
            node = entry[what][1]
            if (what, value) in first_line:
                raise _error(path, node, f"duplicate label {what} {value!r} (first on line {first_line[what, value]})")
            first_line[what, value] = node.start_mark.line + 1
        data = {key: loader.construct_object(value_node, deep=True)
                for key, (_, value_node) in entry.items() if key not in ("id", "text")}
        if MUSICNN_KEY in entry:
            data[MUSICNN_KEY] = _musicnn_tags(path, entry[MUSICNN_KEY][1])
        labels.append(LabelDef(label_id, label_text, data))
    return LabelSet(group, scope, description, tuple(labels), template)


def _musicnn_tags(path: Path, node: yaml.Node) -> list[str]:
    """A label's `musicnn:` list: known tag names ("mtt:piano", "msd:heavy metal"), each once."""
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise _error(path, node, f"{MUSICNN_KEY} must be a list of musicnn tags, e.g. [mtt:piano, msd:jazz]")
    tags: list[str] = []
    for item in node.value:
        tag = _string(path, item, f"a {MUSICNN_KEY} tag")
        if tag not in MUSICNN_TAGS:
            close = difflib.get_close_matches(tag, MUSICNN_TAGS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else " (see services/common/musicnn_tags.py)"
            raise _error(path, item, f"unknown musicnn tag {tag!r}: tags are mtt:<tag> or msd:<tag>{hint}")
        if tag in tags:
            raise _error(path, item, f"musicnn tag {tag!r} given twice for this label")
        tags.append(tag)
    return tags


def _mapping(path: Path, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """A mapping node's entries by key (key node, value node); a key given twice is an error."""
    if not isinstance(node, yaml.MappingNode):
        raise _error(path, node, f"{what} must be a mapping of keys to values")
    entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise _error(path, key_node, "keys must be plain words")
        key = str(key_node.value)
        if key in entries:
            first = entries[key][0].start_mark.line + 1
            raise _error(path, key_node, f"key {key!r} given twice (first on line {first})")
        entries[key] = (key_node, value_node)
    return entries


def _string(path: Path, node: yaml.Node, key: str, allow_empty: bool = False) -> str:
    # A plain scalar of any kind (a label "80s" or "2000" reads as text); lists and mappings are errors.
    if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
        raise _error(path, node, f"{key} must be text")
    value = str(node.value).strip()
    if not value and not allow_empty:
        raise _error(path, node, f"{key} is empty")
    return value


def _error(path: Path, node: yaml.Node, problem: str) -> LabelSetError:
    return LabelSetError(f"{path}:{node.start_mark.line + 1}: {problem}")
