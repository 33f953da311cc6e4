"""The segmentation gRPC service: a thin layer over SegmentationStage."""

from __future__ import annotations

import grpc

from services.common.pb import segmentation_service_pb2 as pb
from services.common.pb import segmentation_service_pb2_grpc as pb_grpc
from services.common.pb import stage_pb2
from services.common.settings import ServiceSettings
from services.common.stage_api import SegmentRequest
from services.common.store import open_store
from services.common.transport.convert import from_message, result_to_message
from services.common.transport.server import CallLimit, stage_main
from services.segmentation.stage import SegmentationStage


class SegmentationServicer(pb_grpc.SegmentationServiceServicer):
    def __init__(self, stage: SegmentationStage, calls: CallLimit):
        self.stage = stage
        self.calls = calls

    async def Segment(self, request: pb.SegmentRequest, context: grpc.aio.ServicerContext) -> pb.SegmentResponse:
        result = await self.calls.run(self.stage.run, from_message(request, SegmentRequest))
        return pb.SegmentResponse(result=result_to_message(result, stage_pb2.StageResult))


def build(settings: ServiceSettings):
    stage = SegmentationStage(open_store(settings.store))
    servicer = SegmentationServicer(stage, CallLimit(settings.max_concurrent, "segmenting songs"))
    return stage, lambda server: pb_grpc.add_SegmentationServiceServicer_to_server(servicer, server)


def main() -> None:
    stage_main(name="segmentation", service_name="mvgen.v1.SegmentationService", default_port=50051,
               default_backends=("rules", "random"), build=build, uses_numba=True)


if __name__ == "__main__":
    main()
