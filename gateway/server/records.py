"""What the store holds of a job: its record (jobs/<id>/job.json: what was asked, by whom, when),
and its manifest, segments and script as last written."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.artifacts import ArtifactT, Script, Segmentation, read_artifact
from services.common.errors import InvalidInputError
from services.common.pb import job_pb2, song_pb2
from services.common.store import ArtifactStore
from gateway.pipeline.layout import JobLayout
from gateway.pipeline.orchestrator import JobSpec
from gateway.pipeline.states import Stage, StageState
from gateway.server.options import job_options
from gateway.server.revisions import script_revision

log = logging.getLogger(__name__)
T = TypeVar('T')


@dataclass(frozen=True)
class JobRecord:
    """jobs/<id>/job.json: what was asked, by whom, when; for a revision (ReviseJob), of which job and what
    it changes, so that a restarted gateway resumes a revision as it resumes any job."""

    job_id: str
    client: str
    request_id: str
    song: song_pb2.Song
    options: job_pb2.JobOptions
    create_time: Timestamp
    revision: job_pb2.JobRevision | None = None  # a revision of another job (ReviseJob)

    @property
    def layout(self) -> JobLayout:
        return JobLayout(prefix=f"jobs/{self.job_id}/")

    def to_json(self) -> bytes:
        return (json.dumps({
            "job_id": self.job_id, "client": self.client, "request_id": self.request_id,
            "create_time": self.create_time.ToJsonString(),
            "song": json_format.MessageToDict(self.song, preserving_proto_field_name=True),
            "options": json_format.MessageToDict(self.options, preserving_proto_field_name=True),
            **({"revision": json_format.MessageToDict(self.revision, preserving_proto_field_name=True)}
               if self.revision is not None else {}),
        }, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> JobRecord:
        d = json.loads(data)
        created = Timestamp()
        created.FromJsonString(d["create_time"])
        return cls(d["job_id"], d["client"], d["request_id"],
                   json_format.ParseDict(d["song"], song_pb2.Song()),
                   json_format.ParseDict(d["options"], job_pb2.JobOptions()), created,
                   json_format.ParseDict(d["revision"], job_pb2.JobRevision()) if "revision" in d else None)

    def spec(self) -> JobSpec:
        song = self.song
        return JobSpec(job_id=self.job_id, layout=self.layout, song_key=song.song_key,
                       song={"sha256": song.sha256, "source_name": song.file_name, "key": song.song_key,
                             "duration": song.duration_seconds, "sample_rate": song.sample_rate_hz,
                             "channels": song.channels},
                       options=job_options(self.options),
                       revision=replace(script_revision(self.revision),
                                        revised_edit_key=JobLayout(prefix=f"jobs/{self.revision.revises_job_id}/").edit)
                       if self.revision is not None else None)


@dataclass(frozen=True)
class StoredState:
    """What the store (or the run in this process) says about a job: its manifest and, once written,
    its segments and script, typed."""

    manifest: dict[str, Any] | None
    segmentation: Segmentation | None = None
    script: Script | None = None
    frames: dict[int, int] = field(default_factory=dict)  # each segment's frames at the job's fps


def read_stored(store: ArtifactStore, layout: JobLayout, fps: int) -> StoredState:
    """Everything, from the store. Blocking: call from a worker thread."""
    manifest = read_json(store, layout.manifest)
    stages = (manifest or {}).get("stages", {})
    segmentation = script = None
    if stages.get(Stage.SEGMENTATION, {}).get("state") == StageState.SUCCEEDED:
        segmentation = _read_if_valid(store, layout.segments, Segmentation)
    if stages.get(Stage.SCRIPTING, {}).get("state") == StageState.SUCCEEDED:
        script = _read_if_valid(store, layout.script, Script)
    frames = segmentation.frame_counts(fps) if segmentation is not None else {}
    return StoredState(manifest, segmentation, script, frames)


def _read_if_valid(store: ArtifactStore, key: str, kind: type[ArtifactT]) -> ArtifactT | None:
    try:
        return read_artifact(store, key, kind)
    except InvalidInputError as exc:  # gone or edited into nonsense: the job is shown without it
        log.warning("%s", exc)
        return None


def read_json(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes(key))
    except KeyError:
        return None
