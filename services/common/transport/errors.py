"""The interceptor that turns exceptions into gRPC status codes with a message a person understands.

Stage logic raises the exceptions of services/common/errors.py; only an exception outside that
vocabulary is a bug, and only a bug becomes INTERNAL.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.common.errors import (
    InvalidInputError,
    JobCancelledError,
    MvgenError,
    ResourceExhaustedError,
    StageFailedError,
    TransientError,
)

log = logging.getLogger(__name__)

STATUS_BY_ERROR: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (MemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TransientError, grpc.StatusCode.UNAVAILABLE),
    (JobCancelledError, grpc.StatusCode.CANCELLED),
    (StageFailedError, grpc.StatusCode.INTERNAL),
    (MvgenError, grpc.StatusCode.INTERNAL),
)


ErrorCodes = tuple[tuple[type[BaseException], grpc.StatusCode], ...]


def status_for(exc: BaseException, extra: ErrorCodes = ()) -> tuple[grpc.StatusCode, str]:
    # CUDA out-of-memory (torch.cuda.OutOfMemoryError) is matched by name: no torch import here.
    if type(exc).__name__ == "OutOfMemoryError":
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"out of accelerator memory: {exc}"
    for error_type, code in (*extra, *STATUS_BY_ERROR):
        if isinstance(exc, error_type):
            return code, str(exc) or error_type.__name__
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); the service log has details"


Behavior = Callable[..., Any]


def rewrap_handler(handler: grpc.RpcMethodHandler, unary: Callable[[Behavior], Behavior],
                   stream: Callable[[Behavior], Behavior]) -> grpc.RpcMethodHandler:
    """The same kind of handler, its behavior passed through `unary` (a coroutine: unary responses, and
    streams written with context.write() like health's Watch) or `stream` (an async generator)."""
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)
    behavior = handler.unary_stream or handler.stream_stream
    wrapped = stream(behavior) if inspect.isasyncgenfunction(behavior) else unary(behavior)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrapped, **kwargs)
    return grpc.stream_stream_rpc_method_handler(wrapped, **kwargs)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """`extra`: (error type, status code) pairs a server adds to the shared vocabulary, checked first."""

    def __init__(self, extra: ErrorCodes = ()):
        self.extra = extra

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method, extra = details.method, self.extra

        async def abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
            code, message = status_for(exc, extra)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("%s failed", method)
            else:
                log.info("%s: %s: %s", method, code.name, message)
            await context.abort(code, message)

        def unary(behavior: Behavior) -> Behavior:
            async def mapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await abort(context, exc)

            return mapped

        def stream(behavior: Behavior) -> Behavior:
            async def mapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for response in behavior(request, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await abort(context, exc)

            return mapped

        return rewrap_handler(handler, unary, stream)


ERROR_BY_STATUS: dict[grpc.StatusCode, type[MvgenError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: TransientError,
    grpc.StatusCode.DEADLINE_EXCEEDED: TransientError,
    grpc.StatusCode.CANCELLED: JobCancelledError,
}


def error_for_status(code: grpc.StatusCode, message: str) -> MvgenError:
    """The client side of `status_for`: a status code back into the error vocabulary, message kept.
    A code outside the vocabulary (INTERNAL, UNKNOWN, UNIMPLEMENTED, ...) is a failed stage."""
    return ERROR_BY_STATUS.get(code, StageFailedError)(message or code.name)
