"""The scripting stage, both pipelines.

CLAP pipeline (`run`): labels.json and segments.json → prompt.txt → the writer → script.json and
script.txt. LALM pipeline (`tell_story`): the song and segments.json → prompt.txt → the audio
model's story.txt → scenes_prompt.txt → the scene writer (the audio model or an LLM) → script.json.

The prompt is rendered and stored for every writer, also the template writer that does not send
it, so a person can read what an LLM would be asked. LLM replies are saved (response.txt, the
thinking apart in reasoning.txt) whether or not they were usable. The script is validated
before it is stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from services.common import artifacts
from services.common.artifacts import Labels, Script, Segmentation
from services.common.errors import InvalidInputError
from services.common.lifecycle import Backend, BackendSet
from services.common.stage_api import StageResult, TellStoryRequest, WriteScriptRequest
from services.common.store import ArtifactStore
from services.scripting.llm.conversation import ScriptRepairError, Transcript, request_script
from services.scripting.llm_writers import LlamaCppWriter, LLMScriptWriter, OpenAIWriter, VllmWriter, max_repairs
from services.scripting.prompt import render_prompt, render_scenes_prompt, render_story_prompt
from services.scripting.storyteller import AudioStoryteller
from services.scripting.template_writer import TemplateWriter
from services.scripting.validation import validate_script
from services.scripting.writer import Draft, ScriptTask, ScriptWriter

BACKENDS: dict[str, type[Backend]] = {
    "template": TemplateWriter,
    "openai": OpenAIWriter,
    "llamacpp": LlamaCppWriter,
    "vllm": VllmWriter,
    "openai-audio": AudioStoryteller,
}

T = TypeVar("T")


class ScriptingStage:
    def __init__(self, store: ArtifactStore, enabled: Sequence[str] = ("template",)):
        self.store = store
        self.backends = BackendSet("scripting", BACKENDS, enabled)

    def load(self) -> None:
        self.backends.load()

    @property
    def ready(self) -> bool:
        return self.backends.ready

    def run(self, req: WriteScriptRequest) -> StageResult:
        writer = self._backend(req.writer, ScriptWriter, "a script writer")
        fallback = self._backend(req.fallback_writer, ScriptWriter, "a script writer") if req.fallback_writer else None
        labels = _read(self.store, req.labels_key, Labels.from_dict)
        segmentation = _read(self.store, req.segments_key, Segmentation.from_dict)
        prompt = render_prompt(labels, segmentation, req.inputs)
        self.store.put_text(req.prompt_key, prompt)
        task = ScriptTask(prompt, labels, segmentation, req.inputs, req.seed)
        info: dict[str, Any] = {"writer": writer.name}
        try:
            draft = writer.write(task)
        except ScriptRepairError as exc:
            saved = self._save_transcript(req.response_key, req.reasoning_key, exc.transcript)
            if fallback is None:
                raise
            info.update(_transcript_info(exc.transcript), fallback=fallback.name, fallback_reason=str(exc))
            draft = fallback.write(task)
        else:
            saved = self._save_transcript(req.response_key, req.reasoning_key, draft.transcript)
            if draft.transcript:
                info.update(_transcript_info(draft.transcript))
        keys = self._save_script(draft, len(segmentation.segments), req.script_key, req.script_text_key)
        return StageResult(keys={"prompt": req.prompt_key, **keys, **saved}, info={**info, **_script_info(draft)})

    def tell_story(self, req: TellStoryRequest) -> StageResult:
        storyteller = self._backend(req.storyteller, AudioStoryteller, "an audio-language model (storyteller)")
        scene_writer = (self._backend(req.scene_writer, LLMScriptWriter, "an LLM writer") if req.scene_writer
                        else storyteller)
        segmentation = _read(self.store, req.segments_key, Segmentation.from_dict)
        prompt = render_story_prompt(segmentation, req.inputs)
        self.store.put_text(req.prompt_key, prompt)
        with self.store.local_path(req.song_key) as song:
            told = storyteller.tell(song, prompt, req.seed)
        story = told.reply.answer.strip()
        self.store.put_text(req.story_key, story + "\n")
        scenes_prompt = render_scenes_prompt(story, segmentation, req.inputs)
        self.store.put_text(req.scenes_prompt_key, scenes_prompt)

        transcript = Transcript()
        story_reasoning = f"===== the story\n{told.reply.reasoning.rstrip()}\n\n" if told.reply.reasoning else ""
        try:
            script = request_script(scene_writer.chat, [{"role": "user", "content": scenes_prompt}],
                                    n_scenes=len(segmentation.segments), writer=scene_writer.name,
                                    max_repairs=max_repairs(), seed=req.seed, transcript=transcript)
        finally:
            saved = self._save_transcript(req.response_key, req.reasoning_key, transcript, story_reasoning)
        draft = Draft(script, scene_writer.chat.model, transcript)
        keys = self._save_script(draft, len(segmentation.segments), req.script_key, req.script_text_key)
        return StageResult(
            keys={"prompt": req.prompt_key, "story": req.story_key, "scenes_prompt": req.scenes_prompt_key, **keys,
                  **saved},
            info={"storyteller": storyteller.name, "storyteller_model": told.reply.model,
                  "story_words": len(story.split()), "story_seconds": round(told.reply.seconds, 3),
                  "audio_bytes": told.audio_bytes, "audio_kbps": told.audio_kbps,
                  "writer": scene_writer.name, **_transcript_info(transcript), **_script_info(draft)},
        )

    def _backend(self, name: str, kind: type[T], role: str) -> T:
        backend = self.backends.get(name)
        if not isinstance(backend, kind):
            raise InvalidInputError(f"the scripting backend {name!r} is not {role}")
        return backend

    def _save_script(self, draft: Draft, n_segments: int, script_key: str, text_key: str) -> dict[str, str]:
        validate_script(draft.script, n_segments)
        self.store.put_bytes(script_key, artifacts.dumps(draft.script))
        self.store.put_text(text_key, draft.script.to_text())
        return {"script": script_key, "script_text": text_key}

    def _save_transcript(self, response_key: str, reasoning_key: str, transcript: Transcript | None,
                         reasoning_before: str = "") -> dict[str, str]:
        """response.txt and reasoning.txt, where asked for and there is something to say; the keys written."""
        saved = {}
        if transcript is not None and transcript.attempts and response_key:
            self.store.put_text(response_key, transcript.response_text())
            saved["response"] = response_key
        reasoning = reasoning_before + (transcript.reasoning_text() if transcript else "")
        if reasoning_key and reasoning:
            self.store.put_text(reasoning_key, reasoning)
            saved["reasoning"] = reasoning_key
        return saved


def _transcript_info(transcript: Transcript) -> dict[str, Any]:
    return {"model": transcript.attempts[-1].reply.model if transcript.attempts else "",
            "attempts": len(transcript.attempts), "repairs": transcript.repairs, **transcript.usage()}


def _script_info(draft: Draft) -> dict[str, Any]:
    script: Script = draft.script
    return {"script_writer": script.writer, "title": script.title, "scenes": len(script.scenes),
            "characters": len(script.characters)}


def _read(store: ArtifactStore, key: str, parse: Callable[[dict[str, Any]], T]) -> T:
    try:
        return parse(json.loads(store.get_text(key)))
    except KeyError as exc:
        raise InvalidInputError(f"{key!r} is missing or lacks the field {exc}") from exc
    except (TypeError, ValueError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise InvalidInputError(f"{key} cannot be read ({exc})") from exc
