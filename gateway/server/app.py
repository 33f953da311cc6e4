"""The public gateway: `MusicVideoService` over grpc.aio (`python -m gateway.server`).

Clients upload songs (streamed through the gateway, or PUT to a presigned URL), create jobs, watch
them and fetch the results by presigned URL. Every call needs a bearer token (gateway/server/auth.py);
health and reflection stay open. Jobs run in this process through the one Orchestrator, against
whatever StageClients the gateway is given: the stage services over gRPC when deployed, or the
stage logic in-process (MVGEN_STAGES=inprocess, for development and tests).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.common.errors import InvalidInputError, MvgenError
from services.common.pb import music_video_service_pb2_grpc as api_grpc
from services.common.s3_store import S3ArtifactStore
from services.common.store import ArtifactStore, open_store
from services.common.transport.errors import ErrorMappingInterceptor
from services.common.transport.server import HealthServer, configure_logging
from gateway.pipeline.stage_clients import StageClients
from gateway.server.auth import Authenticator, AuthInterceptor
from gateway.server.errors import STATUS_BY_GATEWAY_ERROR
from gateway.server.metrics import GatewayMetrics, MetricsInterceptor
from gateway.server.registry import JobRegistry
from gateway.server.servicer import SERVICE_NAME, MusicVideoServicer
from gateway.server.settings import GatewaySettings
from gateway.server.songs import SongLibrary, UploadAllowance

log = logging.getLogger(__name__)


class GatewayServer:
    """The gateway's whole lifecycle: start (read jobs back, resume them, serve) and stop (NOT_SERVING,
    leave running jobs resumable, drain)."""

    def __init__(self, settings: GatewaySettings, store: ArtifactStore, stages: StageClients):
        self.settings = settings
        self.store = store
        self.metrics = GatewayMetrics()
        self.registry = JobRegistry(store, stages, max_active_jobs=settings.max_active_jobs,
                                    observe_stage=lambda stage, seconds: self.metrics.stage_seconds.labels(stage)
                                    .observe(seconds), max_jobs_per_client=settings.max_jobs_per_client,
                                    shared_cache=settings.shared_cache)
        self.metrics.watch(self.registry.counts)
        if isinstance(store, S3ArtifactStore):
            self.metrics.watch_store(store.request_counts)
        authenticator = Authenticator(settings.token_digests)
        self.grpc = HealthServer([SERVICE_NAME], f"{settings.host}:{settings.port}", [
            MetricsInterceptor(self.metrics), AuthInterceptor(authenticator),
            ErrorMappingInterceptor(extra=STATUS_BY_GATEWAY_ERROR)], credentials=settings.server_credentials())
        self.server, self.port = self.grpc.server, self.grpc.port
        songs = SongLibrary(store, settings.max_upload_bytes, settings.max_song_seconds,
                            UploadAllowance(settings.upload_bytes_per_hour))
        api_grpc.add_MusicVideoServiceServicer_to_server(
            MusicVideoServicer(settings, store, self.registry, songs, authenticator), self.server)
        self.metrics_port = 0

    async def start(self) -> None:
        await self.grpc.start()
        await self.registry.start()
        self.metrics_port = self.metrics.serve(self.settings.metrics_port, self.settings.host)
        await self.grpc.set_serving(True)
        log.info("gateway serving on port %d (%s), metrics on port %d, output cache %s", self.port,
                 "TLS" if self.settings.tls_cert_file else "plain text", self.metrics_port,
                 "shared among all clients" if self.settings.shared_cache else "per client")

    async def stop(self) -> None:
        await self.grpc.set_serving(False)
        await self.registry.close()  # running jobs stop resumable while the server still answers
        await self.grpc.stop(self.settings.grace_seconds)
        self.metrics.close()


async def serve(settings: GatewaySettings, store: ArtifactStore) -> None:
    """Serve until SIGTERM or SIGINT."""
    async with stage_clients(settings, store) as stages:
        gateway = GatewayServer(settings, store, stages)
        await gateway.start()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        log.info("stopping: NOT_SERVING, running jobs left to resume, draining for up to %.0f s",
                 settings.grace_seconds)
        await gateway.stop()


@asynccontextmanager
async def stage_clients(settings: GatewaySettings, store: ArtifactStore) -> AsyncIterator[StageClients]:
    """The stage clients MVGEN_STAGES names, open for the gateway's lifetime (in its event loop)."""
    if settings.stages == "grpc":
        from gateway.pipeline.grpc_stages import GrpcStageClients

        async with GrpcStageClients.from_env() as stages:
            yield stages
    elif settings.stages == "inprocess":
        # Stage logic: development only, never in the gateway image.
        from gateway.pipeline.inprocess import InProcessStages

        backends = settings.backends
        yield InProcessStages(store, analyzer=backends.analyzers[0], transcriber=next(iter(backends.transcribers), ""),
                              scripting=backends.writers + backends.storytellers, generator=backends.generators[0])
    else:
        raise InvalidInputError(f"MVGEN_STAGES must be 'grpc' or 'inprocess', not {settings.stages!r}")


def main() -> None:
    configure_logging()
    try:
        settings = GatewaySettings.from_env()
        store = open_store(settings.store)
        if isinstance(store, S3ArtifactStore):
            store.ensure_bucket()
        asyncio.run(serve(settings, store))
    except MvgenError as exc:  # a configuration error or an unreachable store, said in one line
        print(f"mvgen gateway: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, InvalidInputError) else 1)


if __name__ == "__main__":
    main()
