"""Language models run by the scripting service itself: llama.cpp on CPU, vLLM's engine on a GPU.

`LlamaCppServer` starts llama.cpp's OpenAI-compatible server inside this process (xllamacpp, a
prebuilt CPU wheel) on a loopback port, and the writer talks to it with `OpenAIChat`: one code
path for a local model and a remote `vllm serve`. `VllmChat` runs vLLM's offline engine in
process, for a GPU machine that serves the scripting stage alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import InvalidInputError, StageFailedError
from services.common.settings import env_float, env_int, env_str
from services.scripting.llm.chat import ChatReply, Message
from services.scripting.llm.reasoning import split_reasoning

# Fetched and checked by `make llm-model` (tools/fetch_llm.py).
DEFAULT_GGUF = Path(__file__).resolve().parents[3] / "models" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


@dataclass(frozen=True)
class LlamaCppSettings:
    model_path: Path  # MVGEN_LLAMACPP_MODEL: a GGUF file
    context_tokens: int  # MVGEN_LLAMACPP_CONTEXT: prompt plus answer; a 30-segment script needs ~8k
    threads: int  # MVGEN_LLAMACPP_THREADS: CPU threads; default all cores

    @classmethod
    def from_env(cls) -> LlamaCppSettings:
        path = Path(env_str("MVGEN_LLAMACPP_MODEL", str(DEFAULT_GGUF))).expanduser()
        if not path.is_file():
            raise InvalidInputError(f"MVGEN_LLAMACPP_MODEL: no GGUF model at {path} "
                                    "(`make llm-model` fetches the default one)")
        return cls(path, env_int("MVGEN_LLAMACPP_CONTEXT", 16384), env_int("MVGEN_LLAMACPP_THREADS", os.cpu_count() or 2))


class LlamaCppServer:
    """llama.cpp's HTTP server on 127.0.0.1, in this process, for as long as this object lives."""

    def __init__(self, settings: LlamaCppSettings):
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(settings.model_path)
        params.n_ctx = settings.context_tokens
        params.n_parallel = 1  # one script at a time: the whole context for one long prompt
        params.cpuparams.n_threads = settings.threads
        params.cpuparams_batch.n_threads = settings.threads
        params.hostnames = ["127.0.0.1"]  # loopback only: the server has no authentication
        params.port = 0  # any free port
        params.use_jinja = True  # the model's own chat template, as `vllm serve` uses
        params.verbosity = 0  # errors only: its per-request timing lines would flood the CLI's progress display
        self.model = settings.model_path.name
        params.model_alias = {self.model}  # the name replies carry, not the file's full path
        try:
            self._server = xllamacpp.Server(params)
        except Exception as exc:  # xllamacpp raises plain RuntimeErrors for unreadable models
            raise StageFailedError(f"llama.cpp cannot load {settings.model_path}: {exc}") from exc
        self.base_url = self._server.listening_address.rstrip("/") + "/v1"


@dataclass(frozen=True)
class VllmSettings:
    model: str  # MVGEN_VLLM_MODEL: a hub id or a local folder
    gpu_memory_utilization: float  # MVGEN_VLLM_GPU_MEMORY_UTILIZATION
    max_model_len: int  # MVGEN_VLLM_MAX_MODEL_LEN
    temperature: float  # MVGEN_LLM_TEMPERATURE, shared with the other LLM backends
    max_tokens: int  # MVGEN_LLM_MAX_TOKENS

    @classmethod
    def from_env(cls) -> VllmSettings:
        return cls(env_str("MVGEN_VLLM_MODEL", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"),
                   env_float("MVGEN_VLLM_GPU_MEMORY_UTILIZATION", 0.85), env_int("MVGEN_VLLM_MAX_MODEL_LEN", 32768),
                   env_float("MVGEN_LLM_TEMPERATURE", 0.6), env_int("MVGEN_LLM_MAX_TOKENS", 8192))


class VllmChat:
    """vLLM's in-process engine with guided JSON decoding."""

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
        self._engine = vllm.LLM(model=settings.model, gpu_memory_utilization=settings.gpu_memory_utilization,
                                max_model_len=settings.max_model_len)

    def chat(self, messages: list[Message], *, schema: dict[str, Any] | None, seed: int,
             temperature: float | None = None) -> ChatReply:
        s = self.settings
        params = self._vllm.SamplingParams(temperature=s.temperature if temperature is None else temperature,
                                           max_tokens=s.max_tokens, seed=seed,
                                           **_structured_output(schema))
        started = time.monotonic()
        output = self._engine.chat(messages, params, use_tqdm=False)[0]
        completion = output.outputs[0]
        reasoning, answer = split_reasoning(completion.text)
        return ChatReply(answer=answer, reasoning=reasoning, raw=completion.text, model=s.model,
                         prompt_tokens=len(output.prompt_token_ids or []), completion_tokens=len(completion.token_ids),
                         seconds=time.monotonic() - started, finish_reason=completion.finish_reason or "")


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
