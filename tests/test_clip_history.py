"""A job's history survives a gateway crash: `python -m gateway.server` SIGKILLed mid-job and
started again resumes the job, and the clips and stages that finished before the crash keep what
really happened to them (generated, not cached; their attempts; when they started and ended),
because the manifest records it, instead of showing `cached: true`, `attempts: 0` and the time of
the resume."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from services.common.pb import job_pb2, stage_pb2
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.pb import music_video_service_pb2_grpc as api_grpc
from gateway.server.auth import token_digest
from tests.media import tone
from tests.servers import FAST_RECONNECT
from tests.test_client_cli import GatewayProcess
from tests.test_gateway import watch_until

pytestmark = pytest.mark.system  # python -m gateway.server in a process of its own (make check leaves it out)

TOKEN = "token-of-the-clip-history-test"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
OPTIONS = job_pb2.JobOptions(segmenter=stage_pb2.SegmenterParams(segmenter="random", seed=3), fps=12, width=160,
                             height=90)
TERMINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)
SUCCEEDED = job_pb2.CLIP_STATE_SUCCEEDED


def seconds(stamp) -> float:
    return stamp.ToNanoseconds() / 1e9


def follow(stub, job_id: str, until) -> job_pb2.Job:
    """The job as its watch stream builds it, up to the first message after which `until(job)` holds."""
    job, _ = watch_until(stub, job_id, lambda job, message: until(job), timeout=180, metadata=AUTH)
    return job


def test_clips_and_stages_finished_before_a_gateway_crash_keep_their_history(tmp_path):
    song = tone(tmp_path / "long.wav", 40.0)
    env = {"MVGEN_STAGES": "inprocess", "MVGEN_STORE": "local", "MVGEN_STORE_ROOT": str(tmp_path / "store"),
           "MVGEN_GATEWAY_TOKENS_SHA256": token_digest(TOKEN)}
    gateway = GatewayProcess(env, tmp_path / "gateway.log")
    gateway.start(timeout=90)
    try:
        with grpc.insecure_channel(gateway.address, options=FAST_RECONNECT) as channel:
            stub = api_grpc.MusicVideoServiceStub(channel)
            data = song.read_bytes()
            messages = [api_pb2.UploadSongRequest(metadata=api_pb2.UploadSongMetadata(file_name=song.name))]
            messages += [api_pb2.UploadSongRequest(chunk=data[i:i + (1 << 20)]) for i in range(0, len(data), 1 << 20)]
            song_id = stub.UploadSong(iter(messages), metadata=AUTH, timeout=60).song.song_id
            created = stub.CreateJob(api_pb2.CreateJobRequest(song_id=song_id, options=OPTIONS), metadata=AUTH,
                                     timeout=60).job
            before = follow(stub, created.job_id, lambda job: sum(c.state == SUCCEEDED for c in job.clips) >= 2)
        gateway.process.kill()  # SIGKILL: no shutdown, the manifest says "running"
        gateway.process.wait()
        crashed_at = time.time()
        done_before = {c.index: c for c in before.clips if c.state == SUCCEEDED}
        assert len(done_before) < len(before.clips), "the job ended before the crash: nothing to resume"
        for clip in done_before.values():  # what the first gateway showed: generated once, not cached
            assert not clip.cached and clip.attempts == 1, clip
        stages_before = {s.stage: s for s in before.stages if s.state == job_pb2.STAGE_STATE_SUCCEEDED}

        gateway.start(timeout=90)
        with grpc.insecure_channel(gateway.address, options=FAST_RECONNECT) as channel:
            stub = api_grpc.MusicVideoServiceStub(channel)
            follow(stub, created.job_id, lambda job: job.state in TERMINAL)
            after = stub.GetJob(api_pb2.GetJobRequest(job_id=created.job_id), metadata=AUTH, timeout=30).job
        assert after.state == job_pb2.JOB_STATE_SUCCEEDED, after.error_message
        for index, clip in done_before.items():
            resumed = after.clips[index]
            assert resumed.state == SUCCEEDED and not resumed.cached and resumed.attempts == clip.attempts, resumed
            assert abs(seconds(resumed.start_time) - seconds(clip.start_time)) < 0.5, (resumed, clip)
            assert abs(seconds(resumed.end_time) - seconds(clip.end_time)) < 0.5, (resumed, clip)
            assert seconds(resumed.end_time) < crashed_at
        for clip in after.clips:
            if clip.index not in done_before:  # generated after the restart (the one in flight: a 2nd attempt)
                assert not clip.cached and clip.attempts >= 1 and seconds(clip.end_time) > crashed_at, clip
        for stage in after.stages:
            assert not stage.cached, stage  # nothing came from another job's outputs
            if stage.stage in stages_before:
                assert abs(seconds(stage.start_time) - seconds(stages_before[stage.stage].start_time)) < 1.0
                assert seconds(stage.end_time) < crashed_at, stage
        log = Path(gateway.log).read_text()
        assert f"resuming job {created.job_id}" in log
    finally:
        if gateway.process.poll() is None:
            assert gateway.stop() == 0
