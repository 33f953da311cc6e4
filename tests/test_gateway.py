"""The public gateway over real gRPC on loopback: uploads, jobs, watching, cancelling, auth, resuming
after a restart, and presigned URLs against an S3 server (moto). Stages run in-process."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common import artifacts
from services.common.pb import job_pb2, stage_pb2
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.pb import music_video_service_pb2_grpc as api_grpc
from services.common.settings import StoreSettings
from services.common.store import ArtifactStore, LocalArtifactStore
from gateway.pipeline.inprocess import InProcessStages
from gateway.server.app import GatewayServer
from gateway.server.auth import token_digest
from gateway.server.options import BackendChoices
from gateway.server.settings import GatewaySettings
from tests.llm_servers import RecordingProxy, canned_answer
from tests.media import probe_streams, tone, video_stream

TOKEN = "test-token-of-the-gateway"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
SMALL = job_pb2.JobOptions(segmenter=stage_pb2.SegmenterParams(segmenter="random", seed=3), fps=12, width=160,
                           height=90)
TERMINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)


class RunningGateway:
    """A GatewayServer serving on loopback from its own event loop and thread, as in a deployment."""

    def __init__(self, store: ArtifactStore, *, tokens: tuple[str, ...] = (TOKEN,),
                 writers: tuple[str, ...] = ("template",), **settings: object):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        store_settings = StoreSettings("local", "", "", "mvgen", "", "", "us-east-1", False)
        if writers != ("template",):
            settings.setdefault("backends", BackendChoices(("descriptors",), writers, ("animatic",)))
        self.settings = GatewaySettings(store_settings, tuple(token_digest(t) for t in tokens), host="127.0.0.1",
                                        port=0, metrics_port=0, grace_seconds=2, **settings)
        stages = InProcessStages(store, analyzer="descriptors", scripting=list(writers), generator="animatic",
                                 clip_workers=1)
        self.gateway = self._run(self._start(store, stages))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.gateway.port}")
        self.stub = api_grpc.MusicVideoServiceStub(self.channel)

    async def _start(self, store: ArtifactStore, stages: InProcessStages) -> GatewayServer:
        gateway = GatewayServer(self.settings, store, stages)
        await gateway.start()
        return gateway

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def stop(self) -> None:
        self.channel.close()
        self._run(self.gateway.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture
def local_store(tmp_path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "store")


@pytest.fixture
def gateway(local_store) -> Iterator[RunningGateway]:
    running = RunningGateway(local_store)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("songs")
    tone(folder / "short.wav", 12.0)
    tone(folder / "long.wav", 40.0)
    (folder / "notes.txt").write_text("not a song at all\n" * 100)
    return folder


def upload(stub: api_grpc.MusicVideoServiceStub, path: Path, metadata=AUTH, chunk: int = 64 * 1024):
    data = path.read_bytes()

    def messages():
        yield api_pb2.UploadSongRequest(metadata=api_pb2.UploadSongMetadata(file_name=path.name, size_bytes=len(data)))
        for start in range(0, len(data), chunk):
            yield api_pb2.UploadSongRequest(chunk=data[start:start + chunk])

    return stub.UploadSong(messages(), metadata=metadata).song


def create(stub, song_id: str, options=SMALL, request_id: str | None = None) -> job_pb2.Job:
    request = api_pb2.CreateJobRequest(request_id=request_id or str(uuid.uuid4()), song_id=song_id, options=options)
    return stub.CreateJob(request, metadata=AUTH).job


def watch_until(stub, job_id: str, stop=lambda job, message: False, timeout: float = 120,
                metadata=AUTH) -> tuple[job_pb2.Job, list]:
    """Follow the watch stream, applying changes to the snapshot, until it ends or `stop` says so."""
    job, messages = job_pb2.Job(), []
    stream = stub.WatchJob(api_pb2.WatchJobRequest(job_id=job_id), metadata=metadata, timeout=timeout)
    for message in stream:
        messages.append(message)
        kind = message.WhichOneof("event")
        if kind == "job":
            job.CopyFrom(message.job)
        elif kind == "stage":
            next(s for s in job.stages if s.stage == message.stage.stage).CopyFrom(message.stage)
        else:
            next(c for c in job.clips if c.index == message.clip.index).CopyFrom(message.clip)
        if stop(job, message):
            stream.cancel()
            break
    return job, messages


def clips_done(job: job_pb2.Job) -> int:
    return sum(c.state == job_pb2.CLIP_STATE_SUCCEEDED for c in job.clips)


@pytest.mark.slow
def test_a_whole_job_through_the_gateway(gateway, songs, local_store):
    song = upload(gateway.stub, songs / "short.wav")
    assert song.sha256 and song.duration_seconds == pytest.approx(12.0, abs=0.01)
    assert song.song_key == f"songs/{token_digest(TOKEN)[:12]}/{song.sha256}.wav" and local_store.exists(song.song_key)
    assert upload(gateway.stub, songs / "short.wav").song_id == song.song_id  # content-addressed

    request_id = str(uuid.uuid4())
    created = create(gateway.stub, song.song_id, request_id=request_id)
    assert created.state in (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING)
    assert created.options.analyzer == "descriptors" and created.options.top_k == 3  # defaults resolved
    assert create(gateway.stub, song.song_id, request_id=request_id).job_id == created.job_id
    with pytest.raises(grpc.RpcError) as reused:
        create(gateway.stub, song.song_id, options=job_pb2.JobOptions(fps=30), request_id=request_id)
    assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS

    with ThreadPoolExecutor(1) as pool:  # a second watcher of the same job, at the same time
        other_watch = pool.submit(watch_until, gateway.stub, created.job_id)
        job, messages = watch_until(gateway.stub, created.job_id)
        assert other_watch.result(timeout=60)[0].state == job_pb2.JOB_STATE_SUCCEEDED
    assert messages[0].WhichOneof("event") == "job"
    snapshot_states = [m.job.state for m in messages if m.WhichOneof("event") == "job"]
    assert snapshot_states[-1] == job_pb2.JOB_STATE_SUCCEEDED and job_pb2.JOB_STATE_RUNNING in snapshot_states
    assert any(m.WhichOneof("event") == "clip" and 0 < m.clip.progress.fraction < 1 for m in messages)
    assert {s.state for s in job.stages} == {job_pb2.STAGE_STATE_SUCCEEDED}
    assert job.title and all(c.scene_text and c.clip_key for c in job.clips)

    result = gateway.stub.GetJob(api_pb2.GetJobRequest(job_id=created.job_id, include_artifacts=True), metadata=AUTH)
    prefix = f"jobs/{created.job_id}/"
    assert result.job.artifact_keys["video"] == prefix + "final.mp4" and local_store.exists(prefix + "final.mp4")
    assert {"segments", "labels", "prompt", "script", "song"} <= set(result.job.artifact_keys)
    assert not result.video_url  # a local store has no URLs
    assert len(result.segmentation.segments) == len(job.clips) and result.script.title == job.title
    assert result.labels.analyzer == "descriptors"
    record = json.loads(local_store.get_bytes(prefix + "job.json"))
    assert record["request_id"] == request_id and record["song"]["sha256"] == song.sha256

    listed = gateway.stub.ListJobs(api_pb2.ListJobsRequest(), metadata=AUTH)
    assert [j.job_id for j in listed.jobs] == [created.job_id]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{gateway.gateway.metrics_port}/metrics").read().decode()
    assert 'mvgen_jobs{state="succeeded"} 1.0' in metrics
    assert 'mvgen_gateway_requests_total{code="ALREADY_EXISTS",rpc="CreateJob"} 1.0' in metrics
    assert 'mvgen_stage_duration_seconds_count{stage="video"} 1.0' in metrics


@pytest.mark.slow
def test_cancel_stops_a_running_job_and_keeps_finished_clips(gateway, songs, local_store):
    song = upload(gateway.stub, songs / "long.wav")
    created = create(gateway.stub, song.song_id)
    running, _ = watch_until(gateway.stub, created.job_id, lambda job, m: clips_done(job) >= 1)
    cancelled = gateway.stub.CancelJob(api_pb2.CancelJobRequest(job_id=created.job_id), metadata=AUTH).job
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    done = [c for c in cancelled.clips if c.state == job_pb2.CLIP_STATE_SUCCEEDED]
    assert 1 <= len(done) < len(cancelled.clips)
    assert all(local_store.exists(c.clip_key) for c in done)
    assert {c.state for c in cancelled.clips} - {job_pb2.CLIP_STATE_SUCCEEDED} == {job_pb2.CLIP_STATE_CANCELLED}
    assert not local_store.exists(f"jobs/{created.job_id}/final.mp4")
    # Watching an ended job gives its one terminal snapshot; cancelling it again changes nothing.
    _, messages = watch_until(gateway.stub, created.job_id)
    assert len(messages) == 1 and messages[0].job.state == job_pb2.JOB_STATE_CANCELLED
    again = gateway.stub.CancelJob(api_pb2.CancelJobRequest(job_id=created.job_id), metadata=AUTH).job
    assert again.state == job_pb2.JOB_STATE_CANCELLED


def test_calls_without_a_valid_token_are_refused(gateway, songs):
    for metadata, says in ((None, "missing credentials"), ((("authorization", "Bearer wrong"),), "invalid token"),
                           ((("authorization", f"Basic {TOKEN}"),), "Bearer")):
        with pytest.raises(grpc.RpcError) as refused:
            gateway.stub.ListJobs(api_pb2.ListJobsRequest(), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and says in refused.value.details()
    for call in (lambda: upload(gateway.stub, songs / "short.wav", metadata=None),
                 lambda: list(gateway.stub.WatchJob(api_pb2.WatchJobRequest(job_id="x")))):
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    health = health_pb2_grpc.HealthStub(gateway.channel)  # probes need no token
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    watched = health.Watch(health_pb2.HealthCheckRequest(service="mvgen.v1.MusicVideoService"))
    assert next(watched).status == health_pb2.HealthCheckResponse.SERVING
    watched.cancel()
    reflection = reflection_pb2_grpc.ServerReflectionStub(gateway.channel)  # so is grpcurl
    answer = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert "mvgen.v1.MusicVideoService" in {s.name for s in answer.list_services_response.service}


def test_jobs_are_listed_newest_first_by_page(local_store, songs):
    running = RunningGateway(local_store, max_active_jobs=1)
    try:
        song_id = upload(running.stub, songs / "short.wav").song_id
        made = [create(running.stub, song_id).job_id for _ in range(3)]
        first = running.stub.ListJobs(api_pb2.ListJobsRequest(page_size=2), metadata=AUTH)
        assert [j.job_id for j in first.jobs] == made[:0:-1] and first.next_page_token
        second = running.stub.ListJobs(api_pb2.ListJobsRequest(page_size=2, page_token=first.next_page_token),
                                       metadata=AUTH)
        assert [j.job_id for j in second.jobs] == made[:1] and not second.next_page_token
        queued = running.stub.ListJobs(api_pb2.ListJobsRequest(state=job_pb2.JOB_STATE_QUEUED), metadata=AUTH)
        assert {j.job_id for j in queued.jobs} >= set(made[1:])  # one job runs at a time: the others wait
        with pytest.raises(grpc.RpcError) as mixed:
            running.stub.ListJobs(api_pb2.ListJobsRequest(page_token=first.next_page_token,
                                                          state=job_pb2.JOB_STATE_QUEUED), metadata=AUTH)
        assert mixed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        running.stop()


def test_jobs_and_songs_belong_to_the_client_that_made_them(local_store, songs):
    running = RunningGateway(local_store, tokens=(TOKEN, "another-token"))
    try:
        job = create(running.stub, upload(running.stub, songs / "short.wav").song_id)
        other = (("authorization", "Bearer another-token"),)
        with pytest.raises(grpc.RpcError) as hidden:
            running.stub.GetJob(api_pb2.GetJobRequest(job_id=job.job_id), metadata=other)
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as song:
            running.stub.CreateJob(api_pb2.CreateJobRequest(song_id=job.song.song_id), metadata=other)
        assert song.value.code() == grpc.StatusCode.NOT_FOUND
        assert not running.stub.ListJobs(api_pb2.ListJobsRequest(), metadata=other).jobs
    finally:
        running.stop()


def test_a_file_that_is_not_audio_is_refused_before_any_job(gateway, songs, local_store):
    with pytest.raises(grpc.RpcError) as refused:
        upload(gateway.stub, songs / "notes.txt")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("notes.txt: ")
    with pytest.raises(grpc.RpcError) as unknown:
        create(gateway.stub, "0" * 64)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert not gateway.stub.ListJobs(api_pb2.ListJobsRequest(), metadata=AUTH).jobs
    assert not local_store.list("songs/") and not local_store.list("jobs/")


def test_bad_options_are_invalid_arguments(gateway, songs):
    song_id = upload(gateway.stub, songs / "short.wav").song_id
    for options, says in ((job_pb2.JobOptions(fps=500), "fps"), (job_pb2.JobOptions(width=15), "width"),
                          (job_pb2.JobOptions(top_k=-1), "top_k"), (job_pb2.JobOptions(generator="wan"), "generator"),
                          (job_pb2.JobOptions(pipeline=9), "pipeline"),
                          # This gateway serves no audio-language model (MVGEN_STORYTELLERS is empty).
                          (job_pb2.JobOptions(pipeline=job_pb2.PIPELINE_LALM), "MVGEN_STORYTELLERS"),
                          (job_pb2.JobOptions(fallback_writer="template"), "fallback writer must differ"),
                          (job_pb2.JobOptions(segmenter=stage_pb2.SegmenterParams(segmenter="magic")), "segmenter")):
        with pytest.raises(grpc.RpcError) as refused:
            create(gateway.stub, song_id, options=options)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in refused.value.details()
    with pytest.raises(grpc.RpcError) as local:
        gateway.stub.RequestUpload(api_pb2.RequestUploadRequest(file_name="a.mp3", size_bytes=10), metadata=AUTH)
    assert local.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "UploadSong" in local.value.details()


def test_an_oversized_upload_is_refused_while_streaming(local_store, songs):
    running = RunningGateway(local_store, max_upload_bytes=100_000)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            upload(running.stub, songs / "short.wav")  # about 2 MB
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert not local_store.list("songs/")
    finally:
        running.stop()


@pytest.mark.slow
def test_a_restarted_gateway_resumes_the_job_without_redoing_finished_clips(local_store, songs):
    first = RunningGateway(local_store)
    song = upload(first.stub, songs / "long.wav")
    created = create(first.stub, song.song_id)
    watch_until(first.stub, created.job_id, lambda job, m: clips_done(job) >= 2)
    first.stop()

    prefix = f"jobs/{created.job_id}/"
    manifest = json.loads(local_store.get_bytes(prefix + "manifest.json"))
    assert manifest["state"] == "interrupted"
    finished = {int(k): local_store.path(c["outputs"]["clip"]).stat().st_mtime_ns
                for k, c in manifest["clips"].items() if c["state"] == "succeeded"}
    assert len(finished) >= 2

    second = RunningGateway(local_store)
    try:
        job, messages = watch_until(second.stub, created.job_id)
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED
        for index, mtime in finished.items():  # not made again, and shown as made by this job (not cached)
            assert local_store.path(f"{prefix}clips/{index:04d}.mp4").stat().st_mtime_ns == mtime
            assert not job.clips[index].cached and job.clips[index].attempts == 1
        assert not any(s.cached for s in job.stages)
        assert local_store.exists(prefix + "final.mp4")
    finally:
        second.stop()


@pytest.fixture
def s3_store(tmp_path) -> Iterator[ArtifactStore]:
    from moto.server import ThreadedMotoServer

    from services.common.s3_store import S3ArtifactStore

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    store = S3ArtifactStore(StoreSettings("s3", "", f"http://{host}:{port}", "mvgen", "test", "test", "us-east-1",
                                          False))
    store.ensure_bucket()
    yield store
    server.stop()


@pytest.mark.slow
def test_presigned_upload_and_download_with_s3(s3_store, songs, tmp_path):
    running = RunningGateway(s3_store)
    try:
        size = (songs / "short.wav").stat().st_size
        reserved = running.stub.RequestUpload(api_pb2.RequestUploadRequest(
            file_name="../../etc/passwd.wav", content_type="audio/wav", size_bytes=size), metadata=AUTH)
        assert reserved.song_key == f"songs/uploads/{reserved.song_id}" and reserved.max_size_bytes > 0
        with pytest.raises(grpc.RpcError) as early:
            create(running.stub, reserved.song_id)
        assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        put = urllib.request.Request(reserved.upload_url, data=(songs / "short.wav").read_bytes(), method="PUT",
                                     headers=dict(reserved.upload_headers))
        assert urllib.request.urlopen(put).status == 200
        created = create(running.stub, reserved.song_id)
        assert created.song.sha256 and created.song.song_key.startswith("songs/") and created.song.duration_seconds > 11
        assert created.song.file_name == "passwd.wav"

        job, _ = watch_until(running.stub, created.job_id)
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED
        result = running.stub.GetJob(api_pb2.GetJobRequest(job_id=created.job_id), metadata=AUTH)
        assert result.video_url and set(result.artifact_urls) == set(result.job.artifact_keys)
        assert sorted(result.clip_urls) == [c.index for c in job.clips]
        video = tmp_path / "video.mp4"
        video.write_bytes(urllib.request.urlopen(result.video_url).read())
        info = probe_streams(video)
        assert video_stream(info)["width"] == 160
        assert float(info["format"]["duration"]) == pytest.approx(12.0, abs=0.2)
    finally:
        running.stop()


@pytest.mark.slow
def test_watching_a_job_shows_its_script_written_section_by_section(local_store, monkeypatch, tmp_path):
    model = RecordingProxy(answer=canned_answer)
    monkeypatch.setenv("MVGEN_LLM_URL", model.base_url)
    monkeypatch.setenv("MVGEN_LLM_PARALLEL", "1")
    running = RunningGateway(local_store, writers=("openai", "template"))
    try:
        tone(tmp_path / "song.wav", 50.0)
        song = upload(running.stub, tmp_path / "song.wav")
        options = job_pb2.JobOptions(segmenter=stage_pb2.SegmenterParams(segmenter="random", seed=3), fps=12,
                                     width=160, height=90)
        job = create(running.stub, song.song_id, options)
        finished, messages = watch_until(running.stub, job.job_id)
    finally:
        running.stop()
        model.close()
    assert finished.state == job_pb2.JOB_STATE_SUCCEEDED
    scripting = [m.stage for m in messages if m.WhichOneof("event") == "stage"
                 and m.stage.stage == job_pb2.STAGE_SCRIPTING and m.stage.HasField("progress")]
    total = scripting[-1].progress.total
    assert total >= 3 and [s.progress.done for s in scripting] == list(range(1, total + 1))  # the plan, each section
    assert scripting[0].progress.detail == "plan written" and scripting[-1].progress.fraction == 1.0
    assert all(s.state == job_pb2.STAGE_STATE_RUNNING for s in scripting)
    info = next(s for s in finished.stages if s.stage == job_pb2.STAGE_SCRIPTING).info
    assert info["sections"] == total - 1 and info["writer"] == "openai"
    assert set(finished.artifact_keys) >= {"plan", "plan_text", "sections", "response"}


@pytest.mark.slow
def test_a_job_with_the_persons_own_lyrics_keeps_them_aligned_and_shows_them_to_the_writer(local_store, songs):
    """Lyrics given with the job (LRC) are kept with it, aligned to its segments in lyrics.json and
    lyrics.txt, listed among its artifacts, and reach the writer's prompt as data."""
    lrc = "[ti:Harbour]\n[00:01.00]paper boats upon the river\n[00:06.50]lanterns over the harbour\n"
    gateway = RunningGateway(local_store)
    try:
        song = upload(gateway.stub, songs / "short.wav")
        options = job_pb2.JobOptions(segmenter=SMALL.segmenter, fps=SMALL.fps, width=SMALL.width,
                                     height=SMALL.height, lyrics=lrc)
        created = create(gateway.stub, song.song_id, options=options)
        assert created.options.lyrics == lrc and created.options.transcriber == ""  # this gateway serves none
        job, _ = watch_until(gateway.stub, created.job_id)
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error_message
        keys = gateway.stub.GetJob(api_pb2.GetJobRequest(job_id=created.job_id), metadata=AUTH).job.artifact_keys
    finally:
        gateway.stop()
    prefix = f"jobs/{created.job_id}/"
    assert (keys["lyrics"], keys["lyrics_text"]) == (prefix + "lyrics.json", prefix + "lyrics.txt")
    assert local_store.get_text(prefix + "lyrics_source.txt") == lrc
    lyrics = artifacts.Lyrics.from_dict(json.loads(local_store.get_text(keys["lyrics"])))
    segments = json.loads(local_store.get_text(keys["segments"]))["segments"]
    assert lyrics.source == "file:lrc" and [s.index for s in lyrics.segments] == [s["index"] for s in segments]
    for word in (w for s in lyrics.segments for w in s.words):  # each word in the segment that holds its time
        segment = segments[next(s.index for s in lyrics.segments if word in s.words)]
        assert segment["start"] <= (word.start + word.end) / 2 <= segment["end"]
    sung = " ".join(s.text for s in lyrics.segments if s.vocal)
    assert sung == "paper boats upon the river lanterns over the harbour"
    assert "lanterns over the harbour" in local_store.get_text(keys["lyrics_text"])
    prompt = local_store.get_text(keys["prompt"])
    assert "<lyrics>" in prompt and "paper boats upon the river" in prompt
    manifest = json.loads(local_store.get_text(prefix + "manifest.json"))
    assert manifest["options"]["lyrics"]["chars"] == len(lrc)
