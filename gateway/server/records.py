"""What the store holds of a job: its record (jobs/<id>/job.json: what was asked, by whom, when),
and its manifest, segments and script as last written."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.artifacts import Script, Segmentation, read_artifact
from services.common.errors import InvalidInputError
from services.common.pb import job_pb2, song_pb2
from services.common.store import ArtifactStore
from gateway.pipeline.layout import JobLayout
from gateway.pipeline.orchestrator import JobSpec
from gateway.pipeline.states import Stage, StageState
from gateway.server.options import job_options

log = logging.getLogger(__name__)
T = TypeVar('T')


@dataclass(frozen=True)
class JobRecord:
    """jobs/<id>/job.json: what was asked, by whom, when."""

    job_id: str
    client: str
    request_id: str
    song: song_pb2.Song
    options: job_pb2.JobOptions
    create_time: Timestamp

    @property
    def layout(self) -> JobLayout:
        return JobLayout(prefix=f"jobs/{self.job_id}/")

    def to_json(self) -> bytes:
        return (json.dumps({
            "job_id": self.job_id, "client": self.client, "request_id": self.request_id,
            "create_time": self.create_time.ToJsonString(),
            "song": json_format.MessageToDict(self.song, preserving_proto_field_name=True),
            "options": json_format.MessageToDict(self.options, preserving_proto_field_name=True),
        }, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> JobRecord:
        d = json.loads(data)
        created = Timestamp()
        created.FromJsonString(d["create_time"])
        return cls(d["job_id"], d["client"], d["request_id"],
                   json_format.ParseDict(d["song"], song_pb2.Song()),
                   json_format.ParseDict(d["options"], job_pb2.JobOptions()), created)

    def spec(self) -> JobSpec:
        song = self.song
        return JobSpec(job_id=self.job_id, layout=self.layout, song_key=song.song_key,
                       song={"sha256": song.sha256, "source_name": song.file_name, "key": song.song_key,
                             "duration": song.duration_seconds, "sample_rate": song.sample_rate_hz,
                             "channels": song.channels},
                       options=job_options(self.options))


@dataclass(frozen=True)
class StoredState:
    """What the store (or the run in this process) says about a job: its manifest and, once written,
    its segments and script, typed, with what each was read at (its stage's fingerprint)."""

    manifest: dict[str, Any] | None
    segmentation: Segmentation | None = None
    script: Script | None = None
    frames: dict[int, int] = field(default_factory=dict)  # each segment's frames at the job's fps
    read_at: dict[str, str] = field(default_factory=dict)  # stage -> fingerprint of the output read


OUTPUT_STAGES = (Stage.SEGMENTATION, Stage.SCRIPTING)  # the stages whose outputs clients see in the job itself


def read_stored(store: ArtifactStore, layout: JobLayout, fps: int) -> StoredState:
    """Everything, from the store. Blocking: call from a worker thread."""
    manifest = read_json(store, layout.manifest)
    return StoredState(manifest, **outputs_of(store, layout, fps, manifest))


def unread_outputs(manifest: dict[str, Any] | None, known: StoredState) -> bool:
    """Whether the manifest names a segmentation or script that `known` does not hold: outputs_of would read."""
    stages = (manifest or {}).get("stages", {})
    return any(stages.get(stage, {}).get("state") == StageState.SUCCEEDED
               and known.read_at.get(stage) != stages[stage].get("fingerprint", "")
               for stage in OUTPUT_STAGES)


def outputs_of(store: ArtifactStore, layout: JobLayout, fps: int, manifest: dict[str, Any] | None,
               known: StoredState | None = None) -> dict[str, Any]:
    """The segmentation and the script the manifest says were written, read only when `known` does
    not already hold them at the same fingerprint. Blocking when it reads."""
    stages = (manifest or {}).get("stages", {})
    found: dict[str, Any] = {"read_at": {}}
    for stage, name, key, kind in ((Stage.SEGMENTATION, "segmentation", layout.segments, Segmentation),
                                   (Stage.SCRIPTING, "script", layout.script, Script)):
        record = stages.get(stage, {})
        if record.get("state") != StageState.SUCCEEDED:
            continue
        fp = record.get("fingerprint", "")
        if known is not None and fp and known.read_at.get(stage) == fp:
            found[name] = getattr(known, name)
        else:
            try:
                found[name] = read_artifact(store, key, kind)
            except InvalidInputError as exc:  # gone or edited into nonsense: reported without it
                log.warning("%s", exc)
                continue
        found["read_at"][stage] = fp
    if found.get("segmentation") is not None:
        kept = known.frames if known is not None and known.segmentation is found["segmentation"] else None
        found["frames"] = kept or found["segmentation"].frame_counts(fps)
    return found


def read_json(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes(key))
    except KeyError:
        return None
