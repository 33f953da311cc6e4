"""The plan of a video, written before its scenes: title, style bible, characters, and one line of
story per section of the song (plan.json, plan.txt).

The scenes of each section are written from it, so it is what holds a long script together. A
person may edit plan.json (a character's clothes, where a section's story goes) and rerun: a plan
whose prompt is unchanged is kept as it is, edits included, and the scenes are written again from
it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.common.artifacts import Character, StyleBible
from services.common.timing import clock
from services.scripting.sections import SongSection

# Sections the plan's first reply writes, and each reply after it: the 1.5B model writing 13 sections in
# one list planned 3 to 6 places and actions, then the same ones over again (bench/SCRIPTING.md, "Plans").
SECTIONS_PER_PLAN_REPLY = 4

@dataclass(frozen=True)
class PlannedSection:
    index: int
    first_segment: int
    last_segment: int
    start: float
    end: float
    role: str  # what the section is in the song (intro, groove, ...); '' when not known
    place: str  # where this part of the story happens
    action: str  # one sentence: what is seen happening there

    @classmethod
    def of(cls, section: SongSection, place: str, action: str) -> PlannedSection:
        return cls(section.index, section.first, section.last, section.start, section.end, section.roles_text(),
                   place, action)


@dataclass
class Plan:
    title: str
    style: StyleBible
    characters: list[Character]
    sections: list[PlannedSection]
    writer: str = ""
    model: str = ""
    # The digest of the prompt it answered: a rerun whose plan prompt is the same keeps this plan.
    prompt_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "style": {"palette": self.style.palette, "look": self.style.look, "lighting": self.style.lighting,
                      "camera": self.style.camera, "atmosphere": self.style.atmosphere},
            "characters": [{"name": c.name, "description": c.description} for c in self.characters],
            "sections": [{"index": s.index, "segments": [s.first_segment, s.last_segment],
                          "start": round(s.start, 3), "end": round(s.end, 3), "role": s.role, "place": s.place,
                          "action": s.action}
                         for s in self.sections],
            "writer": self.writer,
            "model": self.model,
            "prompt_sha256": self.prompt_sha256,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        style = d["style"]
        return cls(
            title=str(d["title"]),
            style=StyleBible(palette=[str(c) for c in style["palette"]], look=str(style["look"]),
                             lighting=str(style["lighting"]), camera=str(style["camera"]),
                             atmosphere=str(style["atmosphere"])),
            characters=[Character(str(c["name"]), str(c["description"])) for c in d.get("characters", [])],
            sections=[PlannedSection(int(s["index"]), int(s["segments"][0]), int(s["segments"][1]),
                                     float(s["start"]), float(s["end"]), str(s.get("role", "")), str(s["place"]),
                                     str(s["action"]))
                      for s in d["sections"]],
            writer=str(d.get("writer", "")),
            model=str(d.get("model", "")),
            prompt_sha256=str(d.get("prompt_sha256", "")),
        )

    def to_text(self) -> str:
        lines = [self.title, "", f"Palette: {', '.join(self.style.palette)}", f"Look: {self.style.look}",
                 f"Lighting: {self.style.lighting}", f"Camera: {self.style.camera}",
                 f"Atmosphere: {self.style.atmosphere}", ""]
        if self.characters:
            lines += ["Characters:"] + [f"  {c.name}: {c.description}" for c in self.characters] + [""]
        lines.append(f"The story in {len(self.sections)} sections:")
        for s in self.sections:
            role = f", {s.role}" if s.role else ""
            lines.append(f"  {s.index:3d}  {clock(s.start)} - {clock(s.end)}  segments {s.first_segment}-"
                         f"{s.last_segment}{role}")
            lines.append(f"       {s.place}: {s.action}")
        return "\n".join(lines) + "\n"

