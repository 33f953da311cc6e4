"""The whole system as real processes on loopback, nothing mocked: moto's S3 server, the five stage
services and the gateway, started by tools/dev_stack.py exactly as `make dev-up` starts them (one
stack for the module, on free ports). Jobs go in through the public API (the `mvgen` client, or
its Python stubs with the dev token) and their artifacts are read back from S3.

That every process answers health and reflection on a fresh stack is tested in
tests/test_dev_stack.py (test_every_service_is_serving_and_reflects_its_service); here it is checked
again only for processes restarted after a SIGKILL.

Faults are real: `DevStack.kill` SIGKILLs a process group (a crashed pod, its ffmpeg children
included) in the middle of a job, `DevStack.restart` brings it back on its port. The moment of
the kill is chosen from the job's WatchJob stream: after a clip has finished and while another is
early in its rendering, so "mid-job" holds on a slow machine too. Every wait is bounded and says
what it waited for, with the end of the relevant processes' logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.common import timing
from services.common.pb import job_pb2, stage_pb2
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.pb import music_video_service_pb2_grpc as api_grpc
from services.common.s3_store import S3ArtifactStore
from gateway.cli.remote import apply_change
from tests.media import audio_stream, counted_frames, decode_frames, probe_streams, video_stream
from tests.servers import FAST_RECONNECT, dev_stack_store, stage_channel
from tools.dev_stack import DevStack
from tools.processes import log_tail
from tools.synth_song import SongTruth, render_song

pytestmark = pytest.mark.system  # the dev stack's processes (make check leaves it out)

MVGEN = str(Path(sys.executable).parent / "mvgen")
FPS = 24
# Clips of the fault tests: large enough frames that one renders for a while (~1-3 s), so a kill
# at under half its progress lands mid-clip; 6-9 s segments of the 36 s song give 5-6 clips.
FAULT_SIZE = (640, 360)
JOB_SECONDS = 150.0  # bound on one job's run on a loaded 2-core machine (they take ~10-30 s)
TERMINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)
RUNNING, SUCCEEDED = job_pb2.CLIP_STATE_RUNNING, job_pb2.CLIP_STATE_SUCCEEDED
OTHER_TOKEN = "the-token-of-another-client-of-the-stack"


@dataclass
class System:
    stack: DevStack
    state: dict
    store: S3ArtifactStore
    token: str

    @property
    def address(self) -> str:
        return self.state["gateway"]["address"]

    def logs(self, *names: str, lines: int = 30) -> str:
        """The end of each named process's log (all of them when none is named), for failure messages."""
        names = names or tuple(self.state["processes"])
        return "\n".join(f"--- {name} ({self.state['processes'][name]['log']}):\n"
                         f"{log_tail(self.state['processes'][name]['log'], lines)}" for name in names)


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Iterator[System]:
    base = tmp_path_factory.mktemp("system")
    # A second client of the gateway (its token's digest in MVGEN_GATEWAY_TOKENS_FILE, beside the dev token's).
    (base / "tokens").write_text(hashlib.sha256(OTHER_TOKEN.encode()).hexdigest() + "\n")
    stack = DevStack(base / "stack", free_ports=True, grace_seconds=2, startup_timeout=120,
                     env={"gateway": {"MVGEN_GATEWAY_TOKENS_FILE": str(base / "tokens")}})
    try:
        state = stack.start()
        store = dev_stack_store(state)
        yield System(stack, state, store, state["gateway"]["token"])
    finally:
        stack.stop()  # whatever happened: nothing is left running


@pytest.fixture(autouse=True)
def process_logs(system) -> Iterator[None]:
    """The end of every process's log, printed after each test: pytest shows it for a failed test only."""
    yield
    print(f"process logs under {system.stack.log_dir}:\n{system.logs(lines=40)}")


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> dict[str, tuple[Path, SongTruth]]:
    folder = tmp_path_factory.mktemp("songs")
    made = {}
    for name, seconds, seed in (("short", 12, 1), ("song", 30, 2), ("long", 36, 3)):
        path = folder / f"{name}.wav"
        made[name] = (path, render_song(path, seconds=seconds, seed=seed))
    (folder / "notes.txt").write_text("these are notes, not a song\n" * 200)
    return made


# --- the client side -------------------------------------------------------------------------------------

class Client:
    """The public API with the dev token, on a channel of its own (fast reconnects: services restart here)."""

    def __init__(self, system: System, token: str | None = None):
        self.system = system
        self.channel = grpc.insecure_channel(system.address, options=FAST_RECONNECT)
        self.stub = api_grpc.MusicVideoServiceStub(self.channel)
        self.auth = (("authorization", f"Bearer {token or system.token}"),)

    def close(self) -> None:
        self.channel.close()

    def upload(self, path: Path) -> api_pb2.UploadSongResponse:
        data = path.read_bytes()

        def messages():
            yield api_pb2.UploadSongRequest(metadata=api_pb2.UploadSongMetadata(file_name=path.name,
                                                                                size_bytes=len(data)))
            for start in range(0, len(data), 1 << 20):
                yield api_pb2.UploadSongRequest(chunk=data[start:start + (1 << 20)])

        return self.stub.UploadSong(messages(), metadata=self.auth, timeout=60).song

    def create(self, song_id: str, options: job_pb2.JobOptions, request_id: str | None = None) -> job_pb2.Job:
        request = api_pb2.CreateJobRequest(request_id=request_id or str(uuid.uuid4()), song_id=song_id,
                                           options=options)
        return self.stub.CreateJob(request, metadata=self.auth, timeout=60).job

    def get(self, job_id: str) -> job_pb2.Job:
        return self.stub.GetJob(api_pb2.GetJobRequest(job_id=job_id), metadata=self.auth, timeout=30).job

    def job_ids(self) -> set[str]:
        return {j.job_id for j in self.stub.ListJobs(api_pb2.ListJobsRequest(page_size=1000), metadata=self.auth,
                                                     timeout=30).jobs}

    def follow(self, job_id: str, until: Callable[[job_pb2.Job], bool] = lambda job: False, *,
               timeout: float = JOB_SECONDS, what: str = "the job to end", logs: tuple[str, ...] = ()) -> job_pb2.Job:
        """Follow WatchJob, applying each change to the snapshot, until `until(job)` holds (the stream is
        left at once) or the stream ends after the terminal snapshot. Fails after `timeout` seconds."""
        job = job_pb2.Job()
        stream = self.stub.WatchJob(api_pb2.WatchJobRequest(job_id=job_id), metadata=self.auth, timeout=timeout)
        try:
            for message in stream:
                apply_change(job, message)
                if until(job):
                    return job
        except grpc.RpcError as exc:
            raise AssertionError(f"waiting for {what}: WatchJob {exc.code().name} {exc.details()}\n"
                                 f"{describe(job)}\n{self.system.logs(*logs)}") from None
        finally:
            stream.cancel()
        assert job.state in TERMINAL, f"the watch of {job_id} ended early:\n{describe(job)}"
        return job


def describe(job: job_pb2.Job) -> str:
    clips = " ".join(f"{c.index}:{job_pb2.ClipState.Name(c.state).removeprefix('CLIP_STATE_').lower()}"
                     f"({c.attempts}x{'' if not c.cached else ',cached'}"
                     f"{f',{c.progress.fraction:.2f}' if c.state == RUNNING else ''})" for c in job.clips)
    stages = " ".join(f"{job_pb2.Stage.Name(s.stage).removeprefix('STAGE_').lower()}="
                      f"{job_pb2.StageState.Name(s.state).removeprefix('STAGE_STATE_').lower()}" for s in job.stages)
    return (f"job {job.job_id} {job_pb2.JobState.Name(job.state)} {job.error_message}\n  stages: {stages}\n"
            f"  clips: {clips}")


def wait_for(find: Callable[[], object], *, timeout: float, what: str, context: Callable[[], str]) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = find()
        except grpc.RpcError:
            found = None  # e.g. the gateway is still coming back
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{context()}")
        time.sleep(0.25)


def mid_clip(after: int) -> Callable[[job_pb2.Job], bool]:
    """True once `after` clips have finished and another is rendering, at most half done: the moment to
    kill something "in the middle of the job"."""
    def check(job: job_pb2.Job) -> bool:
        done = sum(c.state == SUCCEEDED for c in job.clips)
        return done >= after and rendering(job) is not None

    return check


def rendering(job: job_pb2.Job) -> job_pb2.ClipStatus | None:
    return next((c for c in job.clips if c.state == RUNNING and 0 < c.progress.fraction <= 0.5), None)


def fault_options(seed: int) -> job_pb2.JobOptions:
    return job_pb2.JobOptions(
        segmenter=stage_pb2.SegmenterParams(segmenter="random", seed=seed, random_min_seconds=6,
                                            random_max_seconds=9),
        seed=seed, fps=FPS, width=FAULT_SIZE[0], height=FAULT_SIZE[1])


def small_options(seed: int) -> job_pb2.JobOptions:
    return job_pb2.JobOptions(segmenter=stage_pb2.SegmenterParams(segmenter="random", seed=seed), seed=seed,
                              fps=12, width=160, height=90)


def segments_of(system: System, job_id: str) -> list[dict]:
    return json.loads(system.store.get_bytes(f"jobs/{job_id}/segments.json"))["segments"]


def manifest_of(system: System, job_id: str) -> dict:
    return json.loads(system.store.get_bytes(f"jobs/{job_id}/manifest.json"))


def assert_complete_video(system: System, job_id: str, truth: SongTruth, fps: int, tmp_path: Path) -> None:
    """Every clip once (clips/NNNN.mp4 and its .json per segment, nothing else), each with its frame
    count, and a final video with H.264 and AAC and round(duration * fps) frames."""
    segments = segments_of(system, job_id)
    prefix = f"jobs/{job_id}/clips/"
    expected = sorted(f"{prefix}{s['index']:04d}{ext}" for s in segments for ext in (".mp4", ".json"))
    assert system.store.list(prefix) == expected
    for segment in segments:
        with system.store.local_path(f"{prefix}{segment['index']:04d}.mp4") as clip:
            assert counted_frames(clip) == timing.frame_count(segment["start"], segment["end"], fps), segment
    assert sum(timing.frame_count(s["start"], s["end"], fps) for s in segments) == round(truth.duration * fps)
    with system.store.local_path(f"jobs/{job_id}/final.mp4") as final:
        (tmp_path / "final.mp4").write_bytes(final.read_bytes())
    check_final(tmp_path / "final.mp4", truth, fps)


def check_final(path: Path, truth: SongTruth, fps: int) -> None:
    info = probe_streams(path)
    assert video_stream(info)["codec_name"] == "h264"
    assert audio_stream(info)["codec_name"] == "aac"
    assert counted_frames(path) == round(truth.duration * fps)


def seconds(stamp) -> float:
    return stamp.ToNanoseconds() / 1e9


def reflected_services(address: str, stage_secret: str | None = None) -> set[str]:
    """`stage_secret`: a stage service answers reflection only to a caller that sends it."""
    with stage_channel(address, stage_secret) if stage_secret else grpc.insecure_channel(address) as channel:
        return set(ProtoReflectionDescriptorDatabase(channel).get_services())


# --- the tests ---------------------------------------------------------------------------------------------

def test_a_wrong_token_and_a_file_that_is_not_audio_are_refused_before_any_job(system, songs):
    client, intruder = Client(system), Client(system, token="not-the-dev-token")
    try:
        jobs_before, stored_before = client.job_ids(), system.store.list("jobs/")
        song = client.upload(songs["short"][0])
        for call in (lambda: intruder.upload(songs["short"][0]),
                     lambda: intruder.create(song.song_id, small_options(1)),
                     lambda: intruder.stub.ListJobs(api_pb2.ListJobsRequest(), metadata=intruder.auth, timeout=10)):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        notes = songs["short"][0].parent / "notes.txt"
        with pytest.raises(grpc.RpcError) as streamed:
            client.upload(notes)
        assert streamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, streamed.value.details()
        # The same file PUT to a presigned URL is refused when the job is created.
        reserved = client.stub.RequestUpload(api_pb2.RequestUploadRequest(
            file_name="notes.mp3", content_type="audio/mpeg", size_bytes=notes.stat().st_size),
            metadata=client.auth, timeout=10)
        put = urllib.request.Request(reserved.upload_url, data=notes.read_bytes(), method="PUT",
                                     headers=dict(reserved.upload_headers))
        with urllib.request.urlopen(put, timeout=30) as answer:
            assert answer.status == 200
        with pytest.raises(grpc.RpcError) as created:
            client.create(reserved.song_id, small_options(1))
        assert created.value.code() == grpc.StatusCode.INVALID_ARGUMENT, created.value.details()
        assert "notes.mp3" in created.value.details()

        assert client.job_ids() == jobs_before  # no job was made, so no stage ran
        assert system.store.list("jobs/") == stored_before
    finally:
        client.close()
        intruder.close()


def test_submit_makes_the_video_through_every_service(system, songs, tmp_path):
    song, truth = songs["song"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MVGEN_")} | {"MVGEN_TOKEN": system.token}
    done = subprocess.run([MVGEN, "submit", str(song), "--server", system.state["gateway"]["server"],
                           "-o", "out.mp4", "--segmenter", "random", "--seed", "5", "--fps", str(FPS),
                           "--size", "160x90"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=JOB_SECONDS)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{system.logs()}"
    check_final(tmp_path / "out.mp4", truth, FPS)

    job_id = done.stdout.split("(job ")[1].split(")")[0]
    client = Client(system)
    try:
        job = client.get(job_id)
    finally:
        client.close()
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert [(s.state, s.backend) for s in job.stages] == [
        (job_pb2.STAGE_STATE_SUCCEEDED, backend)
        for backend in ("random", "descriptors", "template", "animatic", "", "review")]
    assert [c.index for c in job.clips] == [s["index"] for s in segments_of(system, job_id)]
    assert all(c.state == SUCCEEDED and not c.cached for c in job.clips)


def test_create_job_with_the_same_request_id_returns_the_same_job(system, songs):
    client = Client(system)
    try:
        song = client.upload(songs["short"][0])
        request_id = str(uuid.uuid4())
        first = client.create(song.song_id, small_options(6), request_id)
        again = client.create(song.song_id, small_options(6), request_id)
        assert again.job_id == first.job_id
        with pytest.raises(grpc.RpcError) as other:  # the same id for other options is a client bug
            client.create(song.song_id, small_options(7), request_id)
        assert other.value.code() == grpc.StatusCode.ALREADY_EXISTS
        ended = client.follow(first.job_id, logs=("gateway",))
        assert ended.state == job_pb2.JOB_STATE_SUCCEEDED, describe(ended)
        after = client.create(song.song_id, small_options(6), request_id)  # a late retry: the job as it is now
        assert (after.job_id, after.state) == (first.job_id, job_pb2.JOB_STATE_SUCCEEDED)
        assert sum(j == first.job_id for j in client.job_ids()) == 1
    finally:
        client.close()


def test_create_revise_two_scenes_and_only_their_clips_are_made_again(system, songs, tmp_path):
    """ReviseJob through the gateway and the stage services: the revision of two scenes generates exactly
    their two clips and copies everything else; the video's other scenes are frame for frame the first
    video's. Another client cannot see the job to revise it; a retry gives the same revision; a job not
    finished cannot be revised."""
    client, other = Client(system), Client(system, token=OTHER_TOKEN)
    try:
        song_path, truth = songs["song"]
        song = client.upload(song_path)
        parent = client.follow(client.create(song.song_id, small_options(51)).job_id, logs=("gateway",))
        assert parent.state == job_pb2.JOB_STATE_SUCCEEDED and len(parent.clips) >= 4, describe(parent)
        texts = {1: "A red kite climbs over a quiet harbour at dawn.",
                 3: "Two children chase paper boats along a narrow canal."}
        request = api_pb2.ReviseJobRequest(
            request_id=str(uuid.uuid4()), job_id=parent.job_id,
            scenes=[job_pb2.SceneRevision(index=i, text=t) for i, t in texts.items()])
        with pytest.raises(grpc.RpcError) as hidden:  # another client's job is unknown to it
            other.stub.ReviseJob(request, metadata=other.auth, timeout=30)
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND, hidden.value.details()
        revision = client.stub.ReviseJob(request, metadata=client.auth, timeout=30).job
        assert client.stub.ReviseJob(request, metadata=client.auth, timeout=30).job.job_id == revision.job_id
        assert revision.revision.revises_job_id == parent.job_id
        ended = client.follow(revision.job_id, logs=("gateway", "video", "assembly"))
        assert ended.state == job_pb2.JOB_STATE_SUCCEEDED, describe(ended)

        running = client.create(client.upload(songs["long"][0]).song_id, fault_options(52))
        with pytest.raises(grpc.RpcError) as early:
            client.stub.ReviseJob(api_pb2.ReviseJobRequest(request_id=str(uuid.uuid4()), job_id=running.job_id,
                                                           scenes=request.scenes), metadata=client.auth, timeout=30)
        assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION, early.value.details()
        client.stub.CancelJob(api_pb2.CancelJobRequest(job_id=running.job_id), metadata=client.auth, timeout=60)
    finally:
        client.close()
        other.close()

    assert sorted(c.index for c in ended.clips if not c.cached) == sorted(texts), describe(ended)
    assert all(ended.clips[i].scene_text == text for i, text in texts.items())
    manifest = manifest_of(system, revision.job_id)
    parent_prefix = f"jobs/{parent.job_id}/"
    assert sorted(int(k) for k, c in manifest["clips"].items() if "reused_from" not in c) == sorted(texts)
    assert all(c["reused_from"] == parent_prefix for k, c in manifest["clips"].items() if int(k) not in texts)
    assert manifest["stages"]["video"]["info"]["generated"] == 2
    assert all(manifest["stages"][s]["reused_from"] == parent_prefix for s in ("segmentation", "analysis", "scripting"))
    assert "reused_from" not in manifest["stages"]["assembly"]  # the video is assembled again
    assert manifest["revision"]["revises_job_id"] == parent.job_id and manifest["revision"]["scenes"] == sorted(texts)

    assert_complete_video(system, revision.job_id, truth, 12, tmp_path)
    finals = {}
    for name, job_id in (("parent", parent.job_id), ("revision", revision.job_id)):
        with system.store.local_path(f"jobs/{job_id}/final.mp4") as final:
            finals[name] = decode_frames(final, 160, 90)
    for segment in segments_of(system, revision.job_id):
        first, last = round(segment["start"] * 12), round(segment["end"] * 12)
        same = np.array_equal(finals["parent"][first:last], finals["revision"][first:last])
        assert same == (segment["index"] not in texts), segment


def test_cancel_stops_a_running_job_and_keeps_its_finished_clips(system, songs):
    client = Client(system)
    try:
        song = client.upload(songs["long"][0])
        job = client.create(song.song_id, fault_options(11))
        seen = client.follow(job.job_id, mid_clip(after=1), what="a clip finished and another rendering",
                             logs=("gateway", "video"))
        cancelled = client.stub.CancelJob(api_pb2.CancelJobRequest(job_id=job.job_id), metadata=client.auth,
                                          timeout=60).job
        assert cancelled.state == job_pb2.JOB_STATE_CANCELLED, describe(cancelled)
        prefix = f"jobs/{job.job_id}/"
        kept = sorted(c.clip_key for c in cancelled.clips if c.state == SUCCEEDED)
        assert len(kept) >= 1 and {c.index for c in seen.clips if c.state == SUCCEEDED} <= \
            {c.index for c in cancelled.clips if c.state == SUCCEEDED}
        assert all(c.state in (SUCCEEDED, job_pb2.CLIP_STATE_CANCELLED) for c in cancelled.clips), describe(cancelled)
        assert len(kept) < len(cancelled.clips)
        assert "video" not in cancelled.artifact_keys
        time.sleep(2.0)  # the clip that was rendering is stopped, not finished and written later
        assert sorted(k for k in system.store.list(f"{prefix}clips/") if k.endswith(".mp4")) == kept
        assert not system.store.exists(f"{prefix}final.mp4")
        assert client.get(job.job_id).state == job_pb2.JOB_STATE_CANCELLED
        assert manifest_of(system, job.job_id)["state"] == "cancelled"
    finally:
        client.close()


def test_the_video_service_killed_mid_clip_and_restarted_finishes_the_job_with_every_clip_once(
        system, songs, tmp_path):
    song_path, truth = songs["long"]
    client = Client(system)
    try:
        job = client.create(client.upload(song_path).song_id, fault_options(21))
        seen = client.follow(job.job_id, mid_clip(after=1), what="a clip finished and another rendering",
                             logs=("gateway", "video"))
        killed_at = time.time()
        system.stack.kill("video")
        interrupted = rendering(seen).index
        done_before = {c.index for c in seen.clips if c.state == SUCCEEDED}
        system.stack.restart("video", timeout=90)
        back_at = time.time()
        assert "mvgen.v1.VideoService" in reflected_services(system.state["processes"]["video"]["address"],
                                                             system.state["stage_secret"])

        ended = client.follow(job.job_id, what="the job to end after the video service came back",
                              logs=("gateway", "video"))
        assert ended.state == job_pb2.JOB_STATE_SUCCEEDED, f"{describe(ended)}\n{system.logs('gateway', 'video')}"
        final = client.get(job.job_id)
    finally:
        client.close()
    clips = {c.index: c for c in final.clips}
    # The clip that was rendering was lost with the replica and generated again once it was back: a
    # second attempt, started after the kill.
    assert clips[interrupted].attempts >= 2, describe(final)
    assert killed_at < seconds(clips[interrupted].start_time) < seconds(clips[interrupted].end_time), describe(final)
    assert back_at < seconds(clips[interrupted].end_time), describe(final)
    assert all(seconds(clips[i].end_time) < killed_at and clips[i].attempts == 1 for i in done_before), \
        describe(final)
    assert all(c.state == SUCCEEDED and not c.cached for c in final.clips), describe(final)
    assert_complete_video(system, job.job_id, truth, FPS, tmp_path)


def test_the_gateway_killed_mid_job_and_restarted_resumes_without_redoing_finished_clips(system, songs, tmp_path):
    song_path, truth = songs["long"]
    client = Client(system)
    request_id = str(uuid.uuid4())
    try:
        song = client.upload(song_path)
        job = client.create(song.song_id, fault_options(31), request_id)
        seen = client.follow(job.job_id, mid_clip(after=2), what="two clips finished and another rendering",
                             logs=("gateway", "video"))
        system.stack.kill("gateway")
    finally:
        client.close()
    prefix = f"jobs/{job.job_id}/"
    manifest = manifest_of(system, job.job_id)
    finished = {key: record for key, record in manifest["clips"].items() if record["state"] == "succeeded"}
    assert {int(k) for k in finished} >= {c.index for c in seen.clips if c.state == SUCCEEDED}
    stamps = {key: system.store.client.stat_object(system.store.bucket, f"{prefix}clips/{key}.mp4")
              for key in finished}
    assert manifest["state"] == "running" and not system.store.exists(f"{prefix}final.mp4")

    system.stack.restart("gateway", timeout=90)
    assert "mvgen.v1.MusicVideoService" in reflected_services(system.address)
    client = Client(system)
    try:
        ended = wait_for(lambda: (j := client.get(job.job_id)).state in TERMINAL and j, timeout=JOB_SECONDS,
                         what=f"job {job.job_id} to end after the gateway restart",
                         context=lambda: system.logs("gateway", "video"))
        assert ended.state == job_pb2.JOB_STATE_SUCCEEDED, f"{describe(ended)}\n{system.logs('gateway')}"
        # A client retrying its CreateJob across the restart gets the same job.
        assert client.create(song.song_id, fault_options(31), request_id).job_id == job.job_id
    finally:
        client.close()
    assert f"resuming job {job.job_id}" in Path(system.state["processes"]["gateway"]["log"]).read_text()

    after = manifest_of(system, job.job_id)
    for key, record in finished.items():  # not generated again: the same object, the same record
        stat = system.store.client.stat_object(system.store.bucket, f"{prefix}clips/{key}.mp4")
        assert (stat.last_modified, stat.etag) == (stamps[key].last_modified, stamps[key].etag), key
        assert after["clips"][key] == record, key
    # Finished before the crash, they keep their history: made by this job once, not cached.
    assert all(not ended.clips[int(k)].cached and ended.clips[int(k)].attempts == 1 for k in finished), describe(ended)
    assert_complete_video(system, job.job_id, truth, FPS, tmp_path)


def test_a_job_cancelled_while_it_waits_for_the_video_service_is_cancelled(system, songs):
    # Last in the module: were the cancel lost, the job's manifest would stay "running", and a gateway
    # restart would resume it.
    gateway_log = Path(system.state["processes"]["gateway"]["log"])
    client = Client(system)
    try:
        song = client.upload(songs["short"][0])
        noticed = gateway_log.read_text().count(": unreachable (")
        system.stack.kill("video")
        wait_for(lambda: gateway_log.read_text().count(": unreachable (") > noticed, timeout=30,
                 what="the gateway to notice that the video service is gone", context=lambda: system.logs("gateway"))
        job = client.create(song.song_id, fault_options(41))
        time.sleep(1.0)
        waiting = client.get(job.job_id)  # jobs wait (QUEUED) until every stage serves
        assert waiting.state == job_pb2.JOB_STATE_QUEUED, describe(waiting)
        assert all(s.state == job_pb2.STAGE_STATE_PENDING for s in waiting.stages), describe(waiting)
        cancelled = client.stub.CancelJob(api_pb2.CancelJobRequest(job_id=job.job_id), metadata=client.auth,
                                          timeout=60).job
        assert cancelled.state == job_pb2.JOB_STATE_CANCELLED, f"{describe(cancelled)}\n{system.logs('gateway')}"
        assert manifest_of(system, job.job_id)["state"] == "cancelled"
    finally:
        client.close()
        if not system.stack.running().get("video"):
            system.stack.restart("video", timeout=90)
