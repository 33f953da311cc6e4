"""The scripting gRPC service: a thin layer over ScriptingStage (WriteScript: CLAP pipeline,
TellStory: LALM pipeline), streaming the plan and each section as they are written."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc

from services.common.pb import scripting_service_pb2 as pb
from services.common.pb import scripting_service_pb2_grpc as pb_grpc
from services.common.pb import stage_pb2
from services.common.settings import ServiceSettings
from services.common.stage_api import StageResult, TellStoryRequest, WriteScriptRequest
from services.common.store import open_store
from services.common.transport.convert import from_message, result_to_message
from services.common.transport.server import CallLimit, stage_main
from services.common.transport.streaming import progress_stream
from services.scripting.stage import ScriptingStage


class ScriptingServicer(pb_grpc.ScriptingServiceServicer):
    def __init__(self, stage: ScriptingStage, calls: CallLimit):
        self.stage = stage
        self.calls = calls

    async def WriteScript(self, request: pb.WriteScriptRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WriteScriptResponse]:
        async for message in self._stream(self.stage.run, from_message(request, WriteScriptRequest),
                                          pb.WriteScriptResponse):
            yield message

    async def TellStory(self, request: pb.TellStoryRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.TellStoryResponse]:
        async for message in self._stream(self.stage.tell_story, from_message(request, TellStoryRequest),
                                          pb.TellStoryResponse):
            yield message

    def _stream(self, work: Callable[..., StageResult], req: object, response: type) -> AsyncIterator:
        """`work(req, ...)`'s progress, each part as it is written, then its result, as `response` messages."""
        return progress_stream(
            self.calls, work, req, progress=lambda *parts: response(progress=_progress(*parts)),
            result=lambda result: response(result=result_to_message(result, stage_pb2.StageResult)),
            latest_only=False)


def _progress(done: int, total: int, what: str) -> stage_pb2.StageProgress:
    return stage_pb2.StageProgress(done=done, total=total, fraction=done / total if total else 0.0, detail=what)


def build(settings: ServiceSettings):
    stage = ScriptingStage(open_store(settings.store), enabled=settings.backends)
    servicer = ScriptingServicer(stage, CallLimit(settings.max_concurrent, "writing scripts"))
    return stage, lambda server: pb_grpc.add_ScriptingServiceServicer_to_server(servicer, server)


def main() -> None:
    stage_main(name="scripting", service_name="mvgen.v1.ScriptingService", default_port=50053,
               default_backends=("template",), build=build)


if __name__ == "__main__":
    main()
