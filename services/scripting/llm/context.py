"""How many tokens a request may ask a model for: its context, less the prompt.

A server refuses a request whose prompt plus `max_tokens` passes the model's context (vLLM: HTTP
400), and a small context served on a CPU fills quickly. So every request's `max_tokens` is cut
to what the context leaves after the prompt, and a prompt that leaves too little for its answer
is refused before it is sent, with a message that names the sizes.

The context and the prompt's length come from the server where it says them:
- vLLM: `GET /v1/models` (max_model_len) and `POST /tokenize` with the chat messages;
- llama.cpp's server: `GET /props` (the slot's n_ctx), `POST /apply-template` and `POST /tokenize`;
- `<prefix>_CONTEXT_TOKENS` overrides the context for any server; a server that cannot count is
  estimated from the text (3 characters a token: more tokens than English text makes, so the
  estimate errs on the side of a shorter answer).
- Audio in a message is estimated too, from its length: Qwen2.5-Omni's audio encoder gives 25 tokens a
  second (its thinker config's position_id_per_seconds), 7500 for a 300 s window.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from services.common.errors import StageFailedError

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 8  # the chat template's role markers around each message
SAFETY_TOKENS = 16  # what a count through another path may differ by
AUDIO_TOKENS_PER_SECOND = 25  # Qwen2.5-Omni (and Qwen2-Audio): one audio token per 40 ms


class PromptTooLongError(StageFailedError):
    """The prompt leaves the model's context too little room for its answer."""


@dataclass(frozen=True)
class PromptSize:
    tokens: int
    exact: bool  # counted by the model's tokenizer, not estimated


class ContextWindow:
    """The context of one served model and the length of prompts in its tokens, asked of its server once.

    `get` and `post` are the server's HTTP calls (JSON in, JSON out, relative to the server's root,
    an exception for any failure); `configured` is a context size set by the deployment (0: ask).
    """

    def __init__(self, model: str, get: Callable[[str], Any], post: Callable[[str, dict[str, Any]], Any],
                 configured: int = 0):
        self.model = model
        self._get = get
        self._post = post
        self._configured = configured
        self._context: int | None | Literal[False] = False  # False: not asked yet
        self._counter: str | None | Literal[False] = False  # "vllm" | "llamacpp" | None (estimate) | False (not asked)

    def context_tokens(self) -> int | None:
        """The model's context in tokens, or None when neither the deployment nor the server says it."""
        if self._context is False:
            self._context = self._configured or self._ask_context()
        return self._context or None

    def prompt_size(self, messages: list[dict[str, Any]]) -> PromptSize:
        if self._counter is False:
            self._counter = self._find_counter()
        if self._counter and _text_only(messages):
            try:
                return PromptSize(self._count(self._counter, messages), True)
            except Exception as exc:  # a count that fails once falls back to the estimate for this prompt
                log.warning("cannot count the prompt's tokens on the server (%s); estimating", exc)
        return PromptSize(estimate_tokens(messages), False)

    def max_tokens(self, messages: list[dict[str, Any]], wanted: int, needed: int, what: str,
                   audio_seconds: float = 0.0) -> int:
        """`wanted` tokens, or fewer where the context has less room; PromptTooLongError when the room
        left is under `needed`, the least the answer takes. `audio_seconds`: the audio the messages carry."""
        context = self.context_tokens()
        if context is None:
            return wanted
        prompt = self.prompt_size(messages)
        if audio_seconds > 0:
            prompt = PromptSize(prompt.tokens + math.ceil(audio_seconds * AUDIO_TOKENS_PER_SECOND), False)
        room = context - prompt.tokens - SAFETY_TOKENS
        if room < max(1, needed):
            counted = "" if prompt.exact else "about "
            raise PromptTooLongError(
                f"{what} is {counted}{prompt.tokens:,} tokens long and {self.model}'s context is {context:,} tokens, "
                f"which leaves {max(0, room):,} tokens for an answer that needs about {needed:,}: serve the model "
                "with a longer context (vLLM --max-model-len, MVGEN_LLAMACPP_CONTEXT) or set MVGEN_LLM_CONTEXT_TOKENS "
                "to the context it has")
        return min(wanted, room)

    def _ask_context(self) -> int | None:
        try:
            models = self._get("/v1/models").get("data", [])
            lengths = [m["max_model_len"] for m in models
                       if m.get("max_model_len") and (m.get("id") == self.model or len(models) == 1)]
            if lengths:
                return int(lengths[0])
        except Exception:
            pass
        try:
            props = self._get("/props")
            n_ctx = props.get("default_generation_settings", {}).get("n_ctx")
            if n_ctx:
                return int(n_ctx)
        except Exception:
            pass
        log.info("the model server does not say %s's context size; max_tokens is sent as configured", self.model)
        return None

    def _find_counter(self) -> str | None:
        probe = [{"role": "user", "content": "hello"}]
        for counter in ("vllm", "llamacpp"):
            try:
                if self._count(counter, probe) > 0:
                    return counter
            except Exception:
                continue
        return None

    def _count(self, counter: str, messages: list[dict[str, Any]]) -> int:
        if counter == "vllm":
            answer = self._post("/tokenize", {"model": self.model, "messages": messages,
                                              "add_generation_prompt": True})
            return int(answer["count"])
        prompt = self._post("/apply-template", {"messages": messages})["prompt"]
        return len(self._post("/tokenize", {"content": prompt, "add_special": True})["tokens"])


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    chars = sum(len(part) for m in messages for part in _texts(m.get("content")))
    return chars // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE * len(messages)


def _text_only(messages: list[dict[str, Any]]) -> bool:
    return all(isinstance(m.get("content"), str) for m in messages)


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p.get("text", "") for p in content if isinstance(p, dict)]
    return []
