"""Asking a model for a script until it is valid: one request, then at most `max_repairs` repair
turns that send the model its own answer back with the list of what is wrong (and, when only some
scenes are wrong, ask for those scenes alone).

Every reply is kept in a `Transcript` (saved as response.txt, the thinking apart as
reasoning.txt), the failed ones too, so a person can see what the model wrote and why it was
refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from services.common.artifacts import Script
from services.common.errors import StageFailedError
from services.common.settings import PROMPTS_DIR
from services.scripting.llm.chat import ChatModel, ChatReply, Message
from services.scripting.llm.reasoning import parse_json_answer
from services.scripting.llm.schema import scene_texts_from_json, scenes_schema, script_from_json, script_schema
from services.scripting.prompt import render_template
from services.scripting.validation import scene_problems, script_problems

REPAIR_TEMPLATE = "repair_prompt.md.j2"  # the whole script again
REWRITE_TEMPLATE = "rewrite_scenes_prompt.md.j2"  # only the scenes that are wrong
# Added to the temperature on each repair turn (up to 1.0): sampled as before, a small model gives
# the scenes it repeated once more.
REPAIR_TEMPERATURE_STEP = 0.15
MAX_REPAIR_TEMPERATURE = 1.0


@dataclass
class Attempt:
    reply: ChatReply
    problems: list[str]


@dataclass
class Transcript:
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def repairs(self) -> int:
        return max(0, len(self.attempts) - 1)

    def response_text(self) -> str:
        parts = []
        for number, attempt in enumerate(self.attempts, 1):
            r = attempt.reply
            parts.append(f"===== reply {number} of {len(self.attempts)}: {r.model}, {r.prompt_tokens} prompt tokens, "
                         f"{r.completion_tokens} completion tokens, {r.seconds:.1f} s, finish: {r.finish_reason}\n")
            parts.append(r.answer.rstrip() + "\n")
            if attempt.problems:
                parts.append("----- refused:\n" + "".join(f"- {p}\n" for p in attempt.problems))
        return "\n".join(parts)

    def reasoning_text(self) -> str:
        return "\n".join(f"===== reply {number}\n{a.reply.reasoning.rstrip()}\n"
                         for number, a in enumerate(self.attempts, 1) if a.reply.reasoning.strip())

    def usage(self) -> dict[str, float]:
        prompt = sum(a.reply.prompt_tokens for a in self.attempts)
        completion = sum(a.reply.completion_tokens for a in self.attempts)
        seconds = sum(a.reply.seconds for a in self.attempts)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "model_seconds": round(seconds, 3),
                "tokens_per_second": round(completion / seconds, 2) if seconds > 0 else 0.0}


class ScriptRepairError(StageFailedError):
    """No valid script after every repair turn; carries the transcript so it can still be saved."""

    def __init__(self, problems: list[str], transcript: Transcript):
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        super().__init__(f"the model gave no valid script in {len(transcript.attempts)} replies "
                         f"({transcript.repairs} repairs); the last one: {shown}")
        self.problems = problems
        self.transcript = transcript


def request_script(chat: ChatModel, messages: list[Message], *, n_scenes: int, writer: str, max_repairs: int,
                   seed: int, transcript: Transcript, prompts_dir: Path = PROMPTS_DIR) -> Script:
    """A valid script for `n_scenes` segments from `chat`, repairing up to `max_repairs` times.

    A repair shows the model its answer and what is wrong with it. When only some scenes are wrong
    (a repeat, a scene of two sentences), the model rewrites just those and the rest are kept;
    otherwise it writes the whole script again. Each repair is one turn after the original prompt,
    so the conversation never outgrows a small model's context.
    """
    base = list(messages)
    request, schema, draft, mending = base, script_schema(n_scenes), None, False
    for turn in range(max_repairs + 1):
        temperature = None if turn == 0 else min(MAX_REPAIR_TEMPERATURE,
                                                 chat.temperature + REPAIR_TEMPERATURE_STEP * turn)
        reply = chat.chat(request, schema=schema, seed=seed + turn, temperature=temperature)
        draft, problems = _read(reply, draft if mending else None, n_scenes, writer)
        transcript.attempts.append(Attempt(reply, problems))
        if not problems:
            return draft
        bad = _only_scenes_wrong(draft, n_scenes)
        mending = bad is not None
        if bad is not None:
            answer = json.dumps({k: v for k, v in draft.to_dict().items() if k != "writer"}, indent=2)
            kept = [scene for scene in draft.scenes if scene.index not in bad]
            schema = scenes_schema(sorted(bad))
            repair = render_template(REWRITE_TEMPLATE, prompts_dir, bad=sorted(bad.items()), kept=kept)
        else:
            answer, schema = reply.answer, script_schema(n_scenes)
            repair = render_template(REPAIR_TEMPLATE, prompts_dir, problems=problems, n_scenes=n_scenes)
        request = base + [{"role": "assistant", "content": answer}, {"role": "user", "content": repair}]
    raise ScriptRepairError(problems, transcript)


def _read(reply: ChatReply, draft: Script | None, n_scenes: int, writer: str) -> tuple[Script | None, list[str]]:
    """The script a reply gives (a whole one, or `draft` with the scenes it rewrote) and its problems."""
    truncated = ["the answer was cut off at the token limit: write shorter scenes and think less"] \
        if reply.finish_reason == "length" else []
    try:
        data = parse_json_answer(reply.answer)
        if draft is None:
            script = script_from_json(data, writer)
        else:
            texts = scene_texts_from_json(data)
            script = replace(draft, scenes=[replace(s, text=texts.get(s.index, s.text)) for s in draft.scenes])
    except ValueError as exc:
        return draft, truncated + [str(exc)]
    return script, script_problems(script, n_scenes)


def _only_scenes_wrong(draft: Script | None, n_scenes: int) -> dict[int, list[str]] | None:
    """index -> problems when every problem of `draft` lies in single scenes; None otherwise."""
    if draft is None:
        return None
    by_scene = scene_problems(draft)
    if not by_scene or sum(map(len, by_scene.values())) != len(script_problems(draft, n_scenes)):
        return None
    return by_scene
