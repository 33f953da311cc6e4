"""The vllm backend (vLLM's engine in the scripting process), against a stand-in for vLLM's offline `LLM`.

vllm is not installed on these machines (it needs a CUDA GPU), so the stand-in is the only engine
the tests can reach: a module named `vllm` whose `LLM.chat` has vLLM's signature (vllm/entrypoints/
llm.py, `LLM.chat`) and records every call, and whether two ever ran at once, which vLLM's offline
engine does not allow.
"""

from __future__ import annotations

import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pytest

from services.scripting.llm.chat import ChatRequest
from services.scripting.llm.context import PromptTooLongError
from services.scripting.llm.local import VllmChat, VllmSettings

SETTINGS = VllmSettings(model="deepseek-ai/DeepSeek-R1-Distill-Llama-8B", gpu_memory_utilization=0.85,
                        max_model_len=4096, temperature=0.6, max_tokens=1024)


@dataclass
class Completion:  # vllm.outputs.CompletionOutput, the fields read
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class RequestOutput:  # vllm.outputs.RequestOutput, the fields read
    prompt_token_ids: list[int]
    outputs: list[Completion]


class Tokenizer:
    def apply_chat_template(self, messages: list[dict[str, Any]], tokenize: bool = True,
                            add_generation_prompt: bool = True) -> list[int]:
        return [0] * sum(len(str(m["content"]).split()) for m in messages)


class FakeLLM:
    """vLLM's `LLM`: the constructor takes EngineArgs as keywords; `chat` answers each conversation with
    `reply(conversation)` after `seconds`, and records the calls and the most that ran at once."""

    instances: list[FakeLLM] = []

    def __init__(self, model: str, **engine_args: Any):
        self.model = model
        self.engine_args = engine_args
        self.calls: list[int] = []  # conversations per call
        self.running = 0
        self.most_at_once = 0
        self.seconds = 0.2
        self.gate: threading.Event | None = None  # the first call waits for it, where set
        self.reply: Callable[[list[dict[str, Any]]], str] = lambda conversation: "ok: " + conversation[-1]["content"]
        self._lock = threading.Lock()
        FakeLLM.instances.append(self)

    def get_tokenizer(self) -> Tokenizer:
        return Tokenizer()

    def chat(self, messages: list[dict[str, Any]] | Sequence[list[dict[str, Any]]],
             sampling_params: Any | Sequence[Any] | None = None, use_tqdm: bool | Callable[..., Any] = True,
             lora_request: Any = None, chat_template: str | None = None,
             chat_template_content_format: str = "auto", add_generation_prompt: bool = True,
             continue_final_message: bool = False, tools: list[dict[str, Any]] | None = None,
             chat_template_kwargs: dict[str, Any] | None = None, tokenization_kwargs: dict[str, Any] | None = None,
             mm_processor_kwargs: dict[str, Any] | None = None) -> list[RequestOutput]:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            first = not self.calls
            self.calls.append(len(messages))
        try:
            if first and self.gate is not None:
                assert self.gate.wait(10)
            time.sleep(self.seconds)
            conversations = cast("list[list[dict[str, Any]]]", messages)  # mvgen sends a list of conversations
            assert isinstance(sampling_params, list) and len(sampling_params) == len(conversations)
            return [RequestOutput([0, 1, 2], [Completion(self.reply(c), [0] * 5, "stop")]) for c in conversations]
        finally:
            with self._lock:
                self.running -= 1


class SamplingParams:
    def __init__(self, **fields: Any):
        self.__dict__.update(fields)


class StructuredOutputsParams:
    def __init__(self, json: dict[str, Any]):
        self.json = json


@pytest.fixture
def fake_vllm(monkeypatch) -> type[FakeLLM]:
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM  # type: ignore[attr-defined]
    module.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.StructuredOutputsParams = StructuredOutputsParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling)
    FakeLLM.instances = []
    return FakeLLM


def settle(done: Callable[[], bool], seconds: float = 2.0) -> None:
    """Wait until `done()` or `seconds` have passed (without batching, the callers never wait: go on)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if done():
                return
        except AttributeError:
            pass
        time.sleep(0.01)


def ask(text: str, seed: int = 0) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": text}], None, seed)


def test_concurrent_calls_never_overlap_in_the_engine_and_those_that_wait_go_in_one_batch(fake_vllm):
    """Issue 18 item 6: the scripting service serves up to 4 calls at once, and vLLM's offline LLM is not
    safe to call from several threads. Requests arriving while a batch runs go together in the next one."""
    chat = VllmChat(SETTINGS)
    engine = fake_vllm.instances[0]
    engine.gate = threading.Event()
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def call(caller: int) -> None:
        try:
            replies = chat.chat_many([ask(f"caller {caller} part {p}") for p in range(2)])
            results[caller] = [r.answer for r in replies]
        except BaseException as exc:
            errors.append(exc)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    settle(lambda: bool(engine.calls))
    others = [threading.Thread(target=call, args=(caller,)) for caller in range(1, 8)]
    for thread in others:
        thread.start()
    settle(lambda: len(chat._waiting) == 7)  # all seven wait behind the first batch
    engine.gate.set()
    for thread in [first, *others]:
        thread.join(20)

    assert errors == []
    assert engine.most_at_once == 1
    assert engine.calls == [2, 14]  # the first caller's two, then the seven callers who waited, together
    assert results == {c: [f"ok: caller {c} part {p}" for p in range(2)] for c in range(8)}


def test_a_prompt_too_long_fails_its_own_caller_and_the_batch_still_runs_for_the_others(fake_vllm):
    chat = VllmChat(SETTINGS)
    engine = fake_vllm.instances[0]
    engine.gate = threading.Event()
    outcome: dict[str, Any] = {}

    def call(name: str, text: str) -> None:
        try:
            outcome[name] = chat.chat(ask(text)).answer
        except Exception as exc:
            outcome[name] = exc

    first = threading.Thread(target=call, args=("first", "hello"))
    first.start()
    settle(lambda: bool(engine.calls))
    long_one = threading.Thread(target=call, args=("long", "word " * 5000))
    short_one = threading.Thread(target=call, args=("short", "a lighthouse"))
    long_one.start()
    short_one.start()
    settle(lambda: len(chat._waiting) == 2)
    engine.gate.set()
    for thread in (first, long_one, short_one):
        thread.join(20)
    assert outcome["first"] == "ok: hello" and outcome["short"] == "ok: a lighthouse"
    assert isinstance(outcome["long"], PromptTooLongError)
    assert engine.calls == [1, 1]


def test_an_engine_failure_reaches_every_caller_of_its_batch_and_the_next_batch_runs(fake_vllm):
    chat = VllmChat(SETTINGS)
    engine = fake_vllm.instances[0]
    engine.seconds = 0.0

    def broken(conversation: list[dict[str, Any]]) -> str:
        raise RuntimeError("CUDA out of memory")

    engine.reply = broken
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        chat.chat_many([ask("one"), ask("two")])
    engine.reply = lambda conversation: "fine"
    assert [r.answer for r in chat.chat_many([ask("three")])] == ["fine"]


@pytest.mark.parametrize(("model", "setting", "parser"), [
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "auto", "deepseek_r1"),
    ("/models/DeepSeek-R1-Distill-Qwen-7B", "auto", "deepseek_r1"),
    ("Qwen/Qwen2.5-7B-Instruct", "auto", None),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "none", None),
    ("Qwen/Qwen3-8B", "qwen3", "qwen3"),
])
def test_the_engine_gets_the_reasoning_parser_of_a_model_that_thinks(fake_vllm, model, setting, parser):
    """Issue 18 item 3: without a reasoning parser vLLM's structured output constrains DeepSeek-R1 from its
    first token, and it answers without thinking; with one the schema applies after </think>."""
    VllmChat(VllmSettings(model, 0.85, 4096, 0.6, 1024, setting))
    assert fake_vllm.instances[0].engine_args.get("reasoning_parser") == parser


def test_the_offline_engines_thinking_is_split_from_its_json_answer(fake_vllm):
    """The offline engine returns the text as generated, thinking included: the <think> split takes it apart."""
    chat = VllmChat(SETTINGS)
    engine = fake_vllm.instances[0]
    engine.seconds = 0.0
    engine.reply = lambda conversation: 'Three segments, a storm.\n</think>\n\n{"scene 0": "A storm."}'
    reply = chat.chat(ChatRequest([{"role": "user", "content": "Write."}], {"type": "object"}, 0))
    assert reply.reasoning == "Three segments, a storm." and reply.answer == '{"scene 0": "A storm."}'
