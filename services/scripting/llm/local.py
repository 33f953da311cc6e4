"""Language models run by the scripting service itself: llama.cpp on CPU, vLLM's engine on a GPU.

`LlamaCppServer` starts llama.cpp's OpenAI-compatible server inside this process (xllamacpp, a
prebuilt CPU wheel) on a loopback port, and the writer talks to it with `OpenAIChat`: one code
path for a local model and a remote `vllm serve`. `VllmChat` runs vLLM's offline engine in
process, for a GPU machine that serves the scripting stage alone.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common import envs
from services.common.errors import InvalidInputError, StageFailedError
from services.scripting.llm.chat import ChatReply, ChatRequest
from services.scripting.llm.context import PromptTooLongError
from services.scripting.llm.reasoning import split_reasoning

# Fetched and checked by `make llm-model` (tools/fetch_llm.py).
DEFAULT_GGUF = Path(__file__).resolve().parents[3] / "models" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


@dataclass(frozen=True)
class LlamaCppSettings:
    model_path: Path  # MVGEN_LLAMACPP_MODEL: a GGUF file
    # MVGEN_LLAMACPP_CONTEXT: prompt plus answer, per slot; a section's prompt and answer need ~3k
    context_tokens: int
    threads: int  # MVGEN_LLAMACPP_THREADS: CPU threads; default all cores
    slots: int = 1  # MVGEN_LLAMACPP_SLOTS: requests served at once (sections written in parallel)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LlamaCppSettings:
        path = Path(envs.get("MVGEN_LLAMACPP_MODEL", environ, default=str(DEFAULT_GGUF))).expanduser()
        if not path.is_file():
            raise InvalidInputError(f"MVGEN_LLAMACPP_MODEL: no GGUF model at {path} "
                                    "(`make llm-model` fetches the default one)")
        return cls(path, envs.get("MVGEN_LLAMACPP_CONTEXT", environ),
                   envs.get("MVGEN_LLAMACPP_THREADS", environ, default=os.cpu_count() or 2),
                   max(1, envs.get("MVGEN_LLAMACPP_SLOTS", environ)))


class LlamaCppServer:
    """llama.cpp's HTTP server on 127.0.0.1, in this process, for as long as this object lives."""

    def __init__(self, settings: LlamaCppSettings):
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(settings.model_path)
        params.n_ctx = settings.context_tokens * settings.slots  # llama.cpp divides it among the slots
        params.n_parallel = settings.slots
        params.cpuparams.n_threads = settings.threads
        params.cpuparams_batch.n_threads = settings.threads
        params.hostnames = ["127.0.0.1"]  # loopback only: the server has no authentication
        params.port = 0  # any free port
        params.use_jinja = True  # the model's own chat template, as `vllm serve` uses
        params.verbosity = 0  # errors only: its per-request timing lines would flood the CLI's progress display
        self.model = settings.model_path.name
        self.slots = settings.slots
        params.model_alias = {self.model}  # the name replies carry, not the file's full path
        try:
            self._server = xllamacpp.Server(params)
        except Exception as exc:  # xllamacpp raises plain RuntimeErrors for unreadable models
            raise StageFailedError(f"llama.cpp cannot load {settings.model_path}: {exc}") from exc
        self.base_url = self._server.listening_address.rstrip("/") + "/v1"


# Models named so think in <think>...</think> before they answer (vLLM's deepseek_r1 parser).
REASONING_MODEL_MARKS = ("deepseek-r1", "qwq")


@dataclass(frozen=True)
class VllmSettings:
    model: str  # MVGEN_VLLM_MODEL: a hub id or a local folder
    gpu_memory_utilization: float  # MVGEN_VLLM_GPU_MEMORY_UTILIZATION
    max_model_len: int  # MVGEN_VLLM_MAX_MODEL_LEN
    temperature: float  # MVGEN_LLM_TEMPERATURE, shared with the other LLM backends
    max_tokens: int  # MVGEN_LLM_MAX_TOKENS
    # MVGEN_VLLM_REASONING_PARSER: auto (deepseek_r1 for a model that thinks in <think>, else none), none, or
    # a vLLM parser name. With one, vLLM's structured output leaves the thinking free and constrains the answer.
    reasoning_parser: str = "auto"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> VllmSettings:
        def get(name: str) -> Any:
            return envs.get(name, environ)

        return cls(get("MVGEN_VLLM_MODEL"), get("MVGEN_VLLM_GPU_MEMORY_UTILIZATION"), get("MVGEN_VLLM_MAX_MODEL_LEN"),
                   get("MVGEN_LLM_TEMPERATURE"), get("MVGEN_LLM_MAX_TOKENS"), get("MVGEN_VLLM_REASONING_PARSER"))

    def engine_reasoning_parser(self) -> str:
        """The parser vLLM's engine gets ('' for none): DeepSeek-R1 and its distills (and QwQ) think in
        <think>...</think>, which vLLM's deepseek_r1 parser knows."""
        name = self.reasoning_parser.strip()
        if name == "auto":
            model = self.model.lower()
            return "deepseek_r1" if any(k in model for k in REASONING_MODEL_MARKS) else ""
        return "" if name in ("", "none") else name


@dataclass
class _Waiting:
    """One caller's requests, waiting for a batch; `replies` is set (a reply or an error for each) when done."""

    requests: list[ChatRequest]
    replies: list[ChatReply | Exception] | None = field(default=None)


class VllmChat:
    """vLLM's in-process engine with guided JSON decoding. `chat_many` hands every request to one
    `LLM.chat` call, which vLLM batches: a script's sections are written together.

    vLLM's offline `LLM` is not safe to call from several threads at once, and the scripting service
    serves up to MVGEN_MAX_CONCURRENT calls together. So calls are collected: requests that arrive
    while the engine runs a batch wait, and go together in the next one (one `LLM.chat` call at a
    time, as many requests in it as are waiting). The caller whose requests start a batch runs it;
    the others wait for their replies."""

    parallel = 64  # sections written in one batch

    def __init__(self, settings: VllmSettings):
        try:
            import vllm
        except ImportError:
            raise InvalidInputError("the vllm backend needs the vllm package (a GPU image: pip install vllm); "
                                    "or serve the model with `vllm serve` and use the openai backend") from None
        self._vllm = vllm
        self.settings = settings
        self.model = settings.model
        self.temperature = settings.temperature
        # With a reasoning parser the engine's structured output waits for the end of the thinking
        # (vllm/v1/structured_output/__init__.py, should_fill_bitmask); the text still holds the
        # thinking, which split_reasoning takes apart. EngineArgs.reasoning_parser (vllm/engine/arg_utils.py).
        parser = settings.engine_reasoning_parser()
        self._engine = vllm.LLM(model=settings.model, gpu_memory_utilization=settings.gpu_memory_utilization,
                                max_model_len=settings.max_model_len,
                                **({"reasoning_parser": parser} if parser else {}))
        self._tokenizer = self._engine.get_tokenizer()
        self._turn = threading.Condition(threading.Lock())
        self._waiting: list[_Waiting] = []  # requests that arrived while a batch ran
        self._running = False

    def chat(self, request: ChatRequest) -> ChatReply:
        return self.chat_many([request])[0]

    def chat_many(self, requests: list[ChatRequest]) -> list[ChatReply]:
        if not requests:
            return []
        mine = _Waiting(list(requests))
        with self._turn:
            self._waiting.append(mine)
            while mine.replies is None:
                if self._running:
                    self._turn.wait()
                    continue
                batch, self._waiting = self._waiting, []
                self._running = True
                self._turn.release()
                try:
                    self._run(batch)
                finally:
                    self._turn.acquire()
                    self._running = False
                    self._turn.notify_all()
        errors = [r for r in mine.replies if isinstance(r, Exception)]
        if errors:
            raise errors[0]
        return [r for r in mine.replies if isinstance(r, ChatReply)]

    def _run(self, batch: list[_Waiting]) -> None:
        """One `LLM.chat` call for every request of `batch` that can be sent; each caller gets its replies,
        or the error that stopped its requests (a prompt too long fails its own caller only)."""
        s = self.settings
        sent: list[tuple[_Waiting, ChatRequest, Any]] = []
        try:
            for waiting in batch:
                try:
                    params = [self._vllm.SamplingParams(
                        temperature=s.temperature if r.temperature is None else r.temperature,
                        max_tokens=self._max_tokens(r), seed=r.seed, **_structured_output(r.schema))
                        for r in waiting.requests]
                except Exception as exc:
                    waiting.replies = [exc]
                    continue
                sent += [(waiting, r, p) for r, p in zip(waiting.requests, params, strict=True)]
            if not sent:
                return
            started = time.monotonic()
            try:
                outputs = self._engine.chat([r.messages for _, r, _ in sent], [p for _, _, p in sent], use_tqdm=False)
            except Exception as exc:
                for waiting, _, _ in sent:
                    waiting.replies = [exc]
                return
            seconds = time.monotonic() - started
            replies: dict[int, list[ChatReply | Exception]] = {}
            for (waiting, _, _), output in zip(sent, outputs, strict=True):
                completion = output.outputs[0]
                reasoning, answer = split_reasoning(completion.text)
                replies.setdefault(id(waiting), []).append(ChatReply(
                    answer=answer, reasoning=reasoning, raw=completion.text, model=s.model,
                    prompt_tokens=len(output.prompt_token_ids or []), completion_tokens=len(completion.token_ids),
                    seconds=seconds, finish_reason=completion.finish_reason or ""))
            for waiting, _, _ in sent:
                waiting.replies = replies[id(waiting)]
        finally:
            for waiting in batch:  # whatever stopped this batch, no caller waits for ever
                if waiting.replies is None:
                    waiting.replies = [StageFailedError("the vLLM engine stopped before it answered")]

    def _max_tokens(self, request: ChatRequest) -> int:
        """The configured max_tokens, cut to what max_model_len leaves after the prompt (vLLM refuses more)."""
        prompt = len(self._tokenizer.apply_chat_template(request.messages, tokenize=True, add_generation_prompt=True))
        room = self.settings.max_model_len - prompt
        if room < request.min_answer_tokens:
            raise PromptTooLongError(
                f"{request.what} is {prompt:,} tokens long and MVGEN_VLLM_MAX_MODEL_LEN is "
                f"{self.settings.max_model_len:,}, which leaves {max(0, room):,} tokens for an answer that needs about "
                f"{request.min_answer_tokens:,}")
        return min(self.settings.max_tokens, room)


def _structured_output(schema: dict[str, Any] | None) -> dict[str, Any]:
    """vLLM ≥ 0.11 names guided decoding `structured_outputs`; older releases `guided_decoding`."""
    if schema is None:
        return {}
    try:
        from vllm.sampling_params import StructuredOutputsParams
        return {"structured_outputs": StructuredOutputsParams(json=schema)}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams
        return {"guided_decoding": GuidedDecodingParams(json=schema)}
