"""The video gRPC service: a thin layer over VideoStage, streaming progress while a clip renders.

One clip at a time per replica by default (one model per GPU): a second call is answered
RESOURCE_EXHAUSTED at once so that the gateway sends it to another replica. A client that
cancels its call (CancelJob, a deadline) stops the generation at the next frame or step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import grpc

from services.common.pb import stage_pb2
from services.common.pb import video_service_pb2 as pb
from services.common.pb import video_service_pb2_grpc as pb_grpc
from services.common.settings import ServiceSettings
from services.common.stage_api import GenerateClipRequest
from services.common.store import open_store
from services.common.transport.convert import from_message, result_to_message
from services.common.transport.server import CallLimit, stage_main
from services.video.stage import VideoStage

DONE = object()


class VideoServicer(pb_grpc.VideoServiceServicer):
    def __init__(self, stage: VideoStage, calls: CallLimit):
        self.stage = stage
        self.calls = calls

    async def GenerateClip(self, request: pb.GenerateClipRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateClipResponse]:
        req = from_message(request, GenerateClipRequest)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()

        def on_progress(fraction: float) -> None:
            loop.call_soon_threadsafe(events.put_nowait, fraction)

        async def generate():
            try:
                return await self.calls.run(self.stage.run, req, on_progress, cancelled.is_set)
            finally:
                events.put_nowait(DONE)

        task = asyncio.ensure_future(generate())
        try:
            finished = False
            while not finished:
                event = await events.get()
                if event is DONE:
                    break
                # Progress is a hint: when frames outrun the stream, only the latest one is sent.
                while not events.empty():
                    newer = events.get_nowait()
                    finished = newer is DONE
                    if finished:
                        break
                    event = newer
                yield pb.GenerateClipResponse(progress=stage_pb2.ClipProgress(
                    fraction=float(event), frames_done=round(float(event) * req.frame_count),
                    total_frames=req.frame_count))
            result = await task
            yield pb.GenerateClipResponse(result=result_to_message(result, stage_pb2.StageResult))
        finally:
            cancelled.set()  # the caller went away or the stream ended: stop rendering
            if not task.done():
                await asyncio.gather(task, return_exceptions=True)


def build(settings: ServiceSettings):
    stage = VideoStage(open_store(settings.store), enabled=settings.backends)
    servicer = VideoServicer(stage, CallLimit(settings.max_concurrent, "generating a clip"))
    return stage, lambda server: pb_grpc.add_VideoServiceServicer_to_server(servicer, server)


def main() -> None:
    stage_main(name="video", service_name="mvgen.v1.VideoService", default_port=50054,
               default_backends=("animatic",), build=build, default_max_concurrent=1, uses_numba=True)


if __name__ == "__main__":
    main()
