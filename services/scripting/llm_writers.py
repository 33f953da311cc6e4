"""The script writers that ask a language model, one class per way of running it.

    openai    any OpenAI-compatible server: `vllm serve deepseek-ai/DeepSeek-R1-Distill-Llama-8B
              --reasoning-parser deepseek_r1` (the thinking comes back in reasoning_content, the schema
              constrains the answer only), llama.cpp's server, a hosted API (MVGEN_LLM_URL,
              MVGEN_LLM_MODEL, MVGEN_LLM_API_KEY)
    llamacpp  a GGUF model run on this machine's CPU by llama.cpp's server in process
              (MVGEN_LLAMACPP_MODEL; `make llm-model` fetches Qwen2.5-Coder-1.5B-Instruct)
    vllm      vLLM's engine in process, on a GPU (MVGEN_VLLM_MODEL; MVGEN_VLLM_REASONING_PARSER)

All three write section by section (sectioned.py): a plan, then each section's scenes. Each
prompt is one user message (DeepSeek-R1's authors advise against a system prompt); each answer
is asked for under its JSON schema as structured output, stripped of its reasoning, validated,
and repaired up to MVGEN_LLM_MAX_REPAIRS times (conversation.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from services.common import envs
from services.common.artifacts import Script
from services.common.scene_rules import load_scene_rules
from services.scripting.llm.chat import ChatModel, ChatSettings, OpenAIChat
from services.scripting.llm.local import LlamaCppServer, LlamaCppSettings, VllmChat, VllmSettings
from services.scripting.sectioned import write_sectioned
from services.scripting.writer import ScriptTask, ScriptWriter

REASONING_MODEL = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"  # the paper's script writer
# Without it the 1.5B model writes three scenes and repeats them to the end (measured on a
# 7-segment prompt: 2 distinct scenes of 7 at 0.0, 7 of 7 at 0.6).
SMALL_MODEL_FREQUENCY_PENALTY = 0.6
# llama.cpp's frequency penalty looks back 64 tokens only: a 13-section plan repeated its first
# section's place and action 12 times. With DRY the same plan had 6 places before its first repeat
# (bench/SCRIPTING.md, "Plans of long songs").
SMALL_MODEL_DRY_MULTIPLIER = 0.8


def max_repairs(environ: Mapping[str, str] | None = None) -> int:
    """MVGEN_LLM_MAX_REPAIRS: repair turns after the first reply (0: none)."""
    return max(0, envs.get("MVGEN_LLM_MAX_REPAIRS", environ))


class LLMScriptWriter(ScriptWriter):
    chat: ChatModel

    def write(self, task: ScriptTask) -> Script:
        return write_sectioned(self.chat, task.sectioned, writer=self.name, max_repairs=max_repairs(self.environ),
                               rules=load_scene_rules(), journal=task.journal, transcript=task.transcript,
                               on_progress=task.on_progress, is_cancelled=task.is_cancelled)


class OpenAIWriter(LLMScriptWriter):
    name = "openai"

    def _load(self) -> None:
        self.chat = OpenAIChat(ChatSettings.from_env("MVGEN_LLM", default_model=REASONING_MODEL, environ=self.environ))


class LlamaCppWriter(LLMScriptWriter):
    name = "llamacpp"

    def _load(self) -> None:
        self.server = LlamaCppServer(LlamaCppSettings.from_env(self.environ))
        # Sampling settings (MVGEN_LLM_TEMPERATURE, ...) as for a remote server; the address is ours.
        settings = ChatSettings.from_env("MVGEN_LLM", default_model=self.server.model, default_url=self.server.base_url,
                                         default_frequency_penalty=SMALL_MODEL_FREQUENCY_PENALTY,
                                         default_dry_multiplier=SMALL_MODEL_DRY_MULTIPLIER, environ=self.environ)
        # Sections in flight: as many as the server has slots. The context is asked of the server.
        self.chat = OpenAIChat(replace(settings, base_url=self.server.base_url, model=self.server.model,
                                       parallel=self.server.slots, context_tokens=0))


class VllmWriter(LLMScriptWriter):
    name = "vllm"

    def _load(self) -> None:
        self.chat = VllmChat(VllmSettings.from_env(self.environ))


LLM_WRITERS: dict[str, type[LLMScriptWriter]] = {"openai": OpenAIWriter, "llamacpp": LlamaCppWriter,
                                                 "vllm": VllmWriter}
