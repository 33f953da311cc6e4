"""Server-streaming RPCs of work that reports progress: a stage's call runs in a worker thread, its
progress is streamed as it comes, then its result; a caller that goes away stops the work."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from services.common.transport.server import CallLimit

T = TypeVar("T")


async def progress_stream(calls: CallLimit, work: Callable[..., T], *args: Any,
                          progress: Callable[..., Any], result: Callable[[T], Any],
                          latest_only: bool = True) -> AsyncIterator[Any]:
    """Run `work(*args, on_progress, is_cancelled)` through `calls`; yield `progress(*event)` for each
    `on_progress(*event)` it makes, then `result(value)`. `latest_only`: events that come faster than the
    stream is read are dropped but the latest (a clip's frames); otherwise each is sent (a script's
    sections). When the stream closes early (the caller cancelled, the deadline passed), `is_cancelled()`
    turns true and the stream waits for the work to stop."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()  # None: the work is done
    cancelled = threading.Event()

    def on_progress(*event: Any) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    async def run() -> T:
        try:
            return await calls.run(work, *args, on_progress, cancelled.is_set)
        finally:
            events.put_nowait(None)

    task = asyncio.ensure_future(run())
    try:
        finished = False
        while not finished:
            event = await events.get()
            if event is None:
                break
            # Progress is a hint: when it outruns the stream, only the latest is sent.
            while latest_only and not events.empty():
                newer = events.get_nowait()
                if newer is None:
                    finished = True
                    break
                event = newer
            yield progress(*event)
        yield result(await task)
    finally:
        cancelled.set()  # the caller went away or the stream ended: stop working
        if not task.done():
            await asyncio.gather(task, return_exceptions=True)
