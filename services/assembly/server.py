"""The assembly gRPC service: a thin layer over AssemblyStage."""

from __future__ import annotations

import grpc

from services.assembly.stage import AssemblyStage
from services.common.pb import assembly_service_pb2 as pb
from services.common.pb import assembly_service_pb2_grpc as pb_grpc
from services.common.pb import stage_pb2
from services.common.settings import ServiceSettings
from services.common.stage_api import AssembleRequest
from services.common.store import open_store
from services.common.transport.convert import from_message, result_to_message
from services.common.transport.server import CallLimit, stage_main


class AssemblyServicer(pb_grpc.AssemblyServiceServicer):
    def __init__(self, stage: AssemblyStage, calls: CallLimit):
        self.stage = stage
        self.calls = calls

    async def Assemble(self, request: pb.AssembleRequest, context: grpc.aio.ServicerContext) -> pb.AssembleResponse:
        result = await self.calls.run(self.stage.run, from_message(request, AssembleRequest))
        return pb.AssembleResponse(result=result_to_message(result, stage_pb2.StageResult))


def build(settings: ServiceSettings):
    stage = AssemblyStage(open_store(settings.store))
    servicer = AssemblyServicer(stage, CallLimit(settings.max_concurrent, "assembling videos"))
    return stage, lambda server: pb_grpc.add_AssemblyServiceServicer_to_server(servicer, server)


def main() -> None:
    stage_main(name="assembly", service_name="mvgen.v1.AssemblyService", default_port=50055,
               default_backends=("ffmpeg",), build=build, default_max_concurrent=2)


if __name__ == "__main__":
    main()
