"""The serving layer every stage service shares, checked on real server processes: health,
reflection, status codes with a person's message, busy answers, graceful SIGTERM."""

from __future__ import annotations

import json
import os
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.artifacts import Scene, Script, StyleBible, dumps
from services.common.backend_config import backend_config_digest
from services.common.pb import segmentation_service_pb2 as seg_pb
from services.common.pb import segmentation_service_pb2_grpc as seg_grpc
from services.common.pb import stage_info_service_pb2 as info_pb
from services.common.pb import stage_info_service_pb2_grpc as info_grpc
from services.common.pb import stage_pb2
from services.common.pb import video_service_pb2 as video_pb
from services.common.pb import video_service_pb2_grpc as video_grpc
from services.common.settings import PROMPTS_DIR
from services.common.store import LocalArtifactStore
from tests.media import tone
from tests.servers import local_store_env, serving, stage_channel, stage_server

pytestmark = pytest.mark.system  # stage servers in processes of their own (make check leaves it out)

SCRIPT = Script("template", "t", StyleBible(["#112233", "#445566"], "look", "light", "camera", "calm"), [],
                [Scene(0, "A long, slow shot of the sea.")])


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    store = LocalArtifactStore(root)
    tone(root / "song.wav", 12.0)
    store.put_bytes("script.json", dumps(SCRIPT))
    return root


@pytest.fixture(scope="module")
def servers(store_root, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    env = local_store_env(store_root)
    segmentation = stage_server("segmentation", logs, env)
    video = stage_server("video", logs, {**env, "MVGEN_MAX_CONCURRENT": "1", "MVGEN_GRACE_SECONDS": "30"})
    with serving(segmentation, video):
        yield {"segmentation": segmentation, "video": video}


def long_clip(index_key: str) -> video_pb.GenerateClipRequest:
    # 10 s of 640x360 frames: long enough to be busy while the test acts.
    return video_pb.GenerateClipRequest(index=0, song_key="song.wav", script_key="script.json", start=0.0, end=10.0,
                                        frame_count=240, fps=24, width=640, height=360, generator="animatic",
                                        clip_key=index_key, seed=1)


def test_health_and_reflection_answer(servers):
    with stage_channel(servers["segmentation"].address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mvgen.v1.SegmentationService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                      timeout=5))
        names = {s.name for s in answer.list_services_response.service}
        assert {"mvgen.v1.SegmentationService", "mvgen.v1.StageInfoService", "grpc.health.v1.Health"} <= names


def test_stage_info_names_the_stage_its_backends_and_their_configuration(servers):
    with stage_channel(servers["video"].address) as channel:
        info = info_grpc.StageInfoServiceStub(channel).GetStageInfo(info_pb.GetStageInfoRequest(), timeout=5)
    assert (info.stage, list(info.backends)) == ("video", ["animatic"])
    assert info.config_digest == backend_config_digest("video", PROMPTS_DIR, {**os.environ, **servers["video"].env})


def test_bad_input_is_invalid_argument_with_a_readable_message(servers):
    with stage_channel(servers["segmentation"].address) as channel:
        stub = seg_grpc.SegmentationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            stub.Segment(seg_pb.SegmentRequest(song_key="nowhere.wav", segments_key="s.json",
                                               segments_text_key="s.txt"), timeout=30)
        assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "nowhere.wav" in missing.value.details()
        with pytest.raises(grpc.RpcError) as bad_params:
            stub.Segment(seg_pb.SegmentRequest(song_key="song.wav", segments_key="s.json", segments_text_key="s.txt",
                                               params=stage_pb2.SegmenterParams(min_seconds=9, max_seconds=3)),
                         timeout=30)
        assert bad_params.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "min" in bad_params.value.details()


def test_defaults_apply_to_unset_parameters(servers, store_root):
    with stage_channel(servers["segmentation"].address) as channel:
        stub = seg_grpc.SegmentationServiceStub(channel)
        answer = stub.Segment(seg_pb.SegmentRequest(song_key="song.wav", segments_key="d.json",
                                                    segments_text_key="d.txt",
                                                    params=stage_pb2.SegmenterParams(segmenter="random", seed=4)),
                              timeout=60)
    assert answer.result.keys["segments"] == "d.json"
    segments = json.loads((store_root / "d.json").read_text())["segments"]
    assert all(4.0 <= s["duration"] <= 8.0 for s in segments)  # the Python defaults, not proto zeros


def test_a_busy_video_replica_answers_resource_exhausted(servers):
    with stage_channel(servers["video"].address) as channel:
        stub = video_grpc.VideoServiceStub(channel)
        first = stub.GenerateClip(long_clip("clips/busy.mp4"), timeout=120)
        assert next(first).HasField("progress")  # the first clip is rendering
        with pytest.raises(grpc.RpcError) as second:
            list(stub.GenerateClip(long_clip("clips/refused.mp4"), timeout=30))
        assert second.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "busy" in second.value.details()
        assert list(first)[-1].HasField("result")


def test_sigterm_stops_serving_and_lets_the_clip_in_flight_finish(servers, store_root):
    video = servers["video"]
    results: list = []
    with stage_channel(video.address) as channel:
        stub = video_grpc.VideoServiceStub(channel)
        stream = stub.GenerateClip(long_clip("clips/drained.mp4"), timeout=120)
        next(stream)
        reader = threading.Thread(target=lambda: results.extend(stream))
        reader.start()
        video.process.terminate()
        health = health_pb2_grpc.HealthStub(channel)

        def serving_now() -> bool:
            try:
                return health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                    health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:  # NOT_SERVING was said, and now new calls are refused
                return False

        deadline = time.monotonic() + 10
        while serving_now():
            assert time.monotonic() < deadline, "still SERVING 10 s after SIGTERM"
            time.sleep(0.05)
        reader.join(timeout=120)
    assert results and results[-1].HasField("result")
    assert (store_root / "clips/drained.mp4").stat().st_size > 0
    assert video.process.wait(timeout=30) == 0


def test_a_backend_that_breaks_turns_health_not_serving():
    """A device error leaves a backend FAILED for good: the runner must say NOT_SERVING so that the
    gateway stops sending work and Kubernetes restarts the pod (exercised with a minimal stage)."""
    import asyncio

    from services.common.transport.server import ServiceRunner

    class BreakableStage:
        ready = True

        def load(self) -> None:
            pass

    async def scenario() -> list[int]:
        stage = BreakableStage()
        runner = ServiceRunner(name="breakable", service_names=["mvgen.v1.VideoService"], host="127.0.0.1", port=0,
                               grace_seconds=1, stage=stage)
        running = asyncio.ensure_future(runner.run())
        seen = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(100):
                status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status
                if not seen or seen[-1] != status:
                    seen.append(status)
                if status == health_pb2.HealthCheckResponse.SERVING:
                    stage.ready = False  # the backend breaks
                if status == health_pb2.HealthCheckResponse.NOT_SERVING and len(seen) > 1:
                    break
                await asyncio.sleep(0.1)
        runner.stopping.set()
        await running
        return seen

    seen = asyncio.run(scenario())
    assert seen[-2:] == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]
