"""The video gRPC service: a thin layer over VideoStage, streaming progress while a clip renders.

One clip at a time per replica by default (one model per GPU): a second call is answered
RESOURCE_EXHAUSTED at once so that the gateway sends it to another replica. A client that
cancels its call (CancelJob, a deadline) stops the generation at the next frame or step.
"""

from __future__ import annotations

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
from services.common.transport.streaming import progress_stream
from services.video.stage import VideoStage


class VideoServicer(pb_grpc.VideoServiceServicer):
    def __init__(self, stage: VideoStage, calls: CallLimit):
        self.stage = stage
        self.calls = calls

    async def GenerateClip(self, request: pb.GenerateClipRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateClipResponse]:
        req = from_message(request, GenerateClipRequest)
        async for message in progress_stream(
                self.calls, self.stage.run, req,
                progress=lambda fraction: pb.GenerateClipResponse(progress=stage_pb2.ClipProgress(
                    fraction=float(fraction), frames_done=round(float(fraction) * req.frame_count),
                    total_frames=req.frame_count)),
                result=lambda result: pb.GenerateClipResponse(result=result_to_message(result, stage_pb2.StageResult))):
            yield message


def build(settings: ServiceSettings):
    stage = VideoStage(open_store(settings.store), enabled=settings.backends)
    servicer = VideoServicer(stage, CallLimit(settings.max_concurrent, "generating a clip"))
    return stage, lambda server: pb_grpc.add_VideoServiceServicer_to_server(servicer, server)


def main() -> None:
    stage_main(name="video", service_name="mvgen.v1.VideoService", default_port=50054,
               default_backends=("animatic",), build=build, default_max_concurrent=1, uses_numba=True)


if __name__ == "__main__":
    main()
