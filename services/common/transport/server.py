"""The lifecycle every gRPC service shares (cog's load/ready model over grpc.aio):

start listening at once with health NOT_SERVING, load the backends in a worker thread, then
SERVING; on SIGTERM or SIGINT go NOT_SERVING (so load balancers stop sending), let in-flight
calls finish within the grace period, and exit. Reflection is on, so grpcurl works. Every stage
service also serves StageInfoService (its backends and the digest of their configuration), and
serves only callers that send the stage secret (auth.py; health answers anyone).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import InvalidInputError, ResourceExhaustedError
from services.common.numba_cache import lease_numba_cache, mark_numba_cache_sound
from services.common.pb import stage_info_service_pb2_grpc
from services.common.settings import ServiceSettings
from services.common.transport.auth import MODE_ENV, StageAuthInterceptor, stage_secret_from_env
from services.common.transport.errors import ErrorMappingInterceptor
from services.common.transport.options import SERVER_OPTIONS
from services.common.transport.stage_info import SERVICE_NAME as STAGE_INFO_SERVICE
from services.common.transport.stage_info import StageInfoServicer

log = logging.getLogger(__name__)
T = TypeVar("T")
BACKEND_CHECK_SECONDS = 1.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ServedStage(Protocol):
    """What a service serves: loaded once before SERVING, ready while its backends work."""

    def load(self) -> None: ...

    @property
    def ready(self) -> bool: ...


class HealthServer:
    """A grpc.aio server with the standard health service and reflection for `service_names`;
    NOT_SERVING until told otherwise. The stage services and the gateway are both built on it."""

    def __init__(self, service_names: Sequence[str], address: str,
                 interceptors: Sequence[grpc.aio.ServerInterceptor],
                 credentials: grpc.ServerCredentials | None = None):
        """`credentials`: serve TLS with them (the public gateway); None: plain text (in-cluster services)."""
        self.service_names = tuple(service_names)
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(interceptors=list(interceptors), options=SERVER_OPTIONS)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self.server)
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)

    async def start(self) -> None:
        await self.set_serving(False)
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for service in ("", *self.service_names):
            await self.health.set(service, status)

    async def stop(self, grace_seconds: float) -> None:
        """NOT_SERVING first, so that balancers stop sending; then let calls in flight finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)


class ServiceRunner:
    def __init__(self, *, name: str, service_names: Sequence[str], host: str, port: int,
                 grace_seconds: float, stage: ServedStage, backends: Sequence[str] = (),
                 stage_secret: str | None = None):
        """`name`: the stage ("analysis", ...), which StageInfoService reports with `backends`.
        `stage_secret`: serve only calls that carry it (transport/auth.py); None: serve any caller."""
        self.name = name
        self.address = f"{host}:{port}"
        self.grace_seconds = grace_seconds
        self.stage = stage
        auth = [StageAuthInterceptor(stage_secret)] if stage_secret is not None else []
        self.grpc = HealthServer((*service_names, STAGE_INFO_SERVICE), self.address,
                                 [*auth, ErrorMappingInterceptor()])
        self.server, self.port = self.grpc.server, self.grpc.port
        stage_info_service_pb2_grpc.add_StageInfoServiceServicer_to_server(StageInfoServicer(name, backends),
                                                                          self.server)
        self.stopping = asyncio.Event()

    async def set_serving(self, serving: bool) -> None:
        await self.grpc.set_serving(serving)

    async def _watch_backends(self) -> None:
        """A backend that broke for good (a CUDA device error) turns health NOT_SERVING, so that the
        gateway stops sending it clips and Kubernetes' liveness probe restarts the pod."""
        while not self.stopping.is_set():
            if not self.stage.ready:
                log.error("%s: a backend failed; health is NOT_SERVING until the service restarts", self.name)
                await self.set_serving(False)
                return
            await asyncio.sleep(BACKEND_CHECK_SECONDS)

    async def run(self) -> None:
        await self.grpc.start()
        log.info("%s listening on %s, loading", self.name, self.address)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        try:
            await asyncio.to_thread(self.stage.load)
        except Exception:
            # Keep answering health (NOT_SERVING) so the orchestrator sees why; Kubernetes restarts us.
            log.exception("%s failed to load; health stays NOT_SERVING", self.name)
        else:
            mark_numba_cache_sound()  # the backends' compiled kernels loaded and ran
            await self.set_serving(True)
            log.info("%s ready", self.name)
            asyncio.ensure_future(self._watch_backends())
        await self.stopping.wait()
        log.info("%s stopping: NOT_SERVING, draining for up to %.0f s", self.name, self.grace_seconds)
        await self.grpc.stop(self.grace_seconds)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class CallLimit:
    """At most `limit` calls at once; one more is refused with RESOURCE_EXHAUSTED at once, so the
    caller can send it to another replica instead of queueing behind a busy GPU."""

    def __init__(self, limit: int, what: str):
        self.limit = max(1, limit)
        self.what = what
        self.active = 0

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self.active >= self.limit:
            raise ResourceExhaustedError(f"busy: this replica is already {self.what} ({self.active} of {self.limit})")
        self.active += 1
        try:
            return await asyncio.to_thread(fn, *args)
        finally:
            self.active -= 1


async def serve(runner_args: dict, add_servicers: Callable[[grpc.aio.Server], None]) -> None:
    """Build the runner inside the event loop (grpc.aio needs one), register the servicers, run."""
    runner = ServiceRunner(**runner_args)
    add_servicers(runner.server)
    await runner.run()


def stage_main(*, name: str, service_name: str, default_port: int, default_backends: tuple[str, ...],
               build: Callable[[ServiceSettings], tuple[ServedStage, Callable[[grpc.aio.Server], None]]],
               default_max_concurrent: int = 4, uses_numba: bool = False) -> None:
    """Entry point of a stage service: settings from the environment, build, serve until SIGTERM.
    `uses_numba`: its backends compile numba kernels (librosa's), so it leases a numba cache of its own.

    `build(settings)` returns (stage, add_servicers): what is loaded before SERVING and watched
    after, and how to register the servicers on the server."""
    configure_logging()
    if uses_numba:
        lease_numba_cache(name)  # before the backends import numba: a cache no other process writes
    try:
        settings = ServiceSettings.from_env(default_port=default_port, default_backends=default_backends,
                                            default_max_concurrent=default_max_concurrent)
        stage_secret = stage_secret_from_env()
    except InvalidInputError as exc:  # a configuration error, said in one line
        raise SystemExit(f"{name}: {exc}") from None
    if stage_secret is None:
        log.warning("%s: %s=none: this service serves anyone who reaches its port", name, MODE_ENV)
    stage, add_servicers = build(settings)
    runner_args = dict(name=name, service_names=[service_name], host=settings.host, port=settings.port,
                       grace_seconds=settings.grace_seconds, stage=stage, backends=settings.backends,
                       stage_secret=stage_secret)
    asyncio.run(serve(runner_args, add_servicers))
