"""Bearer-token authentication of the public gateway.

Tokens are configured as SHA-256 digests, so a leaked configuration reveals no token. A caller's
token is hashed and compared in constant time with every configured digest. The caller's identity
is the start of its token's digest: it scopes jobs, songs and request ids, and names nobody.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc

from services.common.errors import InvalidInputError
from services.common.transport.errors import rewrap_handler

CLIENT_ID_HEX_DIGITS = 12
# Probes and tooling (kubelet, grpcurl) must work without a token.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_DIGEST = re.compile(r"[0-9a-f]{64}")


class UnauthenticatedError(Exception):
    """The call carries no valid bearer token."""


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_token_digests(text: str, source: str) -> tuple[str, ...]:
    """Digests separated by commas or newlines; blank lines and '#' comments are skipped."""
    digests = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        for item in line.split(","):
            digest = item.strip().lower()
            if not digest:
                continue
            if not _DIGEST.fullmatch(digest):
                raise InvalidInputError(f"{source}: {digest[:16]!r}... is not a SHA-256 hex digest "
                                        "(make one with: printf %s TOKEN | sha256sum)")
            digests.append(digest)
    return tuple(digests)


def load_token_digests(env_value: str, file_path: str) -> tuple[str, ...]:
    """The accepted digests from MVGEN_GATEWAY_TOKENS_SHA256 and MVGEN_GATEWAY_TOKENS_FILE."""
    digests = parse_token_digests(env_value, "MVGEN_GATEWAY_TOKENS_SHA256")
    if file_path:
        try:
            text = Path(file_path).read_text()
        except OSError as exc:
            raise InvalidInputError(f"MVGEN_GATEWAY_TOKENS_FILE: cannot read {file_path}: {exc.strerror}") from None
        digests += parse_token_digests(text, file_path)
    if not digests:
        raise InvalidInputError("no client tokens configured: set MVGEN_GATEWAY_TOKENS_SHA256 (comma-separated "
                                "SHA-256 digests of the tokens) or MVGEN_GATEWAY_TOKENS_FILE")
    return digests


class Authenticator:
    def __init__(self, digests: Iterable[str]):
        self._digests = tuple(bytes.fromhex(d) for d in digests)

    def client_id(self, metadata: Sequence[tuple[str, Any]] | None) -> str:
        """The caller's identity, or UnauthenticatedError saying what is wrong with its credentials."""
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            raise UnauthenticatedError("missing credentials: send the metadata 'authorization: Bearer <token>'")
        scheme, _, token = str(values[0]).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthenticatedError("the authorization metadata must be 'Bearer <token>'")
        digest = hashlib.sha256(token.strip().encode()).digest()
        matched = False
        for accepted in self._digests:  # every digest is compared: the timing says nothing about which
            matched |= hmac.compare_digest(accepted, digest)
        if not matched:
            raise UnauthenticatedError("invalid token")
        return digest.hex()[:CLIENT_ID_HEX_DIGITS]

    def client_of(self, context: grpc.aio.ServicerContext) -> str:
        return self.client_id(context.invocation_metadata())




class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator):
        self.authenticator = authenticator

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        try:
            self.authenticator.client_id(details.invocation_metadata)
        except UnauthenticatedError as exc:
            message = str(exc)

            async def reject(request: Any, context: grpc.aio.ServicerContext) -> None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

            async def reject_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await reject(request, context)
                yield  # never reached: the yield makes this a generator, as streaming handlers are

            return rewrap_handler(handler, lambda _: reject, lambda _: reject_stream)
        return handler
