"""Asking a model for a part of a script until it is valid: the plan, or one section's scenes.

Each part is one request, then at most `max_repairs` repair turns that send the model its own
answer back with the list of what is wrong. A section whose scenes are wrong only one by one (a
rule broken, a near-repeat of another scene) gets just those scenes asked for again, and keeps
the rest. Each repair is one turn after the part's own prompt, so a conversation never outgrows
a small model's context. Repair turns sample a little hotter: sampled as before, a small model
gives the scene it repeated once more.

Sections in flight together advance in rounds: every section still wrong gets its next turn in
the same `chat_many` call, which a server that batches (vLLM, llama.cpp with several slots)
answers at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.common.artifacts import Character, StyleBible
from services.common.errors import StageFailedError
from services.common.scene_rules import SceneRules, names_of
from services.common.settings import PROMPTS_DIR
from services.scripting.llm.chat import ChatModel, ChatReply, ChatRequest, Message
from services.scripting.llm.reasoning import parse_json_answer
from services.scripting.llm.schema import (
    mended_plan,
    plan_parts_from_json,
    plan_parts_schema,
    plan_schema,
    scene_key,
    scene_texts_from_json,
    scenes_schema,
    section_key,
)
from services.scripting.llm.transcript import Attempt, Transcript
from services.scripting.plan import SECTIONS_PER_PLAN_REPLY
from services.scripting.prompt import render_template
from services.scripting.validation import plan_part_problems, sentence_problems

REPAIR_PLAN_TEMPLATE = "repair_plan_prompt.md.j2"  # the whole answer again
CONTINUE_PLAN_TEMPLATE = "continue_plan_prompt.md.j2"  # the next sections of the plan
REWRITE_PLAN_TEMPLATE = "rewrite_plan_parts_prompt.md.j2"  # only the parts of the plan that are wrong
REPAIR_SECTION_TEMPLATE = "repair_section_prompt.md.j2"  # the whole section again
REWRITE_TEMPLATE = "rewrite_scenes_prompt.md.j2"  # only the scenes that are wrong
FRESH_TEMPLATE = "fresh_scenes_prompt.md.j2"  # the scenes still wrong, asked for without the bad answer
# Rewrites of a section's wrong scenes before they are asked for afresh: the 1.5B model, shown its
# scene with "it uses 'melody'", wrote "The fountain plays a melody ..." four times over.
FRESH_AFTER_REWRITES = 2
REPAIR_TEMPERATURE_STEP = 0.2
# Rewrites of a plan's sections that are only alike others, before they are kept as they are: the 1.5B
# model, asked again and again, moved "approach the warehouse, noticing a strange figure" to another
# building, and no further; each rewrite costs ~15 s on 2 cores.
ALIKE_PLAN_REWRITES = 1
MAX_REPAIR_TEMPERATURE = 1.0
# The least room an answer needs in the context (tokens): a plan's title, style and characters,
# and one line per section; a scene of at most 35 words and its key.
PLAN_BASE_TOKENS = 250
PLAN_TOKENS_PER_SECTION = 50
SCENE_TOKENS = 60

# title, style, characters, (place, action) per section
PlanParts = tuple[str, StyleBible, list[Character], list[tuple[str, str]]]


class ScriptRepairError(StageFailedError):
    """No valid answer for a part of the script after every repair turn; carries the transcript so it
    can still be saved."""

    def __init__(self, part: str, problems: list[str], transcript: Transcript, replies: int):
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        super().__init__(f"the model gave no valid {part} in {replies} replies; the last one: {shown}")
        self.problems = problems
        self.transcript = transcript


def repair_temperature(chat: ChatModel, turn: int) -> float | None:
    return None if turn == 0 else min(MAX_REPAIR_TEMPERATURE, chat.temperature + REPAIR_TEMPERATURE_STEP * turn)


def request_plan(chat: ChatModel, prompt: str, *, n_sections: int, max_repairs: int, seed: int, rules: SceneRules,
                 transcript: Transcript, on_reply: Callable[[], None], prompts_dir: Path = PROMPTS_DIR) -> PlanParts:
    """A valid plan for `n_sections` sections, its sections written SECTIONS_PER_PLAN_REPLY at a time: the first
    reply holds the title, the style, the characters and the first sections, each next one the next sections,
    after the plan so far (a small model writing a long list starts repeating it after a few items).

    Each reply is repaired up to `max_repairs` times. The style and characters, which go beside every clip's
    scene, are held to the rules that hold there (no sound, no text on screen); no two sections may be alike.
    When some parts are wrong (the style, a section), the model writes just those again and the rest is
    kept; only an answer that cannot be read is asked for whole."""
    conversation: list[Message] = [{"role": "user", "content": prompt}]
    plan: PlanParts | None = None
    for first in range(0, n_sections, SECTIONS_PER_PLAN_REPLY):
        window = list(range(first, min(n_sections, first + SECTIONS_PER_PLAN_REPLY)))
        if first:
            conversation.append({"role": "user", "content": render_template(
                CONTINUE_PLAN_TEMPLATE, prompts_dir, sections=window, n_sections=n_sections)})
        part = "plan" if not first else f"plan, sections {window[0]}-{window[-1]}"
        plan = _plan_window(chat, conversation, plan, window, part=part, max_repairs=max_repairs,
                            seed=seed + 100 * first, rules=rules, transcript=transcript, on_reply=on_reply,
                            prompts_dir=prompts_dir)
        conversation.append({"role": "assistant", "content": json.dumps(
            _plan_json(plan, window, whole=not first), indent=1, ensure_ascii=False)})
    assert plan is not None
    return plan


def _plan_window(chat: ChatModel, conversation: list[Message], plan: PlanParts | None, window: list[int], *,
                 part: str, max_repairs: int, seed: int, rules: SceneRules, transcript: Transcript,
                 on_reply: Callable[[], None], prompts_dir: Path) -> PlanParts:
    """The plan with the sections of `window` written (and, in the first window, its title, style and
    characters), after `conversation`."""
    first_window = plan is None
    asked = ["title", "style", "characters"] if first_window else []
    asked += [section_key(i) for i in window]
    messages, schema = list(conversation), plan_schema(window) if first_window else plan_parts_schema(asked)
    wrong: dict[str, list[str]] = {}
    for turn in range(max_repairs + 1):
        reply = chat.chat(ChatRequest(messages, schema, seed + turn, repair_temperature(chat, turn),
                                      PLAN_BASE_TOKENS + PLAN_TOKENS_PER_SECTION * len(window), f"the {part} prompt"))
        try:
            data = parse_json_answer(reply.answer)
            if plan is None:
                plan = plan_parts_from_json(data, window)
            else:
                plan = mended_plan(plan, data, list(wrong) if wrong else asked)
            wrong, alike = _plan_window_problems(plan, window, first_window, rules)
            problems = [f"{p}: {'; '.join(found)}" for p, found in wrong.items()]
        except ValueError as exc:
            wrong, alike, problems = {}, set(), [str(exc)]
            if first_window:
                plan = None
        # Sections alike are a flaw, not a fault: the scenes are checked apart, one by one. After a few
        # rewrites they are kept, and said to be.
        tolerated = plan is not None and set(wrong) == alike and turn >= ALIKE_PLAN_REWRITES
        transcript.add(Attempt(part, reply, _truncated(reply) + problems + (
            [f"kept as it is after {turn} rewrites: a section alike another is no fault"] if tolerated else []),
            repair=turn > 0))
        on_reply()
        if plan is not None and (not problems or tolerated):
            return plan
        if wrong:
            assert plan is not None  # problems are found only in a plan that was read
            answer = json.dumps(_plan_json(plan, window, whole=first_window), indent=1, ensure_ascii=False)
            repair = render_template(REWRITE_PLAN_TEMPLATE, prompts_dir, bad=list(wrong.items()))
            schema = plan_parts_schema(list(wrong))
        else:
            answer = reply.answer
            repair = render_template(REPAIR_PLAN_TEMPLATE, prompts_dir, problems=problems, parts=asked)
            schema = plan_schema(window) if first_window else plan_parts_schema(asked)
        messages = conversation + [{"role": "assistant", "content": answer}, {"role": "user", "content": repair}]
    raise ScriptRepairError(part, problems, transcript, max_repairs + 1)


def _plan_window_problems(plan: PlanParts, window: list[int], first_window: bool,
                          rules: SceneRules) -> tuple[dict[str, list[str]], set[str]]:
    """(part -> problems, the parts whose only problem is being alike another section), for the parts of the
    plan this window wrote: its sections (against every section before them too), and in the first window
    the title, style and characters."""
    title, style, characters, sections = plan
    sections = sections[:window[-1] + 1]
    found = plan_part_problems(title, style, characters, sections)
    repeats = {part for part, problems in found.items() if part.startswith("section ")
               and all(p.startswith("it repeats section") for p in problems)}
    if first_window:
        for part, text in _style_texts(plan):
            found.setdefault(part, []).extend(rules.problems(text, style=True))
    alike = set(repeats)
    for index, twin in _alike_sections(sections, rules, names_of([c.name for c in characters])).items():
        if f"section {index}" not in found:  # not said twice of a section that repeats another word for word
            found[f"section {index}"] = [f"it shows nearly the same as section {twin}; move the story to another "
                                         "place or action"]
            alike.add(f"section {index}")
    mine = {"title", "style", "characters"} if first_window else set()
    mine |= {section_key(i) for i in window}
    wrong = {part: found[part] for part in sorted(found, key=_part_order) if found[part] and part in mine}
    return wrong, alike & set(wrong)


def _part_order(part: str) -> tuple[int, int]:
    """The plan's order: the title, the style, the characters, then the sections by number."""
    order = ("title", "style", "characters")
    return (order.index(part), 0) if part in order else (len(order), int(part.split()[1]))


def _style_texts(plan: PlanParts) -> list[tuple[str, str]]:
    """(part, text) of what goes word for word beside every clip's scene: the style and the characters."""
    _, style, characters, _ = plan
    return [("style", getattr(style, name)) for name in ("look", "lighting", "camera", "atmosphere")] + \
        [("characters", c.description) for c in characters]


def _alike_sections(sections: list[tuple[str, str]], rules: SceneRules, names: frozenset[str]) -> dict[int, int]:
    """index -> an earlier section it nearly repeats (place and action together)."""
    texts = [f"{place}: {action}" for place, action in sections]
    found = {}
    for i, text in enumerate(texts):
        twin = next((j for j in range(i) if rules.near_duplicate(text, texts[j], names)), None)
        if twin is not None:
            found[i] = twin
    return found


def _plan_json(plan: PlanParts, window: list[int], whole: bool) -> dict:
    """The plan as the model wrote it for `window`: `whole`, with its title, style and characters."""
    title, style, characters, sections = plan
    written = {section_key(i): {"place": sections[i][0], "action": sections[i][1]} for i in window}
    if not whole:
        return written
    return {"title": title, "style": {"palette": style.palette, "look": style.look, "lighting": style.lighting,
                                      "camera": style.camera, "atmosphere": style.atmosphere},
            "characters": [{"name": c.name, "description": c.description} for c in characters], "sections": written}


@dataclass
class SectionTurns:
    """One section's conversation: its prompt, the scenes it has so far, and its next request."""

    part: str  # "section 3 (scenes 14-21)"
    prompt: str
    indices: Sequence[int]  # the segments it writes scenes for
    seed: int
    shots: dict[int, str]  # index -> the shot the scene is filmed as (its prompt says so; a rewrite reminds it)
    shot_list: Sequence[str] = ()  # every shot: a scene asked for afresh is dealt another
    draft: dict[int, str] = field(default_factory=dict)  # index -> sentence, from the last usable answer
    wrong: dict[int, list[str]] = field(default_factory=dict)  # index -> problems, of the last answer
    problems: list[str] = field(default_factory=list)  # the last answer's problems, all of them
    turn: int = 0
    done: bool = False
    _messages: list[Message] = field(default_factory=list)
    _asked: Sequence[int] = ()  # the scenes the last request asked for
    _last_answer: str = ""

    def request(self, chat: ChatModel, prompts_dir: Path = PROMPTS_DIR) -> ChatRequest:
        base: list[Message] = [{"role": "user", "content": self.prompt}]
        if self.turn == 0:
            self._messages, self._asked = base, self.indices
        elif self.draft and self.wrong and self.turn >= FRESH_AFTER_REWRITES + 1:
            # Rewrites kept the mistake: the scenes still wrong are asked for afresh, the bad answer unseen.
            # Another shot, too: a scene stuck near another's is moved off it (a face, hands, the sky).
            shots = {i: self.shot_list[(self.shot_list.index(self.shots[i]) + self.turn) % len(self.shot_list)]
                     if self.shots[i] in self.shot_list else self.shots[i] for i in self.wrong}
            fresh = render_template(FRESH_TEMPLATE, prompts_dir, bad=sorted(self.wrong), shots=shots)
            self._messages = [{"role": "user", "content": f"{self.prompt.rstrip()}\n\n{fresh}"}]
            self._asked = sorted(self.wrong)
        elif self.draft and self.wrong:
            # Only some scenes are wrong: the model sees the section as it stands and rewrites those.
            answer = json.dumps({scene_key(i): self.draft[i] for i in self.indices}, indent=1, ensure_ascii=False)
            repair = render_template(REWRITE_TEMPLATE, prompts_dir, bad=sorted(self.wrong.items()), shots=self.shots)
            self._messages = base + [{"role": "assistant", "content": answer}, {"role": "user", "content": repair}]
            self._asked = sorted(self.wrong)
        else:
            repair = render_template(REPAIR_SECTION_TEMPLATE, prompts_dir, problems=self.problems,
                                     keys=[scene_key(i) for i in self.indices])
            self._messages = base + [{"role": "assistant", "content": self._last_answer},
                                     {"role": "user", "content": repair}]
            self._asked = self.indices
        return ChatRequest(self._messages, scenes_schema(self._asked), self.seed + self.turn,
                           repair_temperature(chat, self.turn), SCENE_TOKENS * len(self._asked) + 20,
                           f"{self.part}'s prompt")

    def take(self, reply: ChatReply, others: dict[int, str], rules: SceneRules, names: frozenset[str]) -> Attempt:
        """Read `reply` and check it against the scenes already kept in other sections (`others`)."""
        self._last_answer = reply.answer
        try:
            texts = scene_texts_from_json(parse_json_answer(reply.answer), self._asked)
        except ValueError as exc:
            self.wrong, self.problems = {}, _truncated(reply) + [str(exc)]
        else:
            self.draft.update(texts)
            self.wrong = section_problems(self.draft, self.indices, others, rules, names, fresh=set(texts))
            self.problems = [f"scene {i}: {'; '.join(p)}" for i, p in sorted(self.wrong.items())]
            self.done = not self.wrong
        attempt = Attempt(self.part, reply, self.problems, repair=self.turn > 0)
        self.turn += 1
        return attempt

    def trim(self, others: dict[int, str], rules: SceneRules, names: frozenset[str]) -> str | None:
        """The last resort after the repairs: each scene still wrong cut to its clauses that break no rule
        (SceneRules.trimmed). What was done, for the transcript, when that makes the section valid; else None."""
        trimmed = {i: rules.trimmed(self.draft[i]) for i in self.wrong}
        cut = {i: text for i, text in trimmed.items() if text is not None}
        if not self.draft or len(cut) < len(trimmed):
            return None
        draft = {**self.draft, **cut}
        if section_problems(draft, self.indices, others, rules, names, fresh=set(cut)):
            return None
        self.draft, self.wrong, self.problems, self.done = draft, {}, [], True
        return "\n".join(f"scene {i} cut to the clauses that break no rule: {text}" for i, text in cut.items())


def section_problems(draft: dict[int, str], indices: Sequence[int], others: dict[int, str], rules: SceneRules,
                     names: frozenset[str], fresh: set[int] | None = None) -> dict[int, list[str]]:
    """index -> what is wrong with each scene of a section: its sentence, a rule, or a near-repeat of a scene
    in another section (`others`) or in this one. Of two alike, the one just written (`fresh`: a repair's
    answer) is the one to write again: it is the one that copied."""
    found: dict[int, list[str]] = {}
    seen = dict(others)
    fresh = set(indices) if fresh is None else fresh
    for index in sorted(indices, key=lambda i: (i in fresh, i)):
        text = draft[index]
        problems = sentence_problems(text) + rules.problems(text)
        twin = next((i for i, other in seen.items() if rules.near_duplicate(text, other, names)), None)
        if twin is not None:
            # The twin is not quoted: a small model asked to avoid a quoted sentence writes it again.
            problems.append(f"it shows nearly the same as scene {twin}; show another place, action or moment")
        seen[index] = text
        if problems:
            found[index] = problems
    return found


def _truncated(reply: ChatReply) -> list[str]:
    return ["the answer was cut off at the token limit: write shorter scenes and think less"] \
        if reply.finish_reason == "length" else []
