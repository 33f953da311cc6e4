"""The analysis gRPC service: a thin layer over AnalysisStage."""

from __future__ import annotations

import grpc

from services.analysis.stage import AnalysisStage
from services.common.pb import analysis_service_pb2 as pb
from services.common.pb import analysis_service_pb2_grpc as pb_grpc
from services.common.pb import stage_pb2
from services.common.settings import ServiceSettings
from services.common.stage_api import AnalyzeRequest
from services.common.store import open_store
from services.common.transport.convert import from_message, result_to_message
from services.common.transport.server import CallLimit, stage_main


class AnalysisServicer(pb_grpc.AnalysisServiceServicer):
    def __init__(self, stage: AnalysisStage, calls: CallLimit):
        self.stage = stage
        self.calls = calls

    async def Analyze(self, request: pb.AnalyzeRequest, context: grpc.aio.ServicerContext) -> pb.AnalyzeResponse:
        result = await self.calls.run(self.stage.run, from_message(request, AnalyzeRequest))
        return pb.AnalyzeResponse(result=result_to_message(result, stage_pb2.StageResult))


def build(settings: ServiceSettings):
    stage = AnalysisStage(open_store(settings.store), enabled=settings.backends)
    servicer = AnalysisServicer(stage, CallLimit(settings.max_concurrent, "analysing songs"))
    return stage, lambda server: pb_grpc.add_AnalysisServiceServicer_to_server(servicer, server)


def default_backends() -> tuple[str, ...]:
    """Without MVGEN_BACKENDS: descriptors, musicnn where its package and weights are installed, and the
    whisper transcriber where faster-whisper and its model are."""
    from services.analysis.lyrics import whisper_available  # both look for files; neither imports a model
    from services.analysis.musicnn.weights import musicnn_available

    return ("descriptors",) + (("musicnn",) if musicnn_available() else ()) + \
        (("whisper",) if whisper_available() else ())


def main() -> None:
    stage_main(name="analysis", service_name="mvgen.v1.AnalysisService", default_port=50052,
               default_backends=default_backends(), build=build, uses_numba=True)


if __name__ == "__main__":
    main()
