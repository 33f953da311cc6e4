"""The job's store as a sectioned writer's journal: the plan, each section's scenes, every prompt
and every reply are written as they come, so a run stopped or crashed mid-script keeps them, and
the next run resumes from them.

    prompt.txt     the plan prompt, then each section's prompt as it is sent (LALM: scenes_prompt.txt)
    response.txt   every reply with what it was for, the refused ones with why
    reasoning.txt  a reasoning model's thinking, apart
    plan.json      the plan (and plan.txt to read); a person may edit it and rerun
    sections.json  each finished section's scenes, with the digest of the prompt it answered

A run resumes when plan.json was written from the same plan prompt: the earlier prompts and
replies stay in front of the new ones, and every section whose prompt is unchanged keeps its scenes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidInputError
from services.common.store import ArtifactStore
from services.scripting.llm.transcript import Transcript
from services.scripting.plan import Plan
from services.scripting.sectioned import sha256


@dataclass(frozen=True)
class JournalKeys:
    prompt: str  # prompt.txt (scenes_prompt.txt in the LALM pipeline)
    response: str
    reasoning: str
    plan: str
    plan_text: str
    sections: str


class StoreJournal:
    def __init__(self, store: ArtifactStore, keys: JournalKeys, plan_prompt: str, reasoning_before: str = ""):
        """`reasoning_before`: thinking of this run that came before the plan (the LALM story's)."""
        self.store = store
        self.keys = keys
        self.transcript = Transcript()
        self._plan = self._read_plan()
        self.resuming = self._plan is not None and self._plan.prompt_sha256 == sha256(plan_prompt)
        self._sections: dict[int, dict[str, Any]] = self._read_sections() if self.resuming else {}
        self._prompts: list[str] = []
        self._reasoning_earlier = reasoning_before
        if self.resuming:
            self._prompts = [self._text(keys.prompt).rstrip()] if self._text(keys.prompt) else []
            self.transcript.earlier = self._text(keys.response)
            self._reasoning_earlier = self._text(keys.reasoning) + reasoning_before
        self.sections_kept = 0

    # --- ScriptJournal ------------------------------------------------------------------------------

    def saved_plan(self) -> Plan | None:
        return self._plan

    def save_plan(self, plan: Plan) -> None:
        self._plan = plan
        if self.keys.plan:
            self.store.put_text(self.keys.plan, json.dumps(plan.to_dict(), indent=2, ensure_ascii=False) + "\n")
        if self.keys.plan_text:
            self.store.put_text(self.keys.plan_text, plan.to_text())

    def saved_scenes(self, section: int, prompt_sha256: str) -> dict[int, str] | None:
        entry = self._sections.get(section)
        if entry is None or entry.get("prompt_sha256") != prompt_sha256:
            return None
        self.sections_kept += 1
        return {int(i): str(text) for i, text in entry["scenes"].items()}

    def save_scenes(self, section: int, prompt_sha256: str, scenes: dict[int, str]) -> None:
        self._sections[section] = {"index": section, "prompt_sha256": prompt_sha256,
                                   "scenes": {str(i): scenes[i] for i in sorted(scenes)}}
        if self.keys.sections:
            data = {"sections": [self._sections[i] for i in sorted(self._sections)]}
            self.store.put_text(self.keys.sections, json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    def save_prompt(self, part: str, prompt: str) -> None:
        self._prompts.append(f"===== {part}\n{prompt.rstrip()}")
        if self.keys.prompt:
            self.store.put_text(self.keys.prompt, "\n\n".join(self._prompts) + "\n")

    def save_transcript(self, transcript: Transcript) -> None:
        if self.keys.response and (transcript.attempts or transcript.earlier):
            self.store.put_text(self.keys.response, transcript.response_text())
        reasoning = "\n".join(x for x in (self._reasoning_earlier.rstrip(), transcript.reasoning_text()) if x)
        if self.keys.reasoning and reasoning:
            self.store.put_text(self.keys.reasoning, reasoning + "\n")

    # --- for the stage ---------------------------------------------------------------------------------

    def written_keys(self) -> dict[str, str]:
        """name -> key of every journal file this run left in the store."""
        names = {"prompt": self.keys.prompt, "response": self.keys.response, "reasoning": self.keys.reasoning,
                 "plan": self.keys.plan, "plan_text": self.keys.plan_text, "sections": self.keys.sections}
        return {name: key for name, key in names.items() if key and self.store.exists(key)}

    def info(self) -> dict[str, Any]:
        """Facts for the manifest: what was kept from an earlier run, and the digest of plan.json as it
        stands (the orchestrator reruns the stage when a person has edited it since)."""
        info: dict[str, Any] = {"resumed": self.resuming, "sections_kept": self.sections_kept}
        if self.keys.plan and self.store.exists(self.keys.plan):
            info["plan_sha256"] = hashlib.sha256(self.store.get_bytes(self.keys.plan)).hexdigest()
        return info

    def _read_plan(self) -> Plan | None:
        text = self._text(self.keys.plan)
        if not text:
            return None
        try:
            return Plan.from_dict(json.loads(text))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"{self.keys.plan} cannot be read ({exc}): fix it or delete it to plan anew") \
                from None

    def _read_sections(self) -> dict[int, dict[str, Any]]:
        text = self._text(self.keys.sections)
        try:
            return {int(s["index"]): s for s in json.loads(text)["sections"]} if text else {}
        except (KeyError, TypeError, ValueError):
            return {}  # a damaged record only costs rewriting its sections

    def _text(self, key: str) -> str:
        if not key:
            return ""
        try:
            return self.store.get_text(key)
        except KeyError:
            return ""

