"""The gateway's jobs: created idempotently, run by the Orchestrator, watched, cancelled, resumed.

Everything a job needs to run again lives in the store: `jobs/<id>/job.json` (the request: song,
resolved options, client, request id, creation time) and the orchestrator's manifest beside it.
At start the registry reads every job back and starts again each one whose manifest is not
terminal; the orchestrator's fingerprints skip what finished, so nothing finished is redone.

What clients see (job_pb2.Job) is built from the manifest plus the orchestrator's live JobEvents
(clip progress is never written to the store). Store I/O runs in worker threads.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from services.common.errors import InvalidInputError, MvgenError, ResourceExhaustedError, TransientError
from services.common.pb import job_pb2, song_pb2
from services.common.store import ArtifactStore
from services.common.untrusted import quoted
from gateway.pipeline.manifest import Manifest
from gateway.pipeline.orchestrator import Orchestrator
from gateway.pipeline.stage_clients import StageClients
from gateway.pipeline.states import JobState
from gateway.server.errors import AlreadyExistsError, NotFoundError
from gateway.server.metrics import WorkCounts
from gateway.server.records import JobRecord, StoredState, read_json, read_stored
from gateway.server.status import JobStatus, timestamp_now

log = logging.getLogger(__name__)
T = TypeVar('T')

REQUEST_ID_TTL_SECONDS = 24 * 3600
MAX_REQUEST_ID_CHARS = 200
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000
STAGES_RETRY_SECONDS = 5.0  # while the stage services are not ready, jobs wait (QUEUED) and try again this often
SETTLE_RETRY_SECONDS = 5.0  # while the store is unreachable, how often a job's end is tried again to be recorded
JOB_ID = re.compile(r"[0-9a-f]{32}")  # what new_job_id makes: checked before any lookup


@dataclass(eq=False)
class JobRun:
    """A job as the registry runs it: what clients see of it, and the tasks and flags that control its run."""

    status: JobStatus
    orchestrator: Orchestrator | None = None
    runner: asyncio.Task[None] | None = None  # the whole run, settling included
    work: asyncio.Task[Any] | None = None  # the cancellable part: waiting for a slot, the orchestrator
    user_cancelled: bool = False
    interrupted: bool = False


class JobRegistry:
    def __init__(self, store: ArtifactStore, stages: StageClients, *, max_active_jobs: int,
                 observe_stage: Callable[[str, float], None], max_jobs_per_client: int = 0,
                 shared_cache: bool = False):
        """`max_jobs_per_client`: jobs one client may have queued or running at once (0: no limit).
        `shared_cache`: one output cache for every client (see output_cache)."""
        self.store = store
        self.stages = stages
        self.observe_stage = observe_stage
        self.max_jobs_per_client = max_jobs_per_client
        self.shared_cache = shared_cache
        self._creating: dict[str, int] = {}  # per client, jobs being created (their song is probed)
        self._runs: dict[str, JobRun] = {}
        self._slots = asyncio.Semaphore(max(1, max_active_jobs))
        # Concurrent CreateJob calls with one request id wait for each other; the store record covers restarts.
        self._request_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Read every job back from the store and start again those that had not ended."""
        records = await asyncio.to_thread(self._load_records)
        for record, stored in records:
            run = JobRun(JobStatus(record, self.store, self.observe_stage))
            run.status.apply_stored(stored)
            self._runs[record.job_id] = run
            if not run.status.is_terminal:
                log.info("resuming job %s", record.job_id)
                self._launch(run)

    def _load_records(self) -> list[tuple[JobRecord, StoredState]]:
        loaded = []
        for key in self.store.list("jobs/"):
            parts = key.split("/")
            if len(parts) != 3 or parts[2] != "job.json":
                continue
            try:
                record = JobRecord.from_json(self.store.get_bytes(key))
                loaded.append((record, read_stored(self.store, record.layout, record.options.fps)))
            except (ValueError, KeyError):
                log.exception("skipping unreadable job record %s", key)
        return loaded

    async def create(self, client: str, request_id: str, request_fingerprint: str,
                     song: Callable[[], Awaitable[song_pb2.Song]], options: job_pb2.JobOptions,
                     revision: job_pb2.JobRevision | None = None) -> job_pb2.Job:
        """A new job, or the one an earlier call with the same request id made. `song` resolves (and
        probes) the song; it is called only when a job is created. `revision`: the job revises another
        (ReviseJob); CreateJob and ReviseJob share a client's request ids."""
        if self._closing:
            raise TransientError("the gateway is shutting down; retry")
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidInputError(f"request_id is longer than {MAX_REQUEST_ID_CHARS} characters")
        if not request_id:
            return await self._create_counted(client, request_id, song, options, revision)
        lock = self._request_locks.setdefault((client, request_id), asyncio.Lock())
        async with lock:
            key = f"requests/{client}/{hashlib.sha256(request_id.encode()).hexdigest()}.json"
            earlier = await asyncio.to_thread(read_json, self.store, key)
            fresh = earlier and time.time() - earlier["created"] < REQUEST_ID_TTL_SECONDS
            if earlier and fresh and earlier["job_id"] in self._runs:
                if earlier["request_fingerprint"] != request_fingerprint:
                    raise AlreadyExistsError(f"request_id {quoted(request_id)} was used for job {earlier['job_id']} "
                                             "with another song or options" + (" or revision" if revision else ""))
                return self._runs[earlier["job_id"]].status.snapshot()
            job = await self._create_counted(client, request_id, song, options, revision)
            entry = {"job_id": job.job_id, "request_fingerprint": request_fingerprint, "created": time.time()}
            await asyncio.to_thread(self.store.put_bytes, key, json.dumps(entry).encode())
            return job

    async def _create_counted(self, client: str, request_id: str, song: Callable[[], Awaitable[song_pb2.Song]],
                              options: job_pb2.JobOptions, revision: job_pb2.JobRevision | None) -> job_pb2.Job:
        """_create within the client's limit; a job being created counts from the start (no await
        between the count and the reservation), so concurrent calls cannot all slip under it."""
        live = self._creating.get(client, 0) + sum(
            r.status.record.client == client and not r.status.is_terminal for r in self._runs.values())
        if self.max_jobs_per_client and live >= self.max_jobs_per_client:
            raise ResourceExhaustedError(
                f"you have {live} jobs queued or running; one client may have at most {self.max_jobs_per_client} "
                "at once: wait for one to end, or cancel one")
        self._creating[client] = self._creating.get(client, 0) + 1
        try:
            return await self._create(client, request_id, await song(), options, revision)
        finally:
            self._creating[client] -= 1

    async def _create(self, client: str, request_id: str, song: song_pb2.Song, options: job_pb2.JobOptions,
                      revision: job_pb2.JobRevision | None) -> job_pb2.Job:
        record = JobRecord(new_job_id(), client, request_id, song, options, timestamp_now(), revision)
        await asyncio.to_thread(self.store.put_bytes, record.layout.key("job.json"), record.to_json())
        run = JobRun(JobStatus(record, self.store, self.observe_stage))
        self._runs[record.job_id] = run
        log.info("job %s created by client %s for song %s%s", record.job_id, client, song.song_id,
                 f", revising job {revision.revises_job_id}" if revision is not None else "")
        self._launch(run)
        return run.status.snapshot()

    def get(self, client: str, job_id: str) -> JobStatus:
        return self._run_of(client, job_id).status

    def _run_of(self, client: str, job_id: str) -> JobRun:
        if not JOB_ID.fullmatch(job_id):
            raise InvalidInputError("job_id must be the 32 hexadecimal digits CreateJob returned, "
                                    f"not {quoted(job_id)}")
        run = self._runs.get(job_id)
        if run is None or run.status.record.client != client:  # another client's job is as unknown as none
            raise NotFoundError(f"no job {quoted(job_id)}")
        return run

    def list(self, client: str, state: int, page_size: int, page_token: str) -> tuple[list[job_pb2.Job], str]:
        if state and state not in job_pb2.JobState.values():
            raise InvalidInputError(f"unknown job state {state}")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if size < 0:
            raise InvalidInputError("page_size must not be negative")
        views = sorted((r.status for r in self._runs.values()
                        if r.status.record.client == client and (not state or r.status.job.state == state)),
                       key=_listing_key, reverse=True)
        if page_token:
            after = _decode_page_token(page_token, state)
            views = [v for v in views if _listing_key(v) < after]
        page = views[:size]
        token = _encode_page_token(_listing_key(page[-1]), state) if len(views) > size else ""
        return [v.snapshot() for v in page], token

    async def cancel(self, client: str, job_id: str) -> job_pb2.Job:
        run = self._run_of(client, job_id)
        if run.status.is_terminal or run.runner is None:
            return run.status.snapshot()
        if not run.user_cancelled:
            run.user_cancelled = True
            if run.orchestrator is not None:
                run.orchestrator.cancel()  # the stage clients stop in-flight clips
            if run.work is not None:
                run.work.cancel()  # stops the stage call in progress and a job still waiting for a slot
        await asyncio.wait([run.runner])
        return run.status.snapshot()

    async def close(self) -> None:
        """Stop every running job so that it resumes at the next start, and end the watches."""
        self._closing = True
        runners = []
        for run in self._runs.values():
            if run.runner is None or run.runner.done():
                continue
            if not run.user_cancelled:
                run.interrupted = True
                if run.orchestrator is not None:
                    run.orchestrator.cancel(interrupted=True)
                if run.work is not None:
                    run.work.cancel()
            runners.append(run.runner)
        if runners:
            await asyncio.wait(runners)
        for task in self._background:
            task.cancel()
        for run in self._runs.values():
            run.status.close_watchers()

    def counts(self) -> WorkCounts:
        views = [r.status for r in list(self._runs.values())]  # called from the metrics thread: a copy first
        by_state: dict[str, int] = {}
        for view in views:
            by_state[view.state_name] = by_state.get(view.state_name, 0) + 1
        return WorkCounts(by_state, sum(v.clips_pending for v in views), sum(v.clips_in_flight for v in views))

    # Running -------------------------------------------------------------------------------------------

    def _launch(self, run: JobRun) -> None:
        run.runner = asyncio.ensure_future(self._run(run))

    async def _run(self, run: JobRun) -> None:
        run.status.begin_run()
        run.work = asyncio.ensure_future(self._work(run))
        await asyncio.wait([run.work])
        error = None if run.work.cancelled() else run.work.exception()
        if error is not None and not isinstance(error, MvgenError):
            log.error("job %s failed", run.status.record.job_id, exc_info=error)
        run.orchestrator = None
        try:
            await asyncio.to_thread(self._settle, run, error)
            recorded = True
        except MvgenError as exc:  # the store is unreachable: said in a line, no traceback needed
            log.warning("job %s: cannot record how it ended: %s", run.status.record.job_id, exc)
            recorded = False
        except Exception:
            log.exception("job %s: cannot record how it ended", run.status.record.job_id)
            recorded = False
        await run.status.end_run()
        if not recorded and not run.interrupted:
            # The store is unreachable: say how the job ended from memory, and record it once the store is back.
            run.status.show_unrecorded_end(error, cancelled=run.user_cancelled)
            self._spawn(self._settle_later(run, error))
        log.info("job %s %s", run.status.record.job_id,
                 JobState.INTERRUPTED if run.interrupted else run.status.state_name)

    async def _settle_later(self, run: JobRun, error: BaseException | None) -> None:
        while not self._closing:
            await asyncio.sleep(SETTLE_RETRY_SECONDS)
            try:
                await asyncio.to_thread(self._settle, run, error)
            except Exception as exc:
                log.warning("job %s: still cannot record how it ended: %s", run.status.record.job_id, exc)
                continue
            await run.status.refresh()
            return

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _work(self, run: JobRun) -> None:
        async with self._slots:
            while True:
                try:
                    await self.stages.wait_ready()
                    break
                except TransientError as exc:
                    log.warning("job %s waits for the stages: %s", run.status.record.job_id, exc)
                    await asyncio.sleep(STAGES_RETRY_SECONDS)
            run.orchestrator = Orchestrator(self.store, self.stages, on_event=run.status.on_event,
                                             output_cache=output_cache(run.status.record.client, self.shared_cache))
            run.status.live = run.orchestrator.state
            await run.orchestrator.run(run.status.record.spec())

    def _settle(self, run: JobRun, error: BaseException | None) -> None:
        """Make the manifest say how the run ended where the orchestrator could not: a job cancelled
        or failed before it started. (A shutdown leaves it as it is: unfinished, so it resumes.)"""
        if run.interrupted:
            return
        record = run.status.record
        manifest = read_json(self.store, record.layout.manifest)
        if manifest is not None and JobState.from_record(manifest.get("state"), JobState.RUNNING).is_terminal:
            return
        spec = record.spec()
        opened = Manifest.open(self.store, spec.layout, spec.job_id, spec.song, spec.options)
        if run.user_cancelled:
            opened.finish_now(JobState.CANCELLED, "cancelled by the user")
        else:
            opened.finish_now(JobState.FAILED,
                              str(error) if isinstance(error, MvgenError) else f"internal error: {error!r}")


def new_job_id() -> str:
    return uuid.uuid4().hex


def output_cache(client: str, shared: bool) -> str:
    """Where a client's jobs publish and find outputs by fingerprint. Each client has its own cache:
    a job reuses only what the same client's jobs made, so a reused output ("cached") tells nobody
    that someone else processed the same song. A deployment may share one cache among all its
    clients (MVGEN_SHARED_CACHE) to save the work, at the cost of that knowledge."""
    return "cache/shared/" if shared else f"cache/clients/{client}/"


def _listing_key(view: JobStatus) -> tuple[int, str]:
    """Jobs are listed in descending order of this key: newest first, ties broken by id."""
    return view.record.create_time.ToNanoseconds(), view.record.job_id


def _encode_page_token(key: tuple[int, str], state: int) -> str:
    raw = json.dumps({"after": [key[0], key[1]], "state": state}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_page_token(token: str, state: int) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        after = (int(data["after"][0]), str(data["after"][1]))
    except (ValueError, KeyError, IndexError, TypeError):
        raise InvalidInputError("page_token is not one this gateway returned") from None
    if data.get("state") != state:
        raise InvalidInputError("page_token belongs to a listing with another state filter")
    return after
