"""The manifest (manifest.json in the job's folder/prefix): the job's memory.

It holds stage states, fingerprints of what produced each output, per-clip status and timings. It
lives in the store beside the artifacts, so a restarted process resumes a job by reading it back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from services.common.store import ArtifactStore
from gateway.pipeline.layout import JobLayout
from gateway.pipeline.options import JobOptions
from gateway.pipeline.states import ClipState, JobState, Stage, StageState


def fingerprint(*parts: Any) -> str:
    """A content key: the same inputs, stage, configuration and model give the same fingerprint."""
    blob = json.dumps(parts, sort_keys=True, default=_jsonable).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return asdict(value)


class Manifest:
    """manifest.json, read and written through the store. Every change is saved at once.

    The async methods change the manifest on the event loop's thread and write it from a worker
    thread, in order: a slow store (S3 retrying) never stalls the loop that serves progress."""

    def __init__(self, store: ArtifactStore, layout: JobLayout, data: dict[str, Any]):
        self.store = store
        self.layout = layout
        self.data = data
        self._write_lock = asyncio.Lock()

    @classmethod
    def open(cls, store: ArtifactStore, layout: JobLayout, job_id: str, song: dict[str, Any],
             options: JobOptions) -> Manifest:
        if store.exists(layout.manifest):
            data = json.loads(store.get_bytes(layout.manifest))
        else:
            data = {"job_id": job_id, "created_at": utc_now(), "stages": {}, "clips": {}}
        data.update(song=song, options=options.to_dict(), state=JobState.RUNNING, error=None)
        manifest = cls(store, layout, data)
        manifest.save()
        return manifest

    def save(self) -> None:
        self.store.put_bytes(self.layout.manifest, self._serialize())

    async def save_async(self) -> None:
        payload = self._serialize()  # a snapshot taken now; writes happen in the order of snapshots
        async with self._write_lock:
            await asyncio.to_thread(self.store.put_bytes, self.layout.manifest, payload)

    def _serialize(self) -> bytes:
        self.data["updated_at"] = utc_now()
        return (json.dumps(self.data, indent=2) + "\n").encode()

    def stage(self, name: Stage) -> dict[str, Any]:
        return self.data["stages"].setdefault(name, {"state": StageState.PENDING})

    def clip(self, index: int) -> dict[str, Any]:
        return self.data["clips"].setdefault(f"{index:04d}", {"state": ClipState.PENDING})

    async def is_fresh(self, record: dict[str, Any], fp: str) -> bool:
        """True when `record` was produced from the same fingerprint and all its outputs still exist."""
        outputs = record.get("outputs", {})
        if record.get("state") != StageState.SUCCEEDED or record.get("fingerprint") != fp or not outputs:
            return False
        return await asyncio.to_thread(lambda: all(self.store.exists(k) for k in outputs.values()))

    async def mark(self, record: dict[str, Any], state: StageState | ClipState, **fields: Any) -> None:
        record["state"] = state
        record.update(fields)
        await self.save_async()

    async def finish(self, state: JobState, error: str | None = None) -> None:
        self.data.update(state=state, error=error)
        await self.save_async()

    def finish_now(self, state: JobState, error: str | None = None) -> None:
        """`finish` for code off the event loop (a worker thread settling a job that never ran)."""
        self.data.update(state=state, error=error)
        self.save()


def utc_now() -> str:
    """Now, in UTC, to the millisecond: when a stage or a clip started and ended is part of its record."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
