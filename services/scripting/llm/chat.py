"""One chat turn with a language model, whatever serves it.

`ChatModel` is all the writers see. `OpenAIChat` talks to any OpenAI-compatible server (`vllm
serve`, llama.cpp's server, a hosted API); the llamacpp and vllm backends wrap a local runtime
behind the same interface. Structured output (a JSON schema the server's decoder must follow) is
asked for where the server supports it; every reply is validated either way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from services.common import envs
from services.common.errors import InvalidInputError, ResourceExhaustedError, StageFailedError, TransientError
from services.scripting.llm.context import ContextWindow
from services.scripting.llm.reasoning import split_reasoning

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

STRUCTURED_OUTPUT_MODES = ("json_schema", "guided_json", "none")
DRY_ALLOWED_LENGTH = 3  # words a sentence may share with an earlier one before DRY penalises the next
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
    cached_tokens: int = 0  # prompt tokens the server took from its prompt cache, where it says
    decode_seconds: float = 0.0  # of `seconds`, the time spent generating, where the server says

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ChatRequest:
    """One assistant turn to ask for."""

    messages: list[Message]
    schema: dict[str, Any] | None  # the answer's JSON schema, as structured output where the server can
    seed: int
    temperature: float | None = None  # None: the configured one
    min_answer_tokens: int = 1  # the least room the answer needs in the context: less is an error
    what: str = "the prompt"  # how errors name the request: "the plan prompt", "section 3's prompt"
    audio_seconds: float = 0.0  # the audio the messages carry, counted in the prompt's tokens


class ChatModel(Protocol):
    model: str
    temperature: float  # the configured sampling temperature
    parallel: int  # requests it serves at once: chat_many sends up to this many together

    def chat(self, request: ChatRequest) -> ChatReply:
        """One assistant turn after `request.messages`, constrained to its schema where the server can."""

    def chat_many(self, requests: list[ChatRequest]) -> list[ChatReply]:
        """The replies to `requests`, in order, asked for together where the model serves several at once."""


@dataclass(frozen=True)
class ChatSettings:
    """How to reach one model. `prefix` names its variables: MVGEN_LLM_* or MVGEN_LALM_*."""

    base_url: str  # <prefix>_URL: the server's OpenAI base URL, e.g. http://vllm:8000/v1
    model: str  # <prefix>_MODEL: the model id the server serves
    api_key: str  # <prefix>_API_KEY: a secret; servers without auth accept any value
    timeout_seconds: float  # <prefix>_TIMEOUT_SECONDS: one request, generation included
    max_retries: int  # <prefix>_MAX_RETRIES: retries of a failed connection, 429 or 5xx, with backoff
    # <prefix>_STRUCTURED_OUTPUT: json_schema (OpenAI, vLLM, llama.cpp), guided_json (older vLLM), none
    structured_output: str
    temperature: float  # <prefix>_TEMPERATURE: DeepSeek-R1's authors advise 0.5-0.7
    max_tokens: int  # <prefix>_MAX_TOKENS: reasoning plus answer, at most; cut to what the context leaves
    # <prefix>_FREQUENCY_PENALTY: small models loop, writing one scene over and over; 0 for
    # reasoning models, whose thinking repeats words on purpose
    frequency_penalty: float = 0.0
    # <prefix>_DRY_MULTIPLIER: llama.cpp's DRY sampler, which penalises repeating a stretch of what is
    # already written: a small model otherwise plans the same section over and over. 0: not sent (other
    # servers have no such sampler)
    dry_multiplier: float = 0.0
    # <prefix>_CONTEXT_TOKENS: the model's context; 0: asked of the server (vLLM and llama.cpp say it)
    context_tokens: int = 0
    # <prefix>_PARALLEL: requests sent at once (a script's sections); a vLLM server batches them
    parallel: int = 4

    @classmethod
    def from_env(cls, prefix: str, *, default_model: str, default_url: str = "",
                 default_frequency_penalty: float = 0.0, default_dry_multiplier: float = 0.0,
                 environ: Mapping[str, str] | None = None) -> ChatSettings:
        def get(suffix: str, **default: Any) -> Any:
            return envs.get(f"{prefix}_{suffix}", environ, **default)

        settings = cls(
            base_url=get("URL", default=default_url).rstrip("/"),
            model=get("MODEL", default=default_model),
            api_key=get("API_KEY"),
            timeout_seconds=get("TIMEOUT_SECONDS"),
            max_retries=get("MAX_RETRIES"),
            structured_output=get("STRUCTURED_OUTPUT"),
            temperature=get("TEMPERATURE"),
            max_tokens=get("MAX_TOKENS"),
            frequency_penalty=get("FREQUENCY_PENALTY", default=default_frequency_penalty),
            dry_multiplier=get("DRY_MULTIPLIER", default=default_dry_multiplier),
            context_tokens=max(0, get("CONTEXT_TOKENS")),
            parallel=max(1, get("PARALLEL")),
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
        self.parallel = settings.parallel
        self._openai = openai
        self._client = openai.OpenAI(base_url=settings.base_url, api_key=settings.api_key,
                                     timeout=settings.timeout_seconds, max_retries=settings.max_retries)
        self.context = ContextWindow(settings.model, self._get, self._post, settings.context_tokens)

    def chat_many(self, requests: list[ChatRequest]) -> list[ChatReply]:
        if len(requests) <= 1 or self.parallel <= 1:
            return [self.chat(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(requests))) as pool:
            return list(pool.map(self.chat, requests))

    def chat(self, request: ChatRequest) -> ChatReply:
        s = self.settings
        schema, messages = request.schema, request.messages
        extra: dict[str, Any] = {}
        if schema is not None and s.structured_output == "json_schema":
            extra["response_format"] = {"type": "json_schema",
                                        "json_schema": {"name": "answer", "schema": schema, "strict": True}}
        extra_body: dict[str, Any] = {}
        if schema is not None and s.structured_output == "guided_json":
            extra_body["guided_json"] = schema
        if s.dry_multiplier:
            extra_body |= {"dry_multiplier": s.dry_multiplier, "dry_allowed_length": DRY_ALLOWED_LENGTH}
        if extra_body:
            extra["extra_body"] = extra_body
        if s.frequency_penalty:
            extra["frequency_penalty"] = s.frequency_penalty
        max_tokens = self.context.max_tokens(messages, s.max_tokens, request.min_answer_tokens, request.what,
                                             request.audio_seconds)
        started = time.monotonic()
        try:
            response = self._client.chat.completions.create(
                # The messages are built as plain dicts of the OpenAI chat format (text or audio parts).
                model=s.model, messages=cast("list[ChatCompletionMessageParam]", messages), seed=request.seed,
                max_tokens=max_tokens,
                temperature=s.temperature if request.temperature is None else request.temperature,
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
        server_reasoning = (getattr(choice.message, "reasoning_content", None)
                            or getattr(choice.message, "reasoning", None))
        if isinstance(server_reasoning, str) and server_reasoning.strip():
            reasoning = "\n\n".join(x for x in (server_reasoning.strip(), reasoning) if x)
        usage = response.usage
        details = getattr(usage, "prompt_tokens_details", None)
        timings = getattr(response, "timings", None) or {}  # llama.cpp's server reports these
        cached = timings.get("cache_n") or getattr(details, "cached_tokens", None) or 0
        return ChatReply(answer=answer, reasoning=reasoning, raw=raw, model=response.model or s.model,
                         prompt_tokens=usage.prompt_tokens if usage else 0,
                         completion_tokens=usage.completion_tokens if usage else 0,
                         seconds=time.monotonic() - started, finish_reason=choice.finish_reason or "",
                         cached_tokens=int(cached), decode_seconds=float(timings.get("predicted_ms", 0.0)) / 1000)

    # The server's own endpoints beside the OpenAI API (its root is the base URL without /v1).
    def _get(self, path: str) -> Any:
        return self._client.get(self._root() + path, cast_to=object)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self._client.post(self._root() + path, body=body, cast_to=object)

    def _root(self) -> str:
        return self.settings.base_url.removesuffix("/v1")


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else None
        if message:
            return str(message)[:300]
    return str(getattr(exc, "message", exc))[:300]
