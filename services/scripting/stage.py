"""The scripting stage, both pipelines.

CLAP pipeline (`run`): labels.json and segments.json → the song's sections → the plan prompt and
each section's prompt (prompt.txt) → the writer → plan.json, sections.json, script.json, script.txt.
LALM pipeline (`tell_story`): the song and segments.json → prompt.txt → the audio model's story.txt →
the plan and section prompts (scenes_prompt.txt) → the scene writer (the audio model or an LLM) →
plan.json, sections.json, script.json.

LLM writers write section by section (sectioned.py) and keep every prompt, reply, the plan and each
finished section in the store as they come (journal.py), so a stopped run resumes. The template
writer sends nothing; prompt.txt still holds the plan prompt an LLM would be sent first. The
script is validated before it is stored. `on_progress(done, total, what)` hears of the plan and of
each section as it is written; `is_cancelled()` stops an LLM writer before its next request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from services.common import artifacts, envs
from services.common.artifacts import Labels, Lyrics, Script, Segmentation, read_artifact
from services.common.errors import InvalidInputError
from services.common.lifecycle import Backend, BackendSet
from services.common.scene_rules import load_scene_rules
from services.common.stage_api import StageResult, TellStoryRequest, WriteScriptRequest
from services.common.store import ArtifactStore
from services.common.untrusted import quoted
from services.scripting.journal import JournalKeys, StoreJournal
from services.scripting.llm.conversation import ScriptRepairError
from services.scripting.llm_writers import LlamaCppWriter, LLMScriptWriter, OpenAIWriter, VllmWriter, max_repairs
from services.scripting.prompt import (
    SectionPrompts,
    lyric_lines,
    render_cascade_story_prompt,
    render_plan_prompt,
    render_story_plan_prompt,
    render_story_prompt,
    segment_roles,
)
from services.scripting.sectioned import ProgressCallback, SectionedTask, write_sectioned
from services.scripting.sections import MAX_SEGMENTS, group_sections
from services.scripting.storyteller import AudioStoryteller, CascadeStoryteller, Storyteller, ToldStory
from services.scripting.template_writer import TemplateWriter
from services.scripting.validation import validate_script
from services.scripting.writer import ScriptTask, ScriptWriter

BACKENDS: dict[str, type[Backend]] = {
    "template": TemplateWriter,
    "openai": OpenAIWriter,
    "llamacpp": LlamaCppWriter,
    "vllm": VllmWriter,
    "openai-audio": AudioStoryteller,
    "cascade": CascadeStoryteller,
}
T = TypeVar("T")


def _no_progress(done: int, total: int, what: str) -> None:
    pass


def _never() -> bool:
    return False


def section_segments(environ: Mapping[str, str] | None = None) -> int:
    """MVGEN_SCRIPT_SECTION_SEGMENTS: the most segments one section call writes."""
    return max(2, envs.get("MVGEN_SCRIPT_SECTION_SEGMENTS", environ, default=MAX_SEGMENTS))


class ScriptingStage:
    def __init__(self, store: ArtifactStore, enabled: Sequence[str] = ("template",),
                 environ: Mapping[str, str] | None = None):
        """`environ`: the settings the backends read (envs.py); None: this process's environment."""
        self.store = store
        self.environ = environ
        # The cascade storyteller tells with an LLM writer this stage also serves, when it serves one: one
        # model in memory, not two.
        registry: dict[str, Callable[..., Backend]] = {
            **BACKENDS, "cascade": lambda environ=None: CascadeStoryteller(serving=self._served_llm, environ=environ)}
        self.backends = BackendSet("scripting", registry, enabled, environ)

    def _served_llm(self, name: str) -> LLMScriptWriter | None:
        backend = self.backends.backends.get(name)
        return backend if isinstance(backend, LLMScriptWriter) else None

    def load(self) -> None:
        self.backends.load()

    @property
    def ready(self) -> bool:
        return self.backends.ready

    def run(self, req: WriteScriptRequest, on_progress: ProgressCallback = _no_progress,
            is_cancelled: Callable[[], bool] = _never) -> StageResult:
        writer = self._backend(req.writer, ScriptWriter, "a script writer")
        fallback = self._backend(req.fallback_writer, ScriptWriter, "a script writer") if req.fallback_writer else None
        labels = read_artifact(self.store, req.labels_key, Labels)
        segmentation = read_artifact(self.store, req.segments_key, Segmentation)
        lyrics = _read_lyrics(self.store, req.lyrics_key) if req.lyrics_key else None
        sections = group_sections(segmentation, segment_roles(labels), section_segments(self.environ))
        plan_prompt = render_plan_prompt(labels, segmentation, sections, req.inputs, lyrics=lyrics)
        journal = StoreJournal(self.store, _journal_keys(req, req.prompt_key), plan_prompt)
        if not isinstance(writer, LLMScriptWriter):
            self.store.put_text(req.prompt_key, plan_prompt)
        task = ScriptTask(labels, segmentation, req.inputs, req.seed,
                          SectionedTask(sections, plan_prompt, SectionPrompts(segmentation, labels, lyrics=lyrics),
                                        req.seed, lyric_lines(lyrics)),
                          journal, journal.transcript, on_progress, is_cancelled)
        info: dict[str, Any] = {"writer": writer.name, "sections": len(sections)}
        if lyrics is not None:
            info.update(lyrics_source=lyrics.source, vocal_segments=lyrics.vocal_segments)
        try:
            script = writer.write(task)
        except ScriptRepairError as exc:
            if fallback is None:
                raise
            info.update(fallback=fallback.name, fallback_reason=str(exc))
            script = fallback.write(task)
        finally:
            journal.save_transcript(journal.transcript)
        keys = self._save_script(script, len(segmentation.segments), req.script_key, req.script_text_key)
        if isinstance(writer, LLMScriptWriter):
            info.update(_writer_info(journal, writer.chat.model))
        return StageResult(keys={"prompt": req.prompt_key, **keys, **journal.written_keys()},
                           info={**info, **_script_info(script)})

    def tell_story(self, req: TellStoryRequest, on_progress: ProgressCallback = _no_progress,
                   is_cancelled: Callable[[], bool] = _never) -> StageResult:
        storyteller = self._backend(req.storyteller, Storyteller, "a storyteller")
        scene_writer = (self._backend(req.scene_writer, LLMScriptWriter, "an LLM writer") if req.scene_writer
                        else storyteller)
        segmentation = read_artifact(self.store, req.segments_key, Segmentation)
        labels = read_artifact(self.store, req.labels_key, Labels) if req.labels_key else None
        lyrics = _read_lyrics(self.store, req.lyrics_key) if req.lyrics_key else None
        sections = group_sections(segmentation, segment_roles(labels) if labels else None,
                                  section_segments(self.environ))
        if storyteller.hears_audio:
            prompt = render_story_prompt(segmentation, req.inputs)
        elif labels is None:
            raise InvalidInputError(f"the storyteller {storyteller.name} tells the story from what the analysis "
                                    f"stage heard, and the request names no labels.json (labels_key)")
        else:
            prompt = render_cascade_story_prompt(labels, lyrics, segmentation, sections, req.inputs)
        story, told = self._story(req, storyteller, prompt, segmentation.song_duration)
        plan_prompt = render_story_plan_prompt(story, segmentation, sections, req.inputs)
        story_reasoning = f"===== the story\n{told.reply.reasoning.rstrip()}\n" if told and told.reply.reasoning else ""
        journal = StoreJournal(self.store, _journal_keys(req, req.scenes_prompt_key), plan_prompt, story_reasoning)
        task = SectionedTask(sections, plan_prompt, SectionPrompts(segmentation, labels, story=story, lyrics=lyrics),
                             req.seed, lyric_lines(lyrics))
        try:
            script = write_sectioned(scene_writer.chat, task, writer=scene_writer.name,
                                     max_repairs=max_repairs(self.environ), rules=load_scene_rules(), journal=journal,
                                     transcript=journal.transcript, on_progress=on_progress, is_cancelled=is_cancelled)
        finally:
            journal.save_transcript(journal.transcript)
        keys = self._save_script(script, len(segmentation.segments), req.script_key, req.script_text_key)
        story_info: dict[str, Any] = {"story_kept": True} if told is None else {
            "storyteller_model": told.reply.model, "story_seconds": round(told.reply.seconds, 3)}
        if told is not None and storyteller.hears_audio:
            # What the model heard: the whole song, in one window or several (each a request of its own).
            story_info.update(audio_bytes=told.audio_bytes, audio_kbps=told.audio_kbps,
                              audio_windows=[[round(a, 3), round(b, 3)] for a, b in told.windows],
                              audio_heard_seconds=round(sum(b - a for a, b in told.windows), 3))
        if not storyteller.hears_audio:  # what the story was told from, since no model heard the song itself
            assert labels is not None  # a storyteller that does not hear the song was refused without them
            story_info["story_from"] = f"{labels.analyzer} labels" + (f", {lyrics.source} lyrics" if lyrics else "")
        if lyrics is not None:
            story_info.update(lyrics_source=lyrics.source, vocal_segments=lyrics.vocal_segments)
        return StageResult(
            keys={"prompt": req.prompt_key, "story": req.story_key, "scenes_prompt": req.scenes_prompt_key, **keys,
                  **journal.written_keys()},
            info={"storyteller": storyteller.name, "story_words": len(story.split()), **story_info,
                  "writer": scene_writer.name, "sections": len(sections),
                  **_writer_info(journal, scene_writer.chat.model), **_script_info(script)})

    def _story(self, req: TellStoryRequest, storyteller: Storyteller, prompt: str,
               seconds: float) -> tuple[str, ToldStory | None]:
        """The story: the one an earlier run was told from the same prompt (a rerun resumes), or a new one."""
        if self.store.exists(req.story_key) and self.store.exists(req.prompt_key) and \
                self.store.get_text(req.prompt_key) == prompt:
            return self.store.get_text(req.story_key).strip(), None
        self.store.put_text(req.prompt_key, prompt)
        if storyteller.hears_audio:
            with self.store.local_path(req.song_key) as song:
                told = storyteller.tell(prompt, req.seed, song, seconds)
        else:
            told = storyteller.tell(prompt, req.seed)
        story = told.reply.answer.strip()
        self.store.put_text(req.story_key, story + "\n")
        return story, told

    def _backend(self, name: str, kind: type[T], role: str) -> T:
        backend = self.backends.get(name)
        if not isinstance(backend, kind):
            raise InvalidInputError(f"the scripting backend {quoted(name)} is not {role}")
        return backend

    def _save_script(self, script: Script, n_segments: int, script_key: str, text_key: str) -> dict[str, str]:
        validate_script(script, n_segments)
        self.store.put_bytes(script_key, artifacts.dumps(script))
        self.store.put_text(text_key, script.to_text())
        return {"script": script_key, "script_text": text_key}


def _journal_keys(req: WriteScriptRequest | TellStoryRequest, prompt_key: str) -> JournalKeys:
    return JournalKeys(prompt_key, req.response_key, req.reasoning_key, req.plan_key, req.plan_text_key,
                       req.sections_key)


def _writer_info(journal: StoreJournal, model: str) -> dict[str, Any]:
    transcript = journal.transcript
    return {"model": model, "repairs": transcript.repairs, **transcript.usage(), **journal.info()}


def _script_info(script: Script) -> dict[str, Any]:
    return {"script_writer": script.writer, "title": script.title, "scenes": len(script.scenes),
            "characters": len(script.characters)}


def _read_lyrics(store: ArtifactStore, key: str) -> Lyrics:
    """lyrics.json, or InvalidInputError naming the key when it is not there or not lyrics."""
    if not store.exists(key):
        raise InvalidInputError(f"no lyrics at {quoted(key)} (lyrics_key): analyse the song with lyrics first, "
                                f"or leave lyrics_key empty")
    return read_artifact(store, key, Lyrics)
