"""The review gRPC service: a thin layer over ReviewStage."""

from __future__ import annotations

import grpc

from services.common.pb import review_service_pb2 as pb
from services.common.pb import review_service_pb2_grpc as pb_grpc
from services.common.pb import stage_pb2
from services.common.settings import ServiceSettings
from services.common.stage_api import ReviewRequest
from services.common.store import open_store
from services.common.transport.convert import from_message, result_to_message
from services.common.transport.server import CallLimit, stage_main
from services.review.stage import ReviewStage

SERVICE_BACKENDS = ("review",)  # one way to review: MiniLM and EfficientNet-lite0, always both


class ReviewServicer(pb_grpc.ReviewServiceServicer):
    def __init__(self, stage: ReviewStage, calls: CallLimit):
        self.stage = stage
        self.calls = calls

    async def Review(self, request: pb.ReviewRequest, context: grpc.aio.ServicerContext) -> pb.ReviewResponse:
        result = await self.calls.run(self.stage.run, from_message(request, ReviewRequest))
        return pb.ReviewResponse(result=result_to_message(result, stage_pb2.StageResult))


def build(settings: ServiceSettings):
    stage = ReviewStage(open_store(settings.store))
    servicer = ReviewServicer(stage, CallLimit(settings.max_concurrent, "reviewing videos"))
    return stage, lambda server: pb_grpc.add_ReviewServiceServicer_to_server(servicer, server)


def main() -> None:
    stage_main(name="review", service_name="mvgen.v1.ReviewService", default_port=50056,
               default_backends=SERVICE_BACKENDS, build=build, default_max_concurrent=2)


if __name__ == "__main__":
    main()
