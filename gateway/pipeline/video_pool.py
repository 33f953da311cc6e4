"""The video replicas behind one address, and the clips the gateway sends them (ARCHITECTURE.md, "Video fan-out").

A video replica holds one model on one GPU and generates one clip at a time, so the gateway keeps
as many clips in flight as there are SERVING replicas. The replicas come from the video address:
a comma-separated list of host:port, or `dns:///name:port` (a headless Service in Kubernetes),
re-resolved every few seconds so that `kubectl scale` adds or removes replicas without a gateway
restart. Each replica has its own channel and is polled with grpc.health.v1 Check; the pool's
own count of clips in flight per replica says which one is free. A replica that refuses a clip
(RESOURCE_EXHAUSTED: busy with someone else's, or out of memory) or loses one (UNAVAILABLE, or
CANCELLED by its server: it died or stopped mid-clip) rests for a backoff while the clip goes to
another replica, or back to it once it serves again; a clip gives up after `retry_seconds` of that.
The serving replicas' configuration digests (StageInfoService) are what `backend_config` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.errors import InvalidInputError, JobCancelledError, StageFailedError, TransientError
from services.common.pb import stage_info_service_pb2 as info_pb
from services.common.pb import stage_info_service_pb2_grpc as info_grpc
from services.common.pb import video_service_pb2 as video_pb
from services.common.pb import video_service_pb2_grpc as video_grpc
from services.common.stage_api import GenerateClipRequest, StageResult
from services.common.transport.channel import backoff_seconds, open_channel
from services.common.transport.convert import result_from_message, to_message
from services.common.transport.errors import error_for_status
from gateway.pipeline.stage_clients import CancelCheck, ProgressCallback, RetryCallback

log = logging.getLogger(__name__)

VIDEO_SERVICE = video_pb.DESCRIPTOR.services_by_name["VideoService"].full_name
DNS_SCHEME = "dns:///"
CANCEL_POLL_SECONDS = 0.2  # how often a waiting or streaming clip looks at is_cancelled()
# Busy (another caller's clip) or out of memory; died; stopped by its server: another try may work.
RETRIED_CODES = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
HEALTH_POLL_SECONDS = 0.5  # a replica that stops or comes back is noticed within about this long
HEALTH_TIMEOUT_SECONDS = 5.0  # generous: a replica busy rendering may answer slowly, and is not down
INFO_TIMEOUT_SECONDS = 10.0  # StageInfoService answers from memory; this only bounds a stuck replica

Resolver = Callable[[], Awaitable[Sequence[str]]]


def resolver_for(target: str) -> tuple[Resolver, bool]:
    """How to find the replicas named by `target`, and whether they can change (DNS) or not (a list)."""
    if target.startswith(DNS_SCHEME):
        host, port = _split_host_port(target[len(DNS_SCHEME):])

        async def resolve_dns() -> list[str]:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            return sorted({_join_host_port(str(info[4][0]), port) for info in infos})

        return resolve_dns, True
    addresses = [a.strip() for a in target.split(",") if a.strip()]

    async def listed() -> list[str]:
        return addresses

    return listed, False


def _split_host_port(hostport: str) -> tuple[str, int]:
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidInputError(f"video address {DNS_SCHEME}{hostport}: expected {DNS_SCHEME}name:port")
    return host.strip("[]"), int(port)


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ReplicaStats:
    """One replica as the metrics and the tests see it."""

    address: str
    health: str  # SERVING, NOT_SERVING, or why it cannot be reached
    in_flight: int
    clips_done: int
    refusals: int  # clips it answered RESOURCE_EXHAUSTED (busy, or out of memory)
    failures: int  # clips lost with it (UNAVAILABLE, cancelled by the server, e.g. it died)


@dataclass(eq=False)
class _Replica:
    address: str
    channel: grpc.aio.Channel
    stub: video_grpc.VideoServiceStub
    health: str = "unknown"
    in_flight: int = 0
    clips_done: int = 0
    refusals: int = 0
    failures: int = 0
    setbacks: int = 0  # refusals and failures since its last finished clip: the length of its next rest
    resting_until: float = 0.0
    last_started: float = 0.0
    removed: bool = False  # no longer resolved: its channel closes when its last clip ends
    health_poll: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def serving(self) -> bool:
        return self.health == "SERVING"

    def stats(self) -> ReplicaStats:
        return ReplicaStats(self.address, self.health, self.in_flight, self.clips_done, self.refusals,
                            self.failures)


class VideoPool:
    def __init__(self, resolve: Resolver, *, name: str, refresh_seconds: float | None,
                 clip_timeout_seconds: float, retry_seconds: float, stage_secret: str | None = None):
        """`resolve` lists the replicas' addresses; with `refresh_seconds` it is asked again that often.
        `retry_seconds` bounds how long a clip keeps trying after a refusal or failure, and how long it
        waits while no replica serves; waiting for a busy but serving replica is not bounded.
        `stage_secret` goes with every call to a replica (services/common/transport/auth.py)."""
        self.name = name
        self.stage_secret = stage_secret
        self.refresh_seconds = refresh_seconds
        self.clip_timeout_seconds = clip_timeout_seconds
        self.retry_seconds = retry_seconds
        self.clips_pending = 0  # clips waiting here for a free replica
        self.clips_in_flight = 0  # clips being generated, on replicas resolved or already gone
        self._resolve = resolve
        self._replicas: dict[str, _Replica] = {}
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def for_target(cls, target: str, *, clip_timeout_seconds: float, retry_seconds: float,
                   resolve_seconds: float, stage_secret: str | None = None) -> VideoPool:
        resolve, dynamic = resolver_for(target)
        return cls(resolve, name=target, refresh_seconds=resolve_seconds if dynamic else None,
                   clip_timeout_seconds=clip_timeout_seconds, retry_seconds=retry_seconds,
                   stage_secret=stage_secret)

    async def start(self) -> None:
        await self.refresh()
        if self.refresh_seconds:
            self._spawn(self._keep_resolving(self.refresh_seconds))

    async def close(self) -> None:
        tasks = [*self._tasks, *(r.health_poll for r in self._replicas.values() if r.health_poll)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(r.channel.close() for r in self._replicas.values()))
        self._replicas.clear()

    def serving_count(self) -> int:
        return sum(r.serving for r in self._replicas.values())

    def stats(self) -> list[ReplicaStats]:
        return [r.stats() for r in self._replicas.values()]

    def describe(self) -> str:
        """Each replica and its health, for messages."""
        if not self._replicas:
            return f"no replica found at {self.name}"
        return ", ".join(f"{r.address} {r.health}" for r in self._replicas.values())

    async def refresh(self) -> None:
        """Resolve the replicas again: open a channel and a health poll to each new one, retire the gone."""
        try:
            addresses = list(dict.fromkeys(await self._resolve()))
        except OSError as exc:
            # A failed lookup is not an empty answer: keep what is known, their health polls still report.
            log.warning("resolving video replicas at %s failed (%s); keeping %d known", self.name, exc,
                        len(self._replicas))
            return
        for address in addresses:
            if address not in self._replicas:
                channel = open_channel(address, self.stage_secret)
                replica = _Replica(address, channel, video_grpc.VideoServiceStub(channel))
                replica.health_poll = asyncio.ensure_future(self._poll_health(replica))
                self._replicas[address] = replica
                log.info("video replica %s added", address)
        for address in [a for a in self._replicas if a not in addresses]:
            replica = self._replicas.pop(address)
            replica.removed = True
            if replica.health_poll:
                replica.health_poll.cancel()
            if replica.in_flight == 0:
                await replica.channel.close()
            log.info("video replica %s removed", address)
        self._notify()

    async def wait_serving(self, timeout: float) -> bool:
        """True once some replica serves; False if none does within `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.serving_count() == 0:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        return True

    async def backend_config(self) -> str:
        """The configuration digests of the serving replicas, joined. While none serves (scaled to zero)
        this waits, as a clip would, up to `retry_seconds`: the job's clips count as pending meanwhile,
        which is what scales the replicas up."""
        if not await self.wait_serving(self.retry_seconds):
            raise TransientError(f"no video replica has served for {self.retry_seconds:.0f} s ({self.describe()})")
        serving = [r for r in self._replicas.values() if r.serving]
        answers = await asyncio.gather(*(self._config_digest(r) for r in serving), return_exceptions=True)
        digests = sorted({a for a in answers if isinstance(a, str)})
        if not digests:
            failure = next(a for a in answers if isinstance(a, BaseException))  # every replica's call failed
            if not isinstance(failure, grpc.aio.AioRpcError):
                raise failure
            raise error_for_status(failure.code(), f"no serving video replica said how it is configured "
                                                   f"({self.describe()}): {failure.details()}") from failure
        return "+".join(digests)

    async def _config_digest(self, replica: _Replica) -> str:
        try:
            info = await info_grpc.StageInfoServiceStub(replica.channel).GetStageInfo(
                info_pb.GetStageInfoRequest(), timeout=INFO_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                return ""  # a replica older than StageInfoService: its configuration is unknown
            raise
        return info.config_digest

    async def generate_clip(self, req: GenerateClipRequest, on_progress: ProgressCallback,
                            is_cancelled: CancelCheck, on_retry: RetryCallback) -> StageResult:
        """Generate the clip on a free replica; after a refusal or a loss, on_retry(why), then again."""
        request = to_message(req, video_pb.GenerateClipRequest)
        loop = asyncio.get_running_loop()
        first_setback: float | None = None
        while True:
            replica = await self._acquire(req.index, is_cancelled)
            try:
                result = await self._generate_on(replica, request, on_progress, is_cancelled)
            except grpc.aio.AioRpcError as exc:
                if first_setback is None:
                    first_setback = loop.time()
                self._setback(req.index, replica, exc, loop.time() - first_setback)
                on_retry(f"video replica {replica.address}: {exc.code().name} {exc.details() or ''}".strip())
                continue
            finally:
                self._release(replica)
            replica.clips_done += 1
            replica.setbacks = 0
            return result

    def _setback(self, index: int, replica: _Replica, exc: grpc.aio.AioRpcError, seconds: float) -> None:
        """Rest `replica` and return when the clip may be tried again (`seconds` after its first
        setback); raise the error the status stands for when it may not."""
        code, details = exc.code(), exc.details() or ""
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            raise error_for_status(code, f"clip {index} took longer than {self.clip_timeout_seconds:.0f} s "
                                         f"on video replica {replica.address}") from exc
        if code not in RETRIED_CODES:
            raise error_for_status(code, details) from exc
        self._rest(replica, refused=code is grpc.StatusCode.RESOURCE_EXHAUSTED)
        if seconds > self.retry_seconds:
            # CANCELLED here was the server's doing (the job's own cancel raises before): a lost replica.
            code = grpc.StatusCode.UNAVAILABLE if code is grpc.StatusCode.CANCELLED else code
            raise error_for_status(code, f"clip {index}: video replicas kept failing for "
                                         f"{self.retry_seconds:.0f} s; last, {replica.address}: {details}") from exc
        log.warning("clip %d on video replica %s: %s %s; trying again", index, replica.address, code.name, details)

    async def _generate_on(self, replica: _Replica, request: video_pb.GenerateClipRequest,
                           on_progress: ProgressCallback, is_cancelled: CancelCheck) -> StageResult:
        call = replica.stub.GenerateClip(request, timeout=self.clip_timeout_seconds)
        reading = asyncio.ensure_future(_read_clip_stream(call, on_progress, request.index))
        try:
            while not reading.done():
                await asyncio.wait({reading}, timeout=CANCEL_POLL_SECONDS)
                if not reading.done() and is_cancelled():
                    raise JobCancelledError(f"clip {request.index} was cancelled")
            return reading.result()
        finally:
            if not reading.done():
                call.cancel()  # the replica stops generating at its next frame or step
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)

    async def _acquire(self, index: int, is_cancelled: CancelCheck) -> _Replica:
        loop = asyncio.get_running_loop()
        none_serving_since: float | None = None
        self.clips_pending += 1
        try:
            while True:
                if is_cancelled():
                    raise JobCancelledError(f"clip {index} was cancelled")
                now = loop.time()
                replica = self._pick_free(now)
                if replica is not None:
                    replica.in_flight += 1
                    replica.last_started = now
                    self.clips_in_flight += 1
                    return replica
                if self.serving_count():
                    none_serving_since = None
                elif none_serving_since is None:
                    none_serving_since = now
                elif now - none_serving_since > self.retry_seconds:
                    raise TransientError(f"clip {index}: no video replica has served for "
                                         f"{self.retry_seconds:.0f} s ({self.describe()})")
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), CANCEL_POLL_SECONDS)
        finally:
            self.clips_pending -= 1

    def _pick_free(self, now: float) -> _Replica | None:
        free = [r for r in self._replicas.values()
                if r.serving and r.in_flight == 0 and r.resting_until <= now]
        # The one idle longest: clips spread over the replicas.
        return min(free, key=lambda r: r.last_started, default=None)

    def _rest(self, replica: _Replica, *, refused: bool) -> None:
        if refused:
            replica.refusals += 1
        else:
            replica.failures += 1
            # Likely dead: not picked again before its next health check says SERVING.
            self._set_health(replica, "lost a clip; health not checked since")
        replica.resting_until = asyncio.get_running_loop().time() + backoff_seconds(replica.setbacks)
        replica.setbacks += 1

    def _release(self, replica: _Replica) -> None:
        replica.in_flight -= 1
        self.clips_in_flight -= 1
        if replica.removed and replica.in_flight == 0:
            self._spawn(replica.channel.close())
        self._notify()

    async def _poll_health(self, replica: _Replica) -> None:
        # Check, not Watch: polling works with any health servicer and needs no stream kept alive.
        health = health_pb2_grpc.HealthStub(replica.channel)
        request = health_pb2.HealthCheckRequest(service=VIDEO_SERVICE)
        while True:
            try:
                answer = await health.Check(request, timeout=HEALTH_TIMEOUT_SECONDS)
                self._set_health(replica, health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
            except grpc.aio.AioRpcError as exc:
                self._set_health(replica, f"unreachable ({exc.code().name}: {exc.details()})")
            await asyncio.sleep(HEALTH_POLL_SECONDS)

    def _set_health(self, replica: _Replica, health: str) -> None:
        if health != replica.health:
            if replica.serving or health == "SERVING":
                log.info("video replica %s: %s", replica.address, health)
            replica.health = health
            self._notify()

    def _notify(self) -> None:
        """Wake every waiter: a replica became free, healthy, unhealthy, added or removed."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _keep_resolving(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            await self.refresh()

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _read_clip_stream(call: grpc.aio.UnaryStreamCall, on_progress: ProgressCallback,
                            index: int) -> StageResult:
    result: StageResult | None = None
    async for response in call:
        event = response.WhichOneof("event")
        if event == "progress":
            on_progress(response.progress.fraction)
        elif event == "result":
            result = result_from_message(response.result)
    if result is None:
        raise StageFailedError(f"the video service ended clip {index}'s stream without a result")
    return result
