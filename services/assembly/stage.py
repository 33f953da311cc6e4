"""The assembly stage: clips + song from the store → final.mp4 in the store, with the edit's transitions.

With transitions "auto" the stage needs the edit (services/assembly/edit.py). The edit.json at
edit_key is used as written when it is one for these segments: a person may have changed any cut's
transition and run again. It is decided again (and edit.json, edit.txt written) when there is none,
when it was made for other segments or another frame rate, or when it is the policy's own, unchanged,
and the labels it was decided from have changed since. A person's edit that does not fit the
segments is refused (InvalidInputError naming the cut), never overwritten.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack

from services.assembly.assembler import Assembler
from services.assembly.edit import Edit, decide_edit
from services.common import encoding
from services.common.artifacts import Labels, Segmentation, dumps, read_artifact
from services.common.errors import InvalidInputError
from services.common.stage_api import TRANSITION_MODES, AssembleRequest, StageResult
from services.common.store import ArtifactStore
from services.common.untrusted import quoted


class AssemblyStage:
    def __init__(self, store: ArtifactStore):
        self.store = store
        self.assembler = Assembler()

    def load(self) -> None:
        self.assembler.load()

    @property
    def ready(self) -> bool:
        return self.assembler.ready

    def run(self, req: AssembleRequest) -> StageResult:
        _check_request(req)
        needed = [req.song_key, *req.clip_keys]
        if _mode(req) == "auto":
            needed += [key for key in (req.segments_key, req.labels_key) if key]
        missing = [key for key in needed if not self.store.exists(key)]
        if missing:
            raise InvalidInputError(f"{len(missing)} input(s) missing from the store: {', '.join(missing[:5])}")
        keys = {"video": req.video_key}
        edit: Edit | None = None
        edit_info: dict[str, object] = {"transitions": {"cut": len(req.clip_keys) - 1}, "edit_sha256": "",
                                        "edit_source": "none"}
        if _mode(req) == "auto":
            edit, edit_info, written = self._edit(req)
            keys |= written
        self.assembler.load()  # no-op once loaded; a stage used without load() still works
        with ExitStack() as inputs:
            song = inputs.enter_context(self.store.local_path(req.song_key))
            clips = [inputs.enter_context(self.store.local_path(key)) for key in req.clip_keys]
            with self.store.writing(req.video_key) as out_path:
                report = self.assembler.assemble(clips, req.frame_counts, req.fps, req.width, req.height, song,
                                                 out_path, edit=edit)
        return StageResult(keys=keys, info=report.to_info() | edit_info)

    def _edit(self, req: AssembleRequest) -> tuple[Edit, dict[str, object], dict[str, str]]:
        """The edit to render, what the result says of it, and the keys written."""
        segments_raw = self.store.get_bytes(req.segments_key)
        segmentation = read_artifact(self.store, req.segments_key, Segmentation)
        expected = list(segmentation.frame_counts(req.fps).values())
        if expected != list(req.frame_counts):
            raise InvalidInputError(f"the frame counts do not match the segments at {quoted(req.segments_key)} "
                                    f"at {req.fps} fps: they must come from those segments")
        segments_sha = hashlib.sha256(segments_raw).hexdigest()
        labels_sha = hashlib.sha256(self.store.get_bytes(req.labels_key)).hexdigest() if req.labels_key else ""
        written: dict[str, str] = {}
        stored = self._stored_edit(req.edit_key)
        if stored is not None:
            edit, raw = stored
            stale = (edit.segments_sha256 not in ("", segments_sha) or edit.fps != req.fps
                     or (not edit.edited and edit.labels_sha256 != labels_sha))
            if not stale:
                edit.checked(segmentation, req.fps)  # a person's edit that does not fit: refused, naming the cut
                if req.edit_text_key:
                    self.store.put_text(req.edit_text_key, edit.to_text())
                    written["edit_text"] = req.edit_text_key
                source = "edit.json, changed by a person" if edit.edited else "edit.json"
                return edit, _info(edit, raw, source), written
        labels = read_artifact(self.store, req.labels_key, Labels) if req.labels_key else None
        edit = decide_edit(segmentation, labels, req.fps, "auto", segments_sha, labels_sha)
        raw = dumps(edit)
        if req.edit_key:
            self.store.put_bytes(req.edit_key, raw)
            written["edit"] = req.edit_key
        if req.edit_text_key:
            self.store.put_text(req.edit_text_key, edit.to_text())
            written["edit_text"] = req.edit_text_key
        return edit, _info(edit, raw, "policy"), written

    def _stored_edit(self, key: str) -> tuple[Edit, bytes] | None:
        """The edit at `key` and its bytes; None when there is none. InvalidInputError when it cannot be read."""
        if not key or not self.store.exists(key):
            return None
        raw = self.store.get_bytes(key)
        try:
            data = json.loads(raw)
        except ValueError as exc:  # bad JSON and bad UTF-8
            raise InvalidInputError(f"{key} is not valid JSON ({exc}): fix it, or delete it to have the edit "
                                    "decided again") from exc
        return Edit.from_dict(data), raw


def _info(edit: Edit, raw: bytes, source: str) -> dict[str, object]:
    return {"transitions": edit.counts(), "edit_sha256": hashlib.sha256(raw).hexdigest(), "edit_source": source}


def _mode(req: AssembleRequest) -> str:
    return req.transitions or "none"  # proto3: an unset string reads as ''


def _check_request(req: AssembleRequest) -> None:
    problems = []
    if not req.clip_keys:
        problems.append("no clips to assemble")
    if len(req.clip_keys) != len(req.frame_counts):
        problems.append(f"{len(req.clip_keys)} clips but {len(req.frame_counts)} frame counts")
    bad_counts = [i for i, n in enumerate(req.frame_counts) if n < 1]
    if bad_counts:
        problems.append(f"frame counts must be at least 1 (clips {bad_counts[:10]})")
    problems += encoding.format_problems(req.fps, req.width, req.height)
    if _mode(req) not in TRANSITION_MODES:
        problems.append(f"unknown transitions {quoted(req.transitions)}; choose one of: {', '.join(TRANSITION_MODES)}")
    elif _mode(req) == "auto" and not req.segments_key:
        problems.append("transitions \"auto\" needs the segments (segments_key) to decide the edit from")
    if problems:
        raise InvalidInputError("bad assembly request: " + "; ".join(problems))
