"""StageInfoService: what a stage replica runs with, asked by the gateway before it reuses an output."""

from __future__ import annotations

import os
from collections.abc import Sequence

import grpc

from services.common.backend_config import backend_config_digest
from services.common.pb import stage_info_service_pb2 as pb
from services.common.pb import stage_info_service_pb2_grpc as pb_grpc
from services.common.settings import PROMPTS_DIR

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StageInfoService"].full_name


class StageInfoServicer(pb_grpc.StageInfoServiceServicer):
    def __init__(self, stage: str, backends: Sequence[str]):
        # Taken at start: the environment the backends load with, and prompts/ as mounted then.
        self.info = pb.GetStageInfoResponse(stage=stage, backends=list(backends),
                                            config_digest=backend_config_digest(stage, PROMPTS_DIR, os.environ))

    async def GetStageInfo(self, request: pb.GetStageInfoRequest,
                           context: grpc.aio.ServicerContext) -> pb.GetStageInfoResponse:
        return self.info
