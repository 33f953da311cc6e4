"""The script writers that ask a language model, one class per way of running it.

    openai    any OpenAI-compatible server: `vllm serve deepseek-ai/DeepSeek-R1-Distill-Llama-8B`,
              llama.cpp's server, a hosted API (MVGEN_LLM_URL, MVGEN_LLM_MODEL, MVGEN_LLM_API_KEY)
    llamacpp  a GGUF model run on this machine's CPU by llama.cpp's server in process
              (MVGEN_LLAMACPP_MODEL; `make llm-model` fetches Qwen2.5-Coder-1.5B-Instruct)
    vllm      vLLM's engine in process, on a GPU (MVGEN_VLLM_MODEL)

All three send the rendered prompt as one user message (DeepSeek-R1's authors advise against a
system prompt), ask for the script's JSON schema as structured output, strip the reasoning,
validate, and repair up to MVGEN_LLM_MAX_REPAIRS times (conversation.py).
"""

from __future__ import annotations

from dataclasses import replace

from services.common.settings import env_int
from services.scripting.llm.chat import ChatModel, ChatSettings, OpenAIChat
from services.scripting.llm.conversation import Transcript, request_script
from services.scripting.llm.local import LlamaCppServer, LlamaCppSettings, VllmChat, VllmSettings
from services.scripting.writer import Draft, ScriptTask, ScriptWriter

REASONING_MODEL = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"  # the paper's script writer
# Without it the 1.5B model writes three scenes and repeats them to the end (measured on a
# 7-segment prompt: 2 distinct scenes of 7 at 0.0, 7 of 7 at 0.6).
SMALL_MODEL_FREQUENCY_PENALTY = 0.6


def max_repairs() -> int:
    """MVGEN_LLM_MAX_REPAIRS: repair turns after the first reply (0: none)."""
    return max(0, env_int("MVGEN_LLM_MAX_REPAIRS", 2))


class LLMScriptWriter(ScriptWriter):
    chat: ChatModel

    def write(self, task: ScriptTask) -> Draft:
        transcript = Transcript()
        script = request_script(self.chat, [{"role": "user", "content": task.prompt}],
                                n_scenes=len(task.segmentation.segments), writer=self.name,
                                max_repairs=max_repairs(), seed=task.seed, transcript=transcript)
        return Draft(script, self.chat.model, transcript)


class OpenAIWriter(LLMScriptWriter):
    name = "openai"

    def _load(self) -> None:
        self.chat = OpenAIChat(ChatSettings.from_env("MVGEN_LLM", default_model=REASONING_MODEL))


class LlamaCppWriter(LLMScriptWriter):
    name = "llamacpp"

    def _load(self) -> None:
        self.server = LlamaCppServer(LlamaCppSettings.from_env())
        # Sampling settings (MVGEN_LLM_TEMPERATURE, ...) as for a remote server; the address is ours.
        settings = ChatSettings.from_env("MVGEN_LLM", default_model=self.server.model, default_url=self.server.base_url,
                                         default_frequency_penalty=SMALL_MODEL_FREQUENCY_PENALTY)
        self.chat = OpenAIChat(replace(settings, base_url=self.server.base_url, model=self.server.model))


class VllmWriter(LLMScriptWriter):
    name = "vllm"

    def _load(self) -> None:
        self.chat = VllmChat(VllmSettings.from_env())
