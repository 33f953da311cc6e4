"""Authentication between the gateway and the stage services (services/common/transport/auth.py),
on real stage server processes: a call without the stage secret, or with another one, is refused
with UNAUTHENTICATED before the stage does anything, for every kind of call (unary, streamed,
StageInfoService, reflection); health answers anyone (kubelet's probes send no metadata); a stage
service and a gateway without a secret refuse to start, each in one line; the gateway's stage
clients send the secret, and a wrong one fails a call at once with the stage's message."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.errors import InvalidInputError, MvgenError, StageFailedError
from services.common.pb import segmentation_service_pb2 as seg_pb
from services.common.pb import segmentation_service_pb2_grpc as seg_grpc
from services.common.pb import stage_info_service_pb2 as info_pb
from services.common.pb import stage_info_service_pb2_grpc as info_grpc
from services.common.pb import video_service_pb2 as video_pb
from services.common.pb import video_service_pb2_grpc as video_grpc
from services.common.stage_api import GenerateClipRequest, SegmenterParams, SegmentRequest
from services.common.store import LocalArtifactStore
from gateway.pipeline.grpc_stages import GrpcStageClients, GrpcStagesSettings
from tests.media import tone
from tests.servers import REPO_ROOT, STAGE_SECRET, free_port, local_store_env, serving, stage_channel, stage_server

pytestmark = pytest.mark.system  # stage servers in processes of their own (make check leaves it out)

OTHER_SECRET = "another-secret-of-enough-length-0123456789"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> LocalArtifactStore:
    root = tmp_path_factory.mktemp("store")
    tone(root / "song.wav", 6.0)
    return LocalArtifactStore(root)


@pytest.fixture(scope="module")
def servers(store, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    segmentation = stage_server("segmentation", logs, local_store_env(store.root))
    video = stage_server("video", logs, local_store_env(store.root))
    with serving(segmentation, video):
        yield {"segmentation": segmentation, "video": video}


def segment_request(key: str) -> seg_pb.SegmentRequest:
    # The caller chooses where the segments go: what a stranger could write into the bucket.
    return seg_pb.SegmentRequest(song_key="song.wav", segments_key=key, segments_text_key=key + ".txt")


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value


def test_a_call_without_the_secret_is_refused_and_writes_nothing(servers, store):
    with grpc.insecure_channel(servers["segmentation"].address) as channel:
        error = refusal(lambda: seg_grpc.SegmentationServiceStub(channel).Segment(
            segment_request("stranger/segments.json"), timeout=30))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "carries none" in error.details() and "MVGEN_STAGE_SECRET" in error.details(), error.details()
    assert not store.exists("stranger/segments.json")
    assert not store.exists("stranger/segments.json.txt")


def test_a_call_with_another_secret_is_refused(servers, store):
    with stage_channel(servers["segmentation"].address, OTHER_SECRET) as channel:
        error = refusal(lambda: seg_grpc.SegmentationServiceStub(channel).Segment(
            segment_request("wrong/segments.json"), timeout=30))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "wrong stage secret" in error.details(), error.details()
    assert STAGE_SECRET not in error.details() and OTHER_SECRET not in error.details()
    assert not store.exists("wrong/segments.json")


def test_the_secret_opens_every_service_and_health_answers_anyone(servers, store):
    with stage_channel(servers["segmentation"].address) as channel:
        seg_grpc.SegmentationServiceStub(channel).Segment(segment_request("gateway/segments.json"), timeout=60)
        info = info_grpc.StageInfoServiceStub(channel).GetStageInfo(info_pb.GetStageInfoRequest(), timeout=10)
    assert store.exists("gateway/segments.json") and info.stage == "segmentation"
    with grpc.insecure_channel(servers["segmentation"].address) as channel:  # no metadata, as kubelet's probes
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mvgen.v1.SegmentationService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING


def test_stage_info_reflection_and_a_streamed_clip_need_the_secret_too(servers):
    with grpc.insecure_channel(servers["video"].address) as channel:
        info = refusal(lambda: info_grpc.StageInfoServiceStub(channel).GetStageInfo(
            info_pb.GetStageInfoRequest(), timeout=10))
        clip = refusal(lambda: list(video_grpc.VideoServiceStub(channel).GenerateClip(
            video_pb.GenerateClipRequest(index=0, song_key="song.wav", clip_key="stranger/0000.mp4"), timeout=30)))
        listing = refusal(lambda: next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)))
    for error in (info, clip, listing):
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (error.code(), error.details())
    with stage_channel(servers["video"].address) as channel:  # grpcurl -H 'authorization: Bearer ...'
        answer = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    assert "mvgen.v1.VideoService" in {s.name for s in answer.list_services_response.service}


def test_the_gateways_stage_clients_send_the_secret_and_a_wrong_one_fails_at_once(servers):
    segment = SegmentRequest(song_key="song.wav", params=SegmenterParams(segmenter="random", seed=3),
                             segments_key="clients/segments.json", segments_text_key="clients/segments.txt")
    # No script in the store: the video replica refuses the clip, but only once past the secret.
    clip = GenerateClipRequest(index=0, song_key="song.wav", script_key="clients/no-script.json", start=0.0, end=1.0,
                               frame_count=12, fps=12, width=160, height=90, generator="animatic",
                               clip_key="clients/0000.mp4")

    async def call(secret: str) -> tuple[object, Exception]:
        settings = GrpcStagesSettings(segmentation_address=servers["segmentation"].address,
                                      video_address=servers["video"].address, retry_seconds=30.0,
                                      stage_secret=secret)
        async with GrpcStageClients(settings) as stages:
            segmented = await stages.segment(segment)
            try:
                await stages.generate_clip(clip, lambda fraction: None, lambda: False, lambda why: None)
            except MvgenError as exc:
                return segmented, exc
            raise AssertionError("a clip without its script was made")

    segmented, clip_error = asyncio.run(call(STAGE_SECRET))
    assert segmented.keys["segments"] == "clients/segments.json"
    assert isinstance(clip_error, InvalidInputError) and "no-script.json" in str(clip_error), clip_error
    started = time.monotonic()
    with pytest.raises(StageFailedError, match="wrong stage secret"):
        asyncio.run(call(OTHER_SECRET))
    assert time.monotonic() - started < 10  # not retried as if the stage were busy or down


def start_process(module: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`python -m module` with `env` over this environment minus any stage secret; it must exit by itself."""
    base = {k: v for k, v in os.environ.items() if k not in ("MVGEN_STAGE_SECRET", "MVGEN_STAGE_AUTH")}
    return subprocess.run([sys.executable, "-m", module], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env={**base, "MVGEN_HOST": "127.0.0.1", "MVGEN_PORT": str(free_port()),
                                            **local_store_env(tmp_path / "store"), **env})


@pytest.mark.parametrize("env, message", [
    ({}, "MVGEN_STAGE_SECRET is not set"),
    ({"MVGEN_STAGE_SECRET": "short"}, "MVGEN_STAGE_SECRET is 5 characters long; it must have at least 32"),
    ({"MVGEN_STAGE_SECRET": STAGE_SECRET, "MVGEN_STAGE_AUTH": "maybe"}, "MVGEN_STAGE_AUTH must be"),
])
def test_a_stage_service_without_a_usable_secret_refuses_to_start(tmp_path, env, message):
    done = start_process("services.assembly.server", env, tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(f"assembly: {message}"), done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_a_gateway_calling_stages_without_a_secret_refuses_to_start(tmp_path):
    done = start_process("gateway.server", {"MVGEN_STAGES": "grpc", "MVGEN_GATEWAY_TOKENS_SHA256": "0" * 64},
                         tmp_path)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("mvgen gateway: MVGEN_STAGE_SECRET is not set"), done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_with_authentication_turned_off_a_stage_serves_anyone_and_says_so(tmp_path, store):
    server = stage_server("assembly", tmp_path, {**local_store_env(store.root), "MVGEN_STAGE_AUTH": "none",
                                                 "MVGEN_STAGE_SECRET": ""})
    with serving(server), grpc.insecure_channel(server.address) as channel:
        info = info_grpc.StageInfoServiceStub(channel).GetStageInfo(info_pb.GetStageInfoRequest(), timeout=10)
    assert info.stage == "assembly"
    assert "MVGEN_STAGE_AUTH=none: this service serves anyone who reaches its port" in server.log_path.read_text()
