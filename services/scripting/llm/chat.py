"""One chat turn with a language model, whatever serves it.

`ChatModel` is all the writers see. `OpenAIChat` talks to any OpenAI-compatible server (`vllm
serve`, llama.cpp's server, a hosted API); the llamacpp and vllm backends wrap a local runtime
behind the same interface. Structured output (a JSON schema the server's decoder must follow) is
asked for where the server supports it; every reply is validated either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from services.common.errors import InvalidInputError, ResourceExhaustedError, StageFailedError, TransientError
from services.common.settings import env_float, env_int, env_str
from services.scripting.llm.reasoning import split_reasoning

STRUCTURED_OUTPUT_MODES = ("json_schema", "guided_json", "none")
Message = dict[str, Any]


@dataclass(frozen=True)
class ChatReply:
    answer: str  # the reply without its reasoning
    reasoning: str  # <think> text or the server's reasoning field; '' when none
    raw: str  # the reply as the model wrote it
    model: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    finish_reason: str

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


class ChatModel(Protocol):
    model: str
    temperature: float  # the configured sampling temperature

    def chat(self, messages: list[Message], *, schema: dict[str, Any] | None, seed: int,
             temperature: float | None = None) -> ChatReply:
        """One assistant turn after `messages`, constrained to `schema` where the server can;
        `temperature` overrides the configured one."""


@dataclass(frozen=True)
class ChatSettings:
    """How to reach one model. `prefix` names its variables: MVGEN_LLM_* or MVGEN_LALM_*."""

    base_url: str  # <prefix>_URL: the server's OpenAI base URL, e.g. http://vllm:8000/v1
    model: str  # <prefix>_MODEL: the model id the server serves
    api_key: str  # <prefix>_API_KEY: a secret; servers without auth accept any value
    timeout_seconds: float  # <prefix>_TIMEOUT_SECONDS: one request, generation included
    max_retries: int  # <prefix>_MAX_RETRIES: retries of a failed connection, 429 or 5xx, with backoff
    structured_output: str  # <prefix>_STRUCTURED_OUTPUT: json_schema (OpenAI, vLLM, llama.cpp), guided_json (older vLLM), none
    temperature: float  # <prefix>_TEMPERATURE: DeepSeek-R1's authors advise 0.5-0.7
    max_tokens: int  # <prefix>_MAX_TOKENS: reasoning plus answer
    # <prefix>_FREQUENCY_PENALTY: small models loop, writing one scene over and over; 0 for
    # reasoning models, whose thinking repeats words on purpose
    frequency_penalty: float = 0.0

    @classmethod
    def from_env(cls, prefix: str, *, default_model: str, default_url: str = "",
                 default_frequency_penalty: float = 0.0) -> ChatSettings:
        settings = cls(
            base_url=env_str(f"{prefix}_URL", default_url).rstrip("/"),
            model=env_str(f"{prefix}_MODEL", default_model),
            api_key=env_str(f"{prefix}_API_KEY", "not-needed"),
            timeout_seconds=env_float(f"{prefix}_TIMEOUT_SECONDS", 600.0),
            max_retries=env_int(f"{prefix}_MAX_RETRIES", 3),
            structured_output=env_str(f"{prefix}_STRUCTURED_OUTPUT", "json_schema"),
            temperature=env_float(f"{prefix}_TEMPERATURE", 0.6),
            max_tokens=env_int(f"{prefix}_MAX_TOKENS", 8192),
            frequency_penalty=env_float(f"{prefix}_FREQUENCY_PENALTY", default_frequency_penalty),
        )
        if settings.structured_output not in STRUCTURED_OUTPUT_MODES:
            raise InvalidInputError(f"{prefix}_STRUCTURED_OUTPUT must be one of {', '.join(STRUCTURED_OUTPUT_MODES)}, "
                                    f"not {settings.structured_output!r}")
        if not settings.base_url:
            raise InvalidInputError(f"{prefix}_URL is not set: give the OpenAI-compatible server's base URL, "
                                    "e.g. http://localhost:8000/v1 for `vllm serve`")
        return settings


class OpenAIChat:
    """A client of an OpenAI-compatible chat server (the `openai` SDK: timeouts, retries with backoff)."""

    def __init__(self, settings: ChatSettings):
        import openai  # the scripting service's dependency; imported here to keep stage imports light

        self.settings = settings
        self.model = settings.model
        self.temperature = settings.temperature
        self._openai = openai
        self._client = openai.OpenAI(base_url=settings.base_url, api_key=settings.api_key,
                                     timeout=settings.timeout_seconds, max_retries=settings.max_retries)

    def chat(self, messages: list[Message], *, schema: dict[str, Any] | None, seed: int,
             temperature: float | None = None) -> ChatReply:
        s = self.settings
        extra: dict[str, Any] = {}
        if schema is not None and s.structured_output == "json_schema":
            extra["response_format"] = {"type": "json_schema",
                                        "json_schema": {"name": "script", "schema": schema, "strict": True}}
        elif schema is not None and s.structured_output == "guided_json":
            extra["extra_body"] = {"guided_json": schema}
        if s.frequency_penalty:
            extra["frequency_penalty"] = s.frequency_penalty
        started = time.monotonic()
        try:
            response = self._client.chat.completions.create(
                model=s.model, messages=messages, seed=seed, max_tokens=s.max_tokens,
                temperature=s.temperature if temperature is None else temperature,
                **extra)
        except self._openai.APITimeoutError:
            raise TransientError(f"the model server at {s.base_url} did not answer within "
                                 f"{s.timeout_seconds:.0f} s") from None
        except self._openai.APIConnectionError:
            raise TransientError(f"cannot reach the model server at {s.base_url}") from None
        except self._openai.RateLimitError:
            raise ResourceExhaustedError(f"the model server at {s.base_url} is busy (429)") from None
        except self._openai.APIStatusError as exc:
            raise StageFailedError(f"the model server at {s.base_url} refused the request "
                                   f"({exc.status_code}: {_server_message(exc)})") from None
        if not response.choices:
            raise StageFailedError(f"the model server at {s.base_url} sent no answer")
        choice = response.choices[0]
        raw = choice.message.content or ""
        reasoning, answer = split_reasoning(raw)
        # vLLM's reasoning parser (and others) return the thinking in a field of its own.
        server_reasoning = getattr(choice.message, "reasoning_content", None) or getattr(choice.message, "reasoning", None)
        if isinstance(server_reasoning, str) and server_reasoning.strip():
            reasoning = "\n\n".join(x for x in (server_reasoning.strip(), reasoning) if x)
        usage = response.usage
        return ChatReply(answer=answer, reasoning=reasoning, raw=raw, model=response.model or s.model,
                         prompt_tokens=usage.prompt_tokens if usage else 0,
                         completion_tokens=usage.completion_tokens if usage else 0,
                         seconds=time.monotonic() - started, finish_reason=choice.finish_reason or "")


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else None
        if message:
            return str(message)[:300]
    return str(getattr(exc, "message", exc))[:300]
