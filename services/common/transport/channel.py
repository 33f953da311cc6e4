"""Channels from one service to another, and how long to wait before trying a call again."""

from __future__ import annotations

import random

import grpc

from services.common.transport.auth import secret_interceptors
from services.common.transport.options import CLIENT_OPTIONS


def backoff_seconds(attempt: int, base: float = 0.2, cap: float = 5.0) -> float:
    """Delay before retry number `attempt` (from 0): exponential, capped, jittered so that callers spread out."""
    return min(cap, base * 2 ** attempt) * random.uniform(0.5, 1.0)


def open_channel(address: str, stage_secret: str | None, *options: tuple[str, int | str]) -> grpc.aio.Channel:
    """A channel to a stage service whose every call carries `stage_secret` (None: nothing)."""
    interceptors = secret_interceptors(stage_secret) if stage_secret is not None else None
    return grpc.aio.insecure_channel(address, options=(*CLIENT_OPTIONS, *options), interceptors=interceptors)
