"""Prometheus metrics of the gateway: jobs by state, clips pending and in flight (what KEDA scales
the video Deployment on), stage durations, calls by RPC and status code, and requests to the
object store by operation.

Each gateway has its own registry, so several can live in one process (tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.transport.errors import Behavior, rewrap_handler

STAGE_SECONDS_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


@dataclass(frozen=True)
class WorkCounts:
    """What the job registry holds now."""

    jobs_by_state: dict[str, int] = field(default_factory=dict)  # "queued", "running", ...
    clips_pending: int = 0  # clips of live jobs not yet sent to a video replica
    clips_in_flight: int = 0  # clips being generated


class _WorkCollector(Collector):
    def __init__(self, counts: Callable[[], WorkCounts]):
        self.counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.counts()
        jobs = GaugeMetricFamily("mvgen_jobs", "Jobs known to this gateway, by state", labels=["state"])
        for state, count in sorted(counts.jobs_by_state.items()):
            jobs.add_metric([state], count)
        yield jobs
        yield GaugeMetricFamily("mvgen_clips_pending", "Clips of live jobs waiting for a video replica",
                                value=counts.clips_pending)
        yield GaugeMetricFamily("mvgen_clips_in_flight", "Clips being generated", value=counts.clips_in_flight)


class _StoreCollector(Collector):
    def __init__(self, counts: Callable[[], Mapping[str, int]]):
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        requests = CounterMetricFamily("mvgen_store_requests", "Requests this gateway sent to the object store, "
                                       "by operation", labels=["operation"])
        for operation, count in sorted(self.counts().items()):
            requests.add_metric([operation], count)
        yield requests


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mvgen_gateway_requests", "Calls answered by the gateway, by RPC and status code",
                                ["rpc", "code"], registry=self.registry)
        self.stage_seconds = Histogram("mvgen_stage_duration_seconds", "How long a stage ran (cached stages excluded)",
                                       ["stage"], buckets=STAGE_SECONDS_BUCKETS, registry=self.registry)
        self._http: Any = None

    def watch(self, counts: Callable[[], WorkCounts]) -> None:
        """Report the job and clip gauges from `counts`, read at every scrape (in the HTTP thread)."""
        self.registry.register(_WorkCollector(counts))

    def watch_store(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Report mvgen_store_requests_total{operation} from `counts` (the store's running totals), read
        at every scrape."""
        self.registry.register(_StoreCollector(counts))

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve /metrics on `port` (0: any free port); returns the port."""
        self._http, _ = start_http_server(port, host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by RPC name and final status code. Outermost, so it sees the code that
    the error and auth interceptors chose."""

    def __init__(self, metrics: GatewayMetrics):
        self.metrics = metrics

    async def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        rpc = details.method.rsplit("/", 1)[-1]
        count = self.metrics.requests

        def unary(behavior: Behavior) -> Behavior:
            async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
                code = grpc.StatusCode.UNKNOWN
                try:
                    response = await behavior(request, context)
                    code = context.code() or grpc.StatusCode.OK
                    return response
                except grpc.aio.AbortError:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                finally:
                    count.labels(rpc, code.name).inc()

            return counted

        def stream(behavior: Behavior) -> Behavior:
            async def counted(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                code = grpc.StatusCode.UNKNOWN
                try:
                    async for response in behavior(request, context):
                        yield response
                    code = context.code() or grpc.StatusCode.OK
                except grpc.aio.AbortError:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                except (asyncio.CancelledError, GeneratorExit):
                    code = grpc.StatusCode.CANCELLED
                    raise
                finally:
                    count.labels(rpc, code.name).inc()

            return counted

        return rewrap_handler(handler, unary, stream)

