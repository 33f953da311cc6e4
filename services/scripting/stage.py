"""The scripting stage: from labels.json and segments.json to prompt.txt, script.json and script.txt.

The prompt is rendered and stored for every writer, also the template writer that does not send
it, so a person can read what an LLM would be asked. The script is validated before it is stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from services.common import artifacts
from services.common.artifacts import Labels, Segmentation
from services.common.errors import InvalidInputError
from services.common.lifecycle import BackendSet
from services.common.stage_api import WriteScriptRequest, StageResult
from services.common.store import ArtifactStore
from services.scripting.prompt import render_prompt
from services.scripting.template_writer import TemplateWriter
from services.scripting.validation import validate_script
from services.scripting.writer import ScriptTask, ScriptWriter

WRITERS: dict[str, type[ScriptWriter]] = {"template": TemplateWriter}

T = TypeVar("T")


class ScriptingStage:
    def __init__(self, store: ArtifactStore, enabled: Sequence[str] = ("template",)):
        self.store = store
        self.writers = BackendSet("scripting", WRITERS, enabled)

    def load(self) -> None:
        self.writers.load()

    @property
    def ready(self) -> bool:
        return self.writers.ready

    def run(self, req: WriteScriptRequest) -> StageResult:
        writer = self.writers.get(req.writer)
        labels = _read(self.store, req.labels_key, Labels.from_dict)
        segmentation = _read(self.store, req.segments_key, Segmentation.from_dict)
        prompt = render_prompt(labels, segmentation, req.inputs)
        self.store.put_text(req.prompt_key, prompt)
        script = writer.write(ScriptTask(prompt, labels, segmentation, req.inputs, req.seed))
        validate_script(script, len(segmentation.segments))
        self.store.put_bytes(req.script_key, artifacts.dumps(script))
        self.store.put_text(req.script_text_key, script.to_text())
        return StageResult(
            keys={"prompt": req.prompt_key, "script": req.script_key, "script_text": req.script_text_key},
            info={"writer": script.writer, "title": script.title, "scenes": len(script.scenes),
                  "characters": len(script.characters)},
        )


def _read(store: ArtifactStore, key: str, parse: Callable[[dict[str, Any]], T]) -> T:
    try:
        return parse(json.loads(store.get_text(key)))
    except KeyError as exc:
        raise InvalidInputError(f"{key!r} is missing or lacks the field {exc}") from exc
    except (TypeError, ValueError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise InvalidInputError(f"{key} cannot be read ({exc})") from exc
