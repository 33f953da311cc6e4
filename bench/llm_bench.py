"""Script generation with the local LLM on this CPU: a 30-segment song, the llamacpp writer
(Qwen2.5-Coder-1.5B-Instruct Q4_K_M from `make llm-model`) against the template writer (no model)
measured in the same run. Model loading is timed apart from writing.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.timing import best_of
from services.common import artifacts
from services.common.artifacts import Segment, Segmentation
from services.common.stage_api import AnalyzeRequest, ScriptInputs, WriteScriptRequest
from services.common.store import LocalArtifactStore

SEGMENTS = 30

Row = tuple[str, float, str, float]


def llm_rows(song: Path, duration: float, work: Path) -> list[Row]:
    from services.analysis.stage import AnalysisStage
    from services.scripting.stage import ScriptingStage

    store = LocalArtifactStore(work / "llm-bench")
    store.put_file("song.wav", song)
    step = duration / SEGMENTS
    segments = [Segment(i, i * step, duration if i == SEGMENTS - 1 else (i + 1) * step, "max")
                for i in range(SEGMENTS)]
    store.put_bytes("segments.json", artifacts.dumps(Segmentation("even", {}, duration, 0.0, [], segments)))
    analysis = AnalysisStage(store, enabled=("descriptors",))
    analysis.load()
    analysis.run(AnalyzeRequest("song.wav", "segments.json", "descriptors", "labels.json", 3))

    loaded = time.perf_counter()
    stage = ScriptingStage(store, enabled=("template", "llamacpp"))
    stage.load()
    load_s = time.perf_counter() - loaded

    def request(writer: str) -> WriteScriptRequest:
        return WriteScriptRequest("labels.json", "segments.json", writer, f"{writer}/prompt.txt",
                                  f"{writer}/script.json", f"{writer}/script.txt",
                                  ScriptInputs(story="A night drive through a city that slowly wakes up."), 0,
                                  f"{writer}/response.txt", f"{writer}/reasoning.txt",
                                  "template" if writer != "template" else "")

    template_s = best_of(3, lambda: stage.run(request("template")))
    started = time.perf_counter()
    info = stage.run(request("llamacpp")).info
    llm_s = time.perf_counter() - started
    # A script the model could not make valid falls back to the template writer: said in the row.
    outcome = f"fell back to template after {info['attempts']} replies" if info.get("fallback") \
        else f"valid after {info['repairs']} repairs"
    name = f"script, {SEGMENTS} segments, llamacpp {info['model']}"
    return [
        (f"{name} ({outcome}), s", llm_s, "template writer", template_s),
        (f"{name}: completion tokens/s", info["tokens_per_second"], "-", 0.0),
        (f"{name}: prompt + completion tokens ({info['attempts']} replies)",
         info["prompt_tokens"] + info["completion_tokens"], "-", 0.0),
        ("llamacpp model load (GGUF, mmap), s", load_s, "-", 0.0),
    ]
