"""What the scripting stage reads of the label vocabulary (prompts/labels/*.yaml): label ids, what labels
become on screen, voices and visual styles.

labels.json carries label texts; writers key their choices on the stable ids behind them, and the
visual style labels carry the palette and look that the style bible starts from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.artifacts import LabelGroup, Labels
from services.common.errors import StageFailedError
from services.common.settings import PROMPTS_DIR
from services.common.vocabulary import load_vocabulary


@dataclass(frozen=True)
class VisualStyle:
    id: str
    text: str
    mood: str  # id of the mood this style belongs to
    palette: tuple[str, ...]  # hex colours, most important first
    look: str
    lighting: str
    atmosphere: str


class LabelSets:
    """Label text -> id for every group, and the visual styles, read once from `prompts_dir`/labels."""

    def __init__(self, prompts_dir: Path = PROMPTS_DIR):
        vocabulary = load_vocabulary(prompts_dir / "labels")
        self._ids = {group: {label.text: label.id for label in s.labels} for group, s in vocabulary.items()}
        try:
            self.styles = [
                VisualStyle(label.id, label.text, label.data["mood"], tuple(label.data["palette"]),
                            label.data["look"], label.data["lighting"], label.data["atmosphere"])
                for label in vocabulary["visual_style"].labels
            ]
        except KeyError as exc:
            raise StageFailedError(f"a visual style in {prompts_dir / 'labels'} lacks {exc}") from exc
        self._voices = {label.text: label.data.get("voice", "") for label in vocabulary["mood"].labels}
        self._pictures = {group: {label.text: str(label.data.get("picture", "")) for label in s.labels}
                          for group, s in vocabulary.items()}
        if not self.styles:
            raise StageFailedError(f"no visual styles in {prompts_dir / 'labels'}")
        unknown = sorted({s.mood for s in self.styles} - set(self.ids("mood")))
        if unknown:
            raise StageFailedError(f"visual styles name moods that are not mood labels: {unknown}")

    def voice_for(self, labels: Labels) -> str:
        """The narrative voice of the track's best mood (prompts/labels/mood.yaml), or a neutral one."""
        return self._voices.get(_top(labels, "mood") or "") or "vivid and concrete, true to the music"

    def picture(self, group: str, text: str | None) -> str:
        """What a label becomes on screen (its `picture`), '' for a label without one."""
        return self._pictures.get(group, {}).get(text or "", "")

    def ids(self, group: str) -> list[str]:
        return list(self._ids.get(group, {}).values())

    def label_id(self, group: str, text: str | None) -> str | None:
        """The id of a label text, or None when the text is not in this vocabulary."""
        return self._ids.get(group, {}).get(text or "")

    def style_for(self, labels: Labels) -> VisualStyle:
        """The track's best visual style; else the style of its best mood; else the first style."""
        by_text = {s.text: s for s in self.styles}
        for label in labels.track.get("visual_style", LabelGroup([])).labels:
            if label.label in by_text:
                return by_text[label.label]
        mood = self.label_id("mood", _top(labels, "mood"))
        return next((s for s in self.styles if s.mood == mood), self.styles[0])


def _top(labels: Labels, group: str) -> str | None:
    found = labels.track.get(group)
    return found.top() if found else None
