"""A reasoning model's reply split into its thinking and its answer, and the answer's JSON object.

DeepSeek-R1 and its distills think inside <think>…</think> before answering. Their chat template
often opens the tag itself, so a reply may hold only the closing tag; a server with a reasoning
parser (vLLM --reasoning-parser) moves the thinking to a field of its own instead. The thinking is
kept, apart, for people; only the answer is parsed.
"""

from __future__ import annotations

import json
import re
from typing import Any

_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?|\n?```\s*$")


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a reply; reasoning is '' when the model did not think aloud."""
    thoughts = [m.group(1).strip() for m in _THINK_BLOCK.finditer(text)]
    answer = _THINK_BLOCK.sub("", text)
    # An unopened closing tag: everything before it was thinking (the template opened the tag).
    closing = _CLOSE.search(answer)
    if closing:
        thoughts.insert(0, answer[:closing.start()].strip())
        answer = answer[closing.end():]
    # An unclosed opening tag: the model ran out of tokens while thinking; there is no answer.
    opening = answer.lower().find("<think>")
    if opening >= 0:
        thoughts.append(answer[opening + len("<think>"):].strip())
        answer = answer[:opening]
    return "\n\n".join(t for t in thoughts if t), answer.strip()


def parse_json_answer(answer: str) -> Any:
    """The JSON object of an answer, allowing a code fence or words around it; ValueError otherwise."""
    text = _FENCE.sub("", answer.strip())
    start = text.find("{")
    if start < 0:
        raise ValueError("the answer holds no JSON object")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as exc:
        raise ValueError(f"the JSON is not valid: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return value
