"""The label vocabulary (prompts/labels/*.yaml): the shipped sets, and the errors a person gets for a broken file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.common.vocabulary import (
    LABELS_DIR,
    SEGMENT_GROUPS,
    TRACK_GROUPS,
    LabelSetError,
    groups_in_scope,
    load_vocabulary,
    parse_label_set,
)

GOOD = """\
group: colour
scope: track
description: test colours
template: "This is a sound of {}."
labels:
  - id: red
    text: red music
  - id: blue
    text: blue music
    extra: [1, 2]
"""


def write(tmp_path: Path, text: str, name: str = "colour.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shipped_vocabulary_loads_with_templates_for_clap():
    vocabulary = load_vocabulary()
    assert set(SEGMENT_GROUPS + TRACK_GROUPS) <= set(vocabulary)
    for name, label_set in vocabulary.items():
        assert label_set.labels, name
        if name != "visual_style":  # follows the mood; never embedded
            assert label_set.template.count("{}") == 1 and label_set.template != "{}", name
            assert all(prompt.startswith("This is a sound of") for prompt in label_set.prompts()), name
    # Rich enough for the paper's study: a jazz ballad, heavy metal, Irish folk, electronic music.
    genres = vocabulary["genre"].ids()
    assert {"jazz_ballad", "metal", "irish_folk", "electronic"} <= set(genres) and len(genres) >= 20
    instruments = vocabulary["instruments"].ids()
    assert {"fiddle", "tin_whistle", "distorted_guitar", "saxophone", "synthesizer", "female_vocals"} <= set(
        instruments)
    assert vocabulary["instruments"].scope == "segment"


def test_groups_in_scope_lists_the_standard_groups_first():
    vocabulary = load_vocabulary()
    assert groups_in_scope(vocabulary, "segment") == [*SEGMENT_GROUPS, "instruments"]
    assert groups_in_scope(vocabulary, "track") == list(TRACK_GROUPS)


def test_a_label_set_parses_with_its_template_and_extras(tmp_path):
    label_set = parse_label_set(write(tmp_path, GOOD))
    assert label_set.group == "colour" and label_set.scope == "track"
    assert label_set.ids() == ["red", "blue"]
    assert label_set.by_id("blue").data == {"extra": [1, 2]}
    assert label_set.prompts() == ["This is a sound of red music.", "This is a sound of blue music."]


def test_the_template_defaults_to_the_text_itself(tmp_path):
    label_set = parse_label_set(write(tmp_path, GOOD.replace('template: "This is a sound of {}."\n', "")))
    assert label_set.prompts() == ["red music", "blue music"]


@pytest.mark.parametrize("text, line, message", [
    (GOOD.replace("labels:\n", "labels: [oops\n"), 6, "not valid YAML (expected ',' or ']'"),
    (GOOD.replace("  - id: blue\n    text: blue music\n    extra: [1, 2]\n", "  - id: red\n    text: blue music\n"),
     8, "duplicate label id 'red' (first on line 6)"),
    (GOOD.replace("text: blue music", "text: red   music"), 9, "duplicate label text 'red music' (first on line 7)"),
    ("group: colour\nscope: track\nlabels: []\n", 3, "group colour has no labels"),
    ("group: colour\nscope: track\nlabels:\n", 3, "labels must be a list"),
    (GOOD.replace("scope: track", "scope: song"), 2, "scope must be 'segment' or 'track'"),
    (GOOD.replace("description:", "descripton:"), 3, "unknown key 'descripton'"),
    (GOOD.replace("group: colour\n", ""), 1, "missing key 'group'"),
    (GOOD.replace("scope: track\n", "scope: track\nscope: segment\n"), 3, "key 'scope' given twice (first on line 2)"),
    (GOOD.replace('"This is a sound of {}."', '"This is a sound of music."'), 4, "exactly one {}"),
    (GOOD.replace('"This is a sound of {}."', '"{} and {}"'), 4, "exactly one {}"),
    (GOOD.replace('"This is a sound of {}."', '"This is {a} sound of {}."'), 4, "no other braces"),
    (GOOD.replace("    text: blue music\n", ""), 8, "a label needs 'text'"),
    (GOOD.replace("    text: blue music\n", "    text:\n"), 9, "text must be text"),
    (GOOD.replace("id: blue", "id: Blue Sky"), 8, "label id 'Blue Sky'"),
    (GOOD.replace("  - id: red\n    text: red music\n", "  - red music\n"), 6, "a label must be a mapping"),
    ("- just\n- a list\n", 1, "the file must be a mapping"),
    ("", 1, "the file is empty"),
])
def test_a_broken_label_set_is_refused_with_its_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(LabelSetError) as caught:
        parse_label_set(path)
    assert str(caught.value).startswith(f"{path}:{line}: "), str(caught.value)
    assert message in str(caught.value)


def test_the_vocabulary_names_the_file_that_breaks_it(tmp_path):
    labels_dir = tmp_path / "labels"
    shutil.copytree(LABELS_DIR, labels_dir)
    genre = labels_dir / "genre.yaml"
    genre.write_text(genre.read_text().replace("{id: punk,", "{id: metal,"))
    with pytest.raises(LabelSetError, match=rf"{genre}:\d+: duplicate label id 'metal' \(first on line \d+\)"):
        load_vocabulary(labels_dir)


def test_a_vocabulary_must_have_every_standard_group_once(tmp_path):
    labels_dir = tmp_path / "labels"
    shutil.copytree(LABELS_DIR, labels_dir)
    shutil.copy(labels_dir / "mood.yaml", labels_dir / "mood_copy.yaml")
    with pytest.raises(LabelSetError, match=r"mood_copy.yaml: group 'mood' is already defined in .*mood.yaml"):
        load_vocabulary(labels_dir)
    (labels_dir / "mood_copy.yaml").unlink()
    (labels_dir / "genre.yaml").unlink()
    with pytest.raises(LabelSetError, match="lacks the groups: genre"):
        load_vocabulary(labels_dir)
    mood = labels_dir / "mood.yaml"
    mood.write_text(mood.read_text().replace("scope: track", "scope: segment"))
    shutil.copy(LABELS_DIR / "genre.yaml", labels_dir / "genre.yaml")
    with pytest.raises(LabelSetError, match="mood.yaml: group mood must have scope track"):
        load_vocabulary(labels_dir)
    with pytest.raises(LabelSetError, match="no label sets"):
        load_vocabulary(tmp_path / "empty")
