"""What the store holds of a job: its record (jobs/<id>/job.json: what was asked, by whom, when),
and its manifest, segments and script as last written."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.pb import job_pb2, song_pb2
from services.common.store import ArtifactStore
from gateway.pipeline.layout import JobLayout
from gateway.pipeline.orchestrator import JobSpec
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
    """What the store says about a job: its manifest and, once written, segments and script."""

    manifest: dict[str, Any] | None
    segments: list[dict[str, Any]]
    script: dict[str, Any] | None


def read_stored(store: ArtifactStore, layout: JobLayout) -> StoredState:
    """Blocking: call from a worker thread."""
    manifest = read_json(store, layout.manifest)
    stages = (manifest or {}).get("stages", {})
    segments = script = None
    if stages.get("segmentation", {}).get("state") == "succeeded":
        segments = read_json(store, layout.segments)
    if stages.get("scripting", {}).get("state") == "succeeded":
        script = read_json(store, layout.script)
    return StoredState(manifest, (segments or {}).get("segments", []), script)


def read_json(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes(key))
    except KeyError:
        return None
