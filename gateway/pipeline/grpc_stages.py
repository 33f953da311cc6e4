"""Stage clients that call the six stage services over gRPC: the deployed system's `StageClients`.

Each call turns the stage_api dataclass into its request message, calls with a deadline, and turns
the StageResult back; a status code comes back as the error it stands for (INVALID_ARGUMENT as
InvalidInputError, and so on), with the server's message. The other stages are retried with
backoff while they are unavailable or busy (scripting streams its progress, and a retry resumes
from what it saved); clips go through the video replica pool (gateway/pipeline/video_pool.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import envs
from services.common.errors import JobCancelledError, StageFailedError, TransientError
from services.common.pb import (
    analysis_service_pb2,
    analysis_service_pb2_grpc,
    assembly_service_pb2,
    assembly_service_pb2_grpc,
    review_service_pb2,
    review_service_pb2_grpc,
    scripting_service_pb2,
    scripting_service_pb2_grpc,
    segmentation_service_pb2,
    segmentation_service_pb2_grpc,
    stage_info_service_pb2,
    stage_info_service_pb2_grpc,
)
from services.common.stage_api import (
    AnalyzeRequest,
    AssembleRequest,
    GenerateClipRequest,
    ReviewRequest,
    SegmentRequest,
    StageResult,
    TellStoryRequest,
    WriteScriptRequest,
)
from services.common.transport.auth import stage_secret_from_env
from services.common.transport.channel import backoff_seconds, open_channel
from services.common.transport.convert import result_from_message, to_message
from services.common.transport.errors import error_for_status
from gateway.pipeline.stage_clients import CancelCheck, PartsCallback, ProgressCallback, RetryCallback, StageClients
from gateway.pipeline.video_pool import CANCEL_POLL_SECONDS, VideoPool

log = logging.getLogger(__name__)

READY_POLL_SECONDS = 0.25
RETRIED_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
# Spreads calls over every address a name resolves to (replicas of a CPU stage behind a headless Service).
ROUND_ROBIN = ("grpc.lb_policy_name", "round_robin")


@dataclass(frozen=True)
class _StageRpc:
    stub: type
    method: str
    request_type: type[Message]
    service: str  # the name health is checked under


def _stage_rpc(pb: Any, pb_grpc: Any, service: str, method: str, request: str) -> _StageRpc:
    return _StageRpc(getattr(pb_grpc, f"{service}Stub"), method, getattr(pb, request),
                       pb.DESCRIPTOR.services_by_name[service].full_name)


UNARY_STAGES = {
    "segmentation": _stage_rpc(segmentation_service_pb2, segmentation_service_pb2_grpc,
                                 "SegmentationService", "Segment", "SegmentRequest"),
    "analysis": _stage_rpc(analysis_service_pb2, analysis_service_pb2_grpc,
                             "AnalysisService", "Analyze", "AnalyzeRequest"),
    "scripting": _stage_rpc(scripting_service_pb2, scripting_service_pb2_grpc,
                              "ScriptingService", "WriteScript", "WriteScriptRequest"),
    "assembly": _stage_rpc(assembly_service_pb2, assembly_service_pb2_grpc,
                             "AssemblyService", "Assemble", "AssembleRequest"),
    "review": _stage_rpc(review_service_pb2, review_service_pb2_grpc, "ReviewService", "Review", "ReviewRequest"),
}
# The scripting service's second RPC (LALM pipeline), on the scripting stage's channel. Both of its RPCs
# stream progress (the plan, each section), then the result.
TELL_STORY = _stage_rpc(scripting_service_pb2, scripting_service_pb2_grpc,
                          "ScriptingService", "TellStory", "TellStoryRequest")
# Served beside every stage service: its backends' configuration digest.
STAGE_INFO = _stage_rpc(stage_info_service_pb2, stage_info_service_pb2_grpc,
                          "StageInfoService", "GetStageInfo", "GetStageInfoRequest")


@dataclass(frozen=True)
class GrpcStagesSettings:
    """Where the stage services are and how long to wait for them; `from_env()` reads the environment."""

    # Each field's variable and default are in services/common/envs.py.
    segmentation_address: str = envs.default("MVGEN_SEGMENTATION_ADDR")
    analysis_address: str = envs.default("MVGEN_ANALYSIS_ADDR")
    scripting_address: str = envs.default("MVGEN_SCRIPTING_ADDR")
    # MVGEN_VIDEO_ADDR: host:port, a comma-separated list of replicas, or dns:///name:port (re-resolved)
    video_address: str = envs.default("MVGEN_VIDEO_ADDR")
    assembly_address: str = envs.default("MVGEN_ASSEMBLY_ADDR")
    review_address: str = envs.default("MVGEN_REVIEW_ADDR")
    stage_timeout_seconds: float = envs.default("MVGEN_STAGE_TIMEOUT_SECONDS")  # one unary stage call
    # MVGEN_SCRIPT_TIMEOUT_SECONDS: deadline of writing one script (a 7-minute song on a CPU takes minutes)
    script_timeout_seconds: float = envs.default("MVGEN_SCRIPT_TIMEOUT_SECONDS")
    clip_timeout_seconds: float = envs.default("MVGEN_CLIP_TIMEOUT_SECONDS")  # one clip's generation
    # MVGEN_RETRY_SECONDS: how long a call keeps retrying an unavailable or busy stage, and how long a
    # clip keeps trying after a replica refused or lost it, or while no video replica serves
    retry_seconds: float = envs.default("MVGEN_RETRY_SECONDS")
    ready_timeout_seconds: float = envs.default("MVGEN_READY_TIMEOUT_SECONDS")  # how long wait_ready() waits
    video_resolve_seconds: float = envs.default("MVGEN_VIDEO_RESOLVE_SECONDS")  # how often dns:/// is re-resolved
    # MVGEN_STAGE_SECRET: sent with every stage call (services/common/transport/auth.py); None with
    # MVGEN_STAGE_AUTH=none
    stage_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GrpcStagesSettings:
        def get(name: str) -> Any:
            return envs.get(name, environ)

        return cls(
            segmentation_address=get("MVGEN_SEGMENTATION_ADDR"),
            analysis_address=get("MVGEN_ANALYSIS_ADDR"),
            scripting_address=get("MVGEN_SCRIPTING_ADDR"),
            video_address=get("MVGEN_VIDEO_ADDR"),
            assembly_address=get("MVGEN_ASSEMBLY_ADDR"),
            review_address=get("MVGEN_REVIEW_ADDR"),
            stage_timeout_seconds=get("MVGEN_STAGE_TIMEOUT_SECONDS"),
            script_timeout_seconds=get("MVGEN_SCRIPT_TIMEOUT_SECONDS"),
            clip_timeout_seconds=get("MVGEN_CLIP_TIMEOUT_SECONDS"),
            retry_seconds=get("MVGEN_RETRY_SECONDS"),
            ready_timeout_seconds=get("MVGEN_READY_TIMEOUT_SECONDS"),
            video_resolve_seconds=get("MVGEN_VIDEO_RESOLVE_SECONDS"),
            stage_secret=stage_secret_from_env(environ),
        )

    def address(self, stage: str) -> str:
        return getattr(self, f"{stage}_address")


class GrpcStageClients(StageClients):
    """Channels are opened on first use, in the running event loop, and belong to it: use one
    instance in one loop. `close()` (or `async with`) closes them."""

    def __init__(self, settings: GrpcStagesSettings):
        self.settings = settings
        self.video_pool = VideoPool.for_target(
            settings.video_address, clip_timeout_seconds=settings.clip_timeout_seconds,
            retry_seconds=settings.retry_seconds, resolve_seconds=settings.video_resolve_seconds,
            stage_secret=settings.stage_secret)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._start_lock = asyncio.Lock()

    @classmethod
    def from_env(cls) -> GrpcStageClients:
        return cls(GrpcStagesSettings.from_env())

    async def start(self) -> None:
        """Open a channel to each unary stage and start finding and polling the video replicas (once)."""
        async with self._start_lock:
            if self._channels:
                return
            await self.video_pool.start()
            secret = self.settings.stage_secret
            self._channels = {stage: open_channel(self.settings.address(stage), secret, ROUND_ROBIN)
                              for stage in UNARY_STAGES}

    async def close(self) -> None:
        await self.video_pool.close()
        await asyncio.gather(*(channel.close() for channel in self._channels.values()))
        self._channels = {}

    async def __aenter__(self) -> GrpcStageClients:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def clip_concurrency(self) -> int:
        return max(1, self.video_pool.serving_count())

    async def wait_ready(self) -> None:
        """Return once every unary stage and at least one video replica answer SERVING; else raise
        TransientError naming each stage that does not, with what it last answered."""
        await self.start()
        timeout = self.settings.ready_timeout_seconds
        problems = await asyncio.gather(*(self._wait_serving(stage, timeout) for stage in UNARY_STAGES),
                                        self._wait_video_serving(timeout))
        not_ready = [p for p in problems if p]
        if not_ready:
            raise TransientError(f"not serving after {timeout:.0f} s: " + "; ".join(not_ready))

    async def backend_config(self, stage: str) -> str:
        """What the stage's replicas report; for video, every serving replica's digest (they differ
        only during a rollout, and a mix is then a configuration of its own)."""
        if stage == "video":
            await self.start()
            return await self.video_pool.backend_config()
        info = await self._unary(stage, STAGE_INFO, stage_info_service_pb2.GetStageInfoRequest(), missing_ok=True)
        # None: a service older than StageInfoService, whose configuration is unknown, as it was before.
        return info.config_digest if info is not None else ""

    async def segment(self, req: SegmentRequest) -> StageResult:
        return await self._call("segmentation", req)

    async def analyze(self, req: AnalyzeRequest) -> StageResult:
        return await self._call("analysis", req)

    async def write_script(self, req: WriteScriptRequest, on_progress: PartsCallback,
                           is_cancelled: CancelCheck) -> StageResult:
        return await self._script_call(UNARY_STAGES["scripting"], req, on_progress, is_cancelled)

    async def tell_story(self, req: TellStoryRequest, on_progress: PartsCallback,
                         is_cancelled: CancelCheck) -> StageResult:
        return await self._script_call(TELL_STORY, req, on_progress, is_cancelled)

    async def generate_clip(self, req: GenerateClipRequest, on_progress: ProgressCallback,
                            is_cancelled: CancelCheck, on_retry: RetryCallback) -> StageResult:
        await self.start()
        return await self.video_pool.generate_clip(req, on_progress, is_cancelled, on_retry)

    async def assemble(self, req: AssembleRequest) -> StageResult:
        return await self._call("assembly", req)

    async def review(self, req: ReviewRequest) -> StageResult:
        return await self._call("review", req)

    async def _call(self, stage: str, req: Any, spec: _StageRpc | None = None) -> StageResult:
        spec = spec or UNARY_STAGES[stage]
        response = await self._unary(stage, spec, to_message(req, spec.request_type))
        return result_from_message(response.result)

    async def _unary(self, stage: str, spec: _StageRpc, request: Message, missing_ok: bool = False) -> Any:
        """One call on the stage's channel, retried with backoff while the stage is unavailable or busy;
        a failure comes back as the error its status stands for. `missing_ok`: None for UNIMPLEMENTED."""
        await self.start()
        method = getattr(spec.stub(self._channels[stage]), spec.method)
        return await self._retried(stage, lambda: method(request, timeout=self.settings.stage_timeout_seconds),
                                   missing_ok, self.settings.stage_timeout_seconds)

    async def _script_call(self, spec: _StageRpc, req: Any, on_progress: PartsCallback,
                           is_cancelled: CancelCheck) -> StageResult:
        """A scripting RPC: its progress passed on as it streams, the job's cancel checked meanwhile. Retried
        like a unary call; a retry resumes where the stage's journal (plan.json, sections.json) left off."""
        await self.start()
        method = getattr(spec.stub(self._channels["scripting"]), spec.method)
        request = to_message(req, spec.request_type)
        timeout = self.settings.script_timeout_seconds

        async def read() -> StageResult:
            call = method(request, timeout=timeout)
            reading = asyncio.ensure_future(_read_script_stream(call, on_progress))
            try:
                while not reading.done():
                    await asyncio.wait({reading}, timeout=CANCEL_POLL_SECONDS)
                    if not reading.done() and is_cancelled():
                        raise JobCancelledError("the job was cancelled while its script was written")
                return reading.result()
            finally:
                if not reading.done():
                    call.cancel()  # the service stops writing before its next request to the model
                    reading.cancel()
                    await asyncio.gather(reading, return_exceptions=True)

        return await self._retried("scripting", read, False, timeout)

    async def _retried(self, stage: str, attempt_call: Callable[[], Awaitable[Any]], missing_ok: bool,
                       timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        started = loop.time()
        attempt = 0
        while True:
            try:
                return await attempt_call()
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
                if missing_ok and code is grpc.StatusCode.UNIMPLEMENTED:
                    return None
                delay = backoff_seconds(attempt)
                if code in RETRIED_CODES and loop.time() - started + delay <= self.settings.retry_seconds:
                    log.warning("%s stage at %s: %s %s; retrying in %.1f s", stage, self.settings.address(stage),
                                code.name, details, delay)
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                raise error_for_status(code, self._explain(stage, code, details, attempt + 1,
                                                           loop.time() - started, timeout)) from exc

    def _explain(self, stage: str, code: grpc.StatusCode, details: str, attempts: int, seconds: float,
                 timeout: float) -> str:
        """The server's own message, or for a failure of the connection, which stage and how long we tried."""
        address = self.settings.address(stage)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"the {stage} stage at {address} did not answer within {timeout:.0f} s"
        if code in RETRIED_CODES:
            return f"the {stage} stage at {address} failed {attempts} times over {seconds:.1f} s: {details}"
        return details

    async def _wait_serving(self, stage: str, timeout: float) -> str | None:
        health = health_pb2_grpc.HealthStub(self._channels[stage])
        request = health_pb2.HealthCheckRequest(service=UNARY_STAGES[stage].service)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                answer = await health.Check(request, timeout=max(0.1, min(2.0, deadline - loop.time())))
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return None
                state = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.aio.AioRpcError as exc:
                state = f"unreachable ({exc.code().name}: {exc.details()})"
            if loop.time() + READY_POLL_SECONDS > deadline:
                return f"the {stage} stage at {self.settings.address(stage)} is {state}"
            await asyncio.sleep(READY_POLL_SECONDS)

    async def _wait_video_serving(self, timeout: float) -> str | None:
        if await self.video_pool.wait_serving(timeout):
            return None
        return f"no video replica at {self.settings.video_address} is serving ({self.video_pool.describe()})"


async def _read_script_stream(call: grpc.aio.UnaryStreamCall, on_progress: PartsCallback) -> StageResult:
    result: StageResult | None = None
    async for response in call:
        if response.WhichOneof("event") == "progress":
            on_progress(response.progress.done, response.progress.total, response.progress.detail)
        elif response.WhichOneof("event") == "result":
            result = result_from_message(response.result)
    if result is None:
        raise StageFailedError("the scripting service ended its stream without a result")
    return result
