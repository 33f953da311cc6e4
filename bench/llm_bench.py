"""Scripts by the local LLM on this CPU, at the length of real songs: songs of 1, 3, 5 and 7 minutes
(tools/synth_song, each with its own seed, tempo and structure), segmented by the rules segmenter,
labelled by the descriptors, scripted section by section by the llamacpp writer
(Qwen2.5-Coder-1.5B-Instruct Q4_K_M from `make llm-model`) with no fallback.

Baselines measured in the same run: the song's own duration (the goal: scripted in less time than
it lasts), and llama.cpp's raw generation rate for the same model and threads (a plain completion
of 256 tokens from a short prompt, no grammar): the writer's completion tokens per second over
whole calls (prompt reading included) and over generation alone (the server's own timing).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.errors import MvgenError
from services.common.stage_api import AnalyzeRequest, SegmenterParams, SegmentRequest, WriteScriptRequest
from services.common.store import LocalArtifactStore
from tools.synth_song import render_song

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

# (minutes, seed, tempo, structure)
SONGS = ((1, 11, 96.0, "short"), (3, 12, 120.0, "pop"), (5, 13, 104.0, "ballad"), (7, 14, 128.0, "dance"))
RAW_TOKENS = 256

Row = tuple[str, float, str, float]


def raw_generation_rate(base_url: str, model: str) -> tuple[float, float]:
    """(completion tokens per second over the whole call, over generation alone) of a plain completion."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="none")
    prompt: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Tell a long story about a lighthouse keeper and a storm, in plain prose."}]
    best = (0.0, 0.0)
    for _ in range(2):
        started = time.perf_counter()
        reply = client.chat.completions.create(model=model, messages=prompt, max_tokens=RAW_TOKENS, temperature=0.6,
                                               seed=0, extra_body={"ignore_eos": True})
        seconds = time.perf_counter() - started
        decode = (getattr(reply, "timings", None) or {}).get("predicted_per_second", 0.0)
        assert reply.usage is not None, "the server reports no token usage"
        best = max(best, (reply.usage.completion_tokens / seconds, float(decode)))
    return best


def llm_rows(work: Path, log=print) -> list[Row]:
    from services.analysis.stage import AnalysisStage
    from services.scripting.llm_writers import LlamaCppWriter
    from services.scripting.stage import ScriptingStage
    from services.segmentation.stage import SegmentationStage

    store = LocalArtifactStore(work / "script-bench")
    segmentation, analysis = SegmentationStage(store), AnalysisStage(store, enabled=("descriptors",))
    segmentation.load()
    analysis.load()
    loaded = time.perf_counter()
    scripting = ScriptingStage(store, enabled=("llamacpp",))
    scripting.load()
    load_s = time.perf_counter() - loaded
    writer = scripting.backends.get("llamacpp")
    assert isinstance(writer, LlamaCppWriter)
    raw_call, raw_decode = raw_generation_rate(writer.server.base_url, writer.server.model)
    rows: list[Row] = [("llamacpp model load (GGUF, mmap), s", load_s, "-", 0.0),
                       ("llama.cpp raw generation, plain completion, tokens/s (whole call)", raw_call, "-", 0.0),
                       ("llama.cpp raw generation, plain completion, tokens/s (generation alone)", raw_decode, "-",
                        0.0)]
    fallbacks = repairs = 0
    for minutes, seed, tempo, structure in SONGS:
        name = f"{minutes}min"
        truth = render_song(work / f"{name}.wav", seconds=minutes * 60 - 1.5, tempo=tempo, seed=seed,
                            structure=structure)
        store.put_file(f"{name}/song.wav", work / f"{name}.wav")
        segmentation.run(SegmentRequest(song_key=f"{name}/song.wav", params=SegmenterParams(),
                                        segments_key=f"{name}/segments.json", segments_text_key=f"{name}/segments.txt"))
        analysis.run(AnalyzeRequest(song_key=f"{name}/song.wav", segments_key=f"{name}/segments.json",
                                    analyzer="descriptors", labels_key=f"{name}/labels.json"))
        request = WriteScriptRequest(labels_key=f"{name}/labels.json", segments_key=f"{name}/segments.json",
                                     writer="llamacpp", prompt_key=f"{name}/prompt.txt",
                                     script_key=f"{name}/script.json", script_text_key=f"{name}/script.txt", seed=seed,
                                     response_key=f"{name}/response.txt", plan_key=f"{name}/plan.json",
                                     sections_key=f"{name}/sections.json")
        log(f"script bench: {minutes}-minute song ({structure}, {tempo:g} BPM), writing ...")
        started = time.perf_counter()
        try:
            info = scripting.run(request).info
        except MvgenError as exc:  # a script the model could not make valid: counted, and the bench goes on
            fallbacks += 1
            rows.append((f"script, {minutes}-min song: FAILED ({exc}), s", time.perf_counter() - started,
                         "song duration", truth.duration))
            continue
        seconds = time.perf_counter() - started
        repairs += info["repairs"]
        what = (f"script, {minutes}-min song ({structure}, {tempo:g} BPM; {info['scenes']} segments, "
                f"{info['sections']} sections, {info['replies']} replies, {info['repairs']} repairs)")
        rows += [(f"{what}, s", seconds, "song duration", truth.duration),
                 (f"{minutes}-min song: completion tokens/s (whole calls)", info["tokens_per_second"],
                  "raw, whole call", raw_call),
                 (f"{minutes}-min song: completion tokens/s (generation alone)",
                  info.get("decode_tokens_per_second", 0.0), "raw, generation alone", raw_decode)]
        log(f"script bench: {minutes}-minute song scripted in {seconds:.0f} s ({truth.duration:.0f} s of music)")
    rows.append((f"scripts the model did not finish (no fallback), of {len(SONGS)} songs", fallbacks, "-", 0.0))
    rows.append((f"repairs, over {len(SONGS)} songs", repairs, "-", 0.0))
    return rows
