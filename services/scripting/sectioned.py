"""Writing a script section by section: one plan call, then one call per section of the song.

    plan      title, style bible, characters, each section's place and action    → plan.json, plan.txt
    sections  each section's scenes, from the plan, its segments and the scene    → sections.json
              just before it; a section's repairs stay in that section
    script    the plan's style and characters with every section's scenes         → script.json

Why: a prompt holding a whole song grows by ~100 tokens a segment and its answer by ~50 a scene, so a
7-minute song needs a context a small CPU model does not have, reads slowly, and comes back with
repeats no repair removes; a vLLM server refuses it outright past its max_model_len. A section's
prompt is the same size whatever the song's length, and its first part (the rules and the plan) is
the same for every section, so a server's prompt cache reads it once.

Each section's prompt holds the plan's style and characters, and its own place and action with
those of the sections on either side: that is its continuity. (Shown the scene written just before
it, the 1.5B model copied it into its first scene.) So sections do not wait
for one another: `chat.parallel` are in flight together (vLLM batches them; llama.cpp has slots).

Nothing written is lost: the plan, each accepted section and every reply are saved as they arrive
(`ScriptJournal`), and a rerun resumes: a plan whose prompt is unchanged is kept (edited by a person
or not), and a section whose prompt is unchanged keeps its scenes. Editing plan.json therefore
rewrites the scenes that follow from it, and nothing upstream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from services.common.artifacts import Scene, Script
from services.common.errors import InvalidInputError, JobCancelledError
from services.common.scene_rules import SceneRules, names_of
from services.scripting.llm.chat import ChatModel
from services.scripting.llm.conversation import ScriptRepairError, SectionTurns, request_plan, section_problems
from services.scripting.llm.transcript import Transcript
from services.scripting.plan import Plan, PlannedSection
from services.scripting.prompt import SectionPrompts
from services.scripting.sections import SongSection
from services.scripting.validation import plan_problems

# (parts done, parts in all, what was just done): the plan and each section are one part each
ProgressCallback = Callable[[int, int, str], None]


class ScriptJournal(Protocol):
    """Where a sectioned writer keeps what it has, as it gets it (the stage: the job's store)."""

    def saved_plan(self) -> Plan | None: ...

    def save_plan(self, plan: Plan) -> None: ...

    def saved_scenes(self, section: int, prompt_sha256: str) -> dict[int, str] | None:
        """The scenes an earlier run wrote for `section` from the same prompt, or None."""

    def save_scenes(self, section: int, prompt_sha256: str, scenes: dict[int, str]) -> None: ...

    def save_prompt(self, part: str, prompt: str) -> None: ...

    def save_transcript(self, transcript: Transcript) -> None: ...


@dataclass(frozen=True)
class SectionedTask:
    sections: list[SongSection]
    plan_prompt: str
    section_prompts: SectionPrompts  # (plan, section) -> its prompt; each segment's shot
    seed: int
    lyric_lines: tuple[str, ...] = ()  # the song's words in the order sung: no scene may quote them


def write_sectioned(chat: ChatModel, task: SectionedTask, *, writer: str, max_repairs: int, rules: SceneRules,
                    journal: ScriptJournal, transcript: Transcript,
                    on_progress: ProgressCallback = lambda done, total, what: None,
                    is_cancelled: Callable[[], bool] = lambda: False) -> Script:
    """The script of `task`'s sections; `is_cancelled()` is asked before every request to the model."""
    def check_cancelled() -> None:
        if is_cancelled():
            raise JobCancelledError("the job was cancelled while its script was written")

    total = len(task.sections) + 1
    rules = rules.with_lyrics(task.lyric_lines)
    check_cancelled()
    plan = _plan(chat, task, writer=writer, max_repairs=max_repairs, rules=rules, journal=journal,
                 transcript=transcript)
    on_progress(1, total, "plan written")

    scenes: dict[int, str] = {}  # every scene kept so far, by segment index
    names = names_of([c.name for c in plan.characters])
    parallel = max(1, chat.parallel)
    done = 1
    for wave_start in range(0, len(task.sections), parallel):
        wave = task.sections[wave_start:wave_start + parallel]
        pending: list[tuple[SongSection, str, SectionTurns]] = []
        for section in wave:
            prompt = task.section_prompts(plan, section)
            digest = sha256(prompt)
            saved = journal.saved_scenes(section.index, digest)
            if saved is not None and set(saved) == set(section.segment_indices) and \
                    not section_problems(saved, section.segment_indices, scenes, rules, names):
                scenes.update(saved)
                done += 1
                on_progress(done, total, f"{_part(section)} kept from an earlier run")
                continue
            journal.save_prompt(_part(section), prompt)
            turns = SectionTurns(_part(section), prompt, section.segment_indices, task.seed + 1000 * section.index,
                                 {i: task.section_prompts.shots[i] for i in section.segment_indices},
                                 task.section_prompts.shot_list)
            pending.append((section, digest, turns))

        for _ in range(max_repairs + 1):
            active = [(s, d, t) for s, d, t in pending if not t.done]
            if not active:
                break
            check_cancelled()
            replies = chat.chat_many([t.request(chat) for _, _, t in active])
            for (section, digest, turns), reply in zip(active, replies):
                transcript.add(turns.take(reply, scenes, rules, names))
                if turns.done:
                    scenes.update(turns.draft)
                    journal.save_scenes(section.index, digest, dict(turns.draft))
                    done += 1
                    on_progress(done, total, f"{turns.part} written")
            journal.save_transcript(transcript)
        for section, digest, turns in pending:
            trimmed = None if turns.done else turns.trim(scenes, rules, names)
            if trimmed:
                transcript.note(turns.part, trimmed)
                scenes.update(turns.draft)
                journal.save_scenes(section.index, digest, dict(turns.draft))
                done += 1
                on_progress(done, total, f"{turns.part} written")
        journal.save_transcript(transcript)
        failed = next((t for _, _, t in pending if not t.done), None)
        if failed is not None:
            raise ScriptRepairError(failed.part, failed.problems, transcript, failed.turn)

    return Script(writer=writer, title=plan.title, style=plan.style, characters=plan.characters,
                  scenes=[Scene(i, scenes[i]) for i in sorted(scenes)])


def _plan(chat: ChatModel, task: SectionedTask, *, writer: str, max_repairs: int, rules: SceneRules,
          journal: ScriptJournal, transcript: Transcript) -> Plan:
    """The plan an earlier run left for the same prompt (a person may have edited it), or a new one."""
    digest = sha256(task.plan_prompt)
    saved = journal.saved_plan()
    if saved is not None and saved.prompt_sha256 == digest:
        if len(saved.sections) != len(task.sections):
            raise InvalidInputError(f"plan.json has {len(saved.sections)} sections; the song has "
                                    f"{len(task.sections)}: keep one place and action per section")
        problems = plan_problems(saved.title, saved.style, saved.characters,
                                 [(s.place, s.action) for s in saved.sections])
        if problems:
            raise InvalidInputError("plan.json cannot be used: " + "; ".join(problems))
        # Kept as written; its sections are this song's (a person edits the story, not the sections).
        return Plan(saved.title, saved.style, saved.characters,
                    [PlannedSection.of(s, p.place, p.action) for s, p in zip(task.sections, saved.sections)],
                    saved.writer, saved.model, digest)
    journal.save_prompt("plan", task.plan_prompt)
    title, style, characters, planned = request_plan(
        chat, task.plan_prompt, n_sections=len(task.sections), max_repairs=max_repairs, seed=task.seed,
        rules=rules, transcript=transcript, on_reply=lambda: journal.save_transcript(transcript))
    plan = Plan(title, style, characters, [PlannedSection.of(s, *p) for s, p in zip(task.sections, planned)],
                writer, chat.model, digest)
    journal.save_plan(plan)
    return plan


def _part(section: SongSection) -> str:
    return f"section {section.index} (scenes {section.first}-{section.last})"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
