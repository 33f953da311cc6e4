"""The gRPC stage clients against the six stage servers as real processes on loopback sockets.

The servers share one local folder store (the stand-in for S3); each test's job has its own prefix.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import grpc
import pytest

from services.analysis.lyrics.listening import TRANSCRIBERS
from services.analysis.server import default_backends
from services.common import artifacts
from services.common.backend_config import backend_config_digest
from services.common.errors import InvalidInputError, JobCancelledError, TransientError
from services.common.pb import analysis_service_pb2_grpc, video_service_pb2, video_service_pb2_grpc
from services.common.settings import PROMPTS_DIR
from services.common.stage_api import (
    AnalyzeRequest,
    GenerateClipRequest,
    SegmenterParams,
    StageResult,
    WriteScriptRequest,
)
from services.common.store import LocalArtifactStore
from services.common.timing import frame_at, frame_count
from services.common.transport.channel import open_channel
from services.common.transport.convert import to_message
from gateway.pipeline.grpc_stages import GrpcStageClients, GrpcStagesSettings
from gateway.pipeline.layout import JobLayout
from gateway.pipeline.options import JobOptions
from gateway.pipeline.orchestrator import JobEvent, JobSpec, Orchestrator
from gateway.pipeline.video_pool import VideoPool
from tests.llm_servers import RecordingProxy, canned_answer
from tests.media import counted_frames
from tests.servers import STAGE_SECRET, StageServer, free_port, local_store_env, serving, stage_server
from tests.test_scripting import make_labels, make_segmentation
from tests.test_sectioned_writing import ROLES as SECTIONED_ROLES
from tools.synth_song import render_song

pytestmark = pytest.mark.system  # stage servers in processes of their own (make check leaves it out)

OPTIONS = JobOptions(segmenter=SegmenterParams(segmenter="random", seed=1), fps=12, width=160, height=90)
SONG_KEY = "songs/song.wav"
UNARY = ("segmentation", "analysis", "scripting", "assembly", "review")


@dataclass
class Cluster:
    store: LocalArtifactStore
    servers: dict[str, StageServer]  # the unary stages by name, and two video replicas: video_a, video_b
    song: dict

    def settings(self, video: str, **overrides) -> GrpcStagesSettings:
        addresses = {f"{stage}_address": self.servers[stage].address for stage in UNARY}
        return replace(GrpcStagesSettings(**addresses, video_address=video, retry_seconds=30.0,
                                          ready_timeout_seconds=30.0, stage_secret=STAGE_SECRET), **overrides)

    def job(self, job_id: str, options: JobOptions = OPTIONS) -> JobSpec:
        return JobSpec(job_id, JobLayout(f"jobs/{job_id}/"), SONG_KEY, self.song, options)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("grpc-stages")
    store = LocalArtifactStore(root / "store")
    render_song(root / "song.wav", seconds=20)
    store.put_file(SONG_KEY, root / "song.wav")
    song = {"sha256": hashlib.sha256((root / "song.wav").read_bytes()).hexdigest(), "duration": 20.0}
    env = local_store_env(root / "store")
    servers = {stage: stage_server(stage, root, env) for stage in UNARY}
    servers |= {name: stage_server("video", root, env) for name in ("video_a", "video_b")}
    with serving(*servers.values()):
        yield Cluster(store, servers, song)


@dataclass
class FinishedJob:
    job: JobSpec
    manifest: dict
    events: list[JobEvent]
    replicas: dict  # address -> ReplicaStats after the job
    concurrency: int


@pytest.fixture(scope="module")
def finished_job(cluster) -> FinishedJob:
    """One whole job through the stage services, its clips spread over two video replicas."""
    a, b = cluster.servers["video_a"], cluster.servers["video_b"]
    job = cluster.job("two-replicas")
    events: list[JobEvent] = []

    async def run():
        async with GrpcStageClients(cluster.settings(f"{a.address},{b.address}")) as stages:
            await stages.wait_ready()
            await until(lambda: stages.clip_concurrency() == 2)
            concurrency = stages.clip_concurrency()
            manifest = await Orchestrator(cluster.store, stages, on_event=events.append).run(job)
            return manifest, {r.address: r for r in stages.video_pool.stats()}, concurrency

    manifest, replicas, concurrency = asyncio.run(run())
    return FinishedJob(job, manifest.data, events, replicas, concurrency)


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def segmentation_of(cluster: Cluster, job: JobSpec) -> artifacts.Segmentation:
    return artifacts.Segmentation.from_dict(json.loads(cluster.store.get_bytes(job.layout.segments)))


def assert_complete(cluster: Cluster, job: JobSpec, manifest: dict) -> None:
    """Succeeded, every clip there exactly once with its frames, and the final video frame-exact."""
    segments = segmentation_of(cluster, job).segments
    assert manifest["state"] == "succeeded"
    assert {k: c["state"] for k, c in manifest["clips"].items()} == \
        {f"{s.index:04d}": "succeeded" for s in segments}
    clips = cluster.store.list(job.layout.key("clips/"))
    assert clips == sorted(job.layout.clip(s.index)[:-4] + ext for s in segments for ext in (".json", ".mp4"))
    for s in segments:
        assert counted_frames(cluster.store.path(job.layout.clip(s.index))) == frame_count(s.start, s.end, OPTIONS.fps)
    assert counted_frames(cluster.store.path(job.layout.final)) == frame_at(segments[-1].end, OPTIONS.fps)


def test_a_job_runs_through_the_stage_services_with_its_clips_spread_over_two_replicas(cluster, finished_job):
    assert_complete(cluster, finished_job.job, finished_job.manifest)
    assert finished_job.concurrency == 2
    clips = len(finished_job.manifest["clips"])
    assert clips >= 3
    done = {address: r.clips_done for address, r in finished_job.replicas.items()}
    assert sum(done.values()) == clips and all(n >= 1 for n in done.values()), done
    progress = [e.fraction for e in finished_job.events if e.state == "progress"]
    assert progress and all(0.0 < f <= 1.0 for f in progress)


def test_an_unknown_backend_comes_back_as_invalid_input_with_the_servers_message(cluster):
    job = cluster.job("bad-generator", replace(OPTIONS, generator="nonesuch"))
    video = cluster.servers["video_a"].address

    async def run():
        async with GrpcStageClients(cluster.settings(video)) as stages:
            # The server's message, word for word: it names the backend and what is enabled instead.
            analysers = ", ".join(sorted(b for b in default_backends() if b not in TRANSCRIBERS))  # the service's
            with pytest.raises(InvalidInputError, match="^analysis backend 'nonesuch' is not enabled here; "
                                                        f"choose one of: {analysers}$"):
                await stages.analyze(AnalyzeRequest(song_key=SONG_KEY, segments_key="jobs/none/segments.json",
                                                    analyzer="nonesuch", labels_key="jobs/none/labels.json"))
            with pytest.raises(InvalidInputError, match="^video backend 'nonesuch' is not enabled here"):
                await Orchestrator(cluster.store, stages).run(job)

    asyncio.run(run())
    manifest = json.loads(cluster.store.get_bytes(job.layout.manifest))
    assert manifest["state"] == "failed" and "video backend 'nonesuch'" in manifest["error"]


def test_a_busy_replica_sends_the_clip_to_another(cluster, finished_job):
    a, b = cluster.servers["video_a"], cluster.servers["video_b"]
    segment = segmentation_of(cluster, finished_job.job).segments[0]
    clip = GenerateClipRequest(index=segment.index, song_key=SONG_KEY, script_key=finished_job.job.layout.script,
                               start=segment.start, end=segment.end,
                               frame_count=frame_count(segment.start, segment.end, OPTIONS.fps), fps=OPTIONS.fps,
                               width=OPTIONS.width, height=OPTIONS.height, generator="animatic",
                               clip_key="jobs/busy/clips/0000.mp4")
    # Another caller's large clip keeps replica a busy.
    large = replace(clip, fps=24, width=640, height=360, clip_key="jobs/busy/large.mp4",
                    frame_count=frame_count(segment.start, segment.end, 24))

    async def run():
        pool = VideoPool.for_target(f"{a.address},{b.address}", clip_timeout_seconds=60, retry_seconds=30,
                                    resolve_seconds=10, stage_secret=STAGE_SECRET)
        await pool.start()
        async with open_channel(a.address, STAGE_SECRET) as channel:
            other = video_service_pb2_grpc.VideoServiceStub(channel).GenerateClip(
                to_message(large, video_service_pb2.GenerateClipRequest))
            try:
                await other.read()  # its first progress: a is generating
                await until(lambda: pool.serving_count() == 2)
                result = await pool.generate_clip(clip, lambda fraction: None, lambda: False, retries.append)
                return result, {r.address: r for r in pool.stats()}
            finally:
                other.cancel()
                await pool.close()

    retries: list[str] = []
    result, replicas = asyncio.run(run())
    assert result.keys["clip"] == clip.clip_key and cluster.store.exists(clip.clip_key)
    assert (replicas[a.address].refusals, replicas[a.address].clips_done) == (1, 0)
    assert len(retries) == 1 and retries[0].startswith(f"video replica {a.address}: RESOURCE_EXHAUSTED busy")
    assert replicas[b.address].clips_done == 1


def test_cancelling_a_job_stops_its_clip_on_the_replica(cluster, finished_job):
    replica = cluster.servers["video_b"]
    segment = segmentation_of(cluster, finished_job.job).segments[0]
    large = GenerateClipRequest(index=segment.index, song_key=SONG_KEY, script_key=finished_job.job.layout.script,
                                start=segment.start, end=segment.end,
                                frame_count=frame_count(segment.start, segment.end, 24), fps=24, width=640, height=360,
                                generator="animatic", clip_key="jobs/cancelled/clips/0000.mp4")
    cancelled_at: list[float] = []

    async def run() -> tuple[float, int]:
        loop = asyncio.get_running_loop()

        def cancel_at_first_progress(fraction: float) -> None:
            if not cancelled_at:
                cancelled_at.append(loop.time())

        async with GrpcStageClients(cluster.settings(replica.address)) as stages:
            await stages.wait_ready()
            with pytest.raises(JobCancelledError):
                await stages.generate_clip(large, cancel_at_first_progress, lambda: bool(cancelled_at), retries.append)
            seconds_to_cancel = loop.time() - cancelled_at[0]
            # The replica stops at its next frame, so it takes the next clip.
            await stages.generate_clip(replace(large, clip_key="jobs/cancelled/clips/again.mp4", fps=12,
                                               frame_count=frame_count(segment.start, segment.end, 12),
                                               width=160, height=90), lambda fraction: None, lambda: False,
                                       lambda reason: None)
            return seconds_to_cancel, stages.video_pool.clips_in_flight

    retries: list[str] = []
    seconds_to_cancel, in_flight = asyncio.run(run())
    assert seconds_to_cancel < 1.0 and in_flight == 0
    assert retries == []  # a cancelled clip is not tried again (the next one may be, while the replica stops)
    assert not cluster.store.exists(large.clip_key)  # a cancelled clip writes nothing
    assert cluster.store.exists("jobs/cancelled/clips/again.mp4")


def test_a_replica_killed_mid_clip_and_restarted_finishes_the_job_with_every_clip_once(cluster):
    replica = cluster.servers["video_a"]
    job = cluster.job("killed-replica")
    killed_during: list[int] = []
    retried: list[JobEvent] = []

    async def run():
        loop = asyncio.get_running_loop()

        def kill_during_clip_1(event: JobEvent) -> None:
            if event.state == "retrying":
                retried.append(event)
            if (event.state == "progress" and event.clip_index == 1 and event.fraction < 0.5
                    and not killed_during):
                replica.kill()
                killed_during.append(event.clip_index)
                loop.call_later(0.5, replica.start)

        async with GrpcStageClients(cluster.settings(replica.address)) as stages:
            await stages.wait_ready()
            manifest = await Orchestrator(cluster.store, stages, on_event=kill_during_clip_1).run(job)
            return manifest, stages.video_pool.stats()

    try:
        manifest, (stats,) = asyncio.run(run())
    finally:
        replica.wait_serving()  # restarted: the other tests find it serving
    assert killed_during == [1]
    assert stats.failures == 1
    assert [(e.clip_index, e.fraction) for e in retried] == [(1, 0.0)]
    assert retried[0].detail["reason"].startswith(f"video replica {replica.address}: UNAVAILABLE")
    assert stats.clips_done == len(manifest.data["clips"])
    assert_complete(cluster, job, manifest.data)


def test_clip_concurrency_follows_replicas_appearing_and_disappearing(cluster):
    a, b = cluster.servers["video_a"], cluster.servers["video_b"]
    addresses = [a.address, b.address, f"127.0.0.1:{free_port()}"]  # the third: nothing listens

    async def resolve() -> list[str]:
        return list(addresses)

    async def run():
        pool = VideoPool(resolve, name="test replicas", refresh_seconds=0.1, clip_timeout_seconds=60,
                         retry_seconds=30, stage_secret=STAGE_SECRET)
        await pool.start()
        try:
            await until(lambda: pool.serving_count() == 2)
            # A replica that stops (SIGTERM: NOT_SERVING, then gone) stops counting, and counts again when back.
            await asyncio.to_thread(b.stop)
            await until(lambda: pool.serving_count() == 1)
            b.start()
            await until(lambda: pool.serving_count() == 2)
            # The resolved addresses change (kubectl scale): the pool follows without a restart.
            addresses.remove(a.address)
            await until(lambda: pool.serving_count() == 1 and len(pool.stats()) == 2)
            addresses.append(a.address)
            await until(lambda: pool.serving_count() == 2)
        finally:
            await pool.close()

    asyncio.run(run())


def test_a_dns_video_address_resolves_to_its_replicas(cluster):
    a = cluster.servers["video_a"]

    async def run():
        async with GrpcStageClients(cluster.settings(f"dns:///localhost:{a.port}")) as stages:
            await until(lambda: stages.clip_concurrency() == 1 and stages.video_pool.serving_count() == 1)
            return [r.address for r in stages.video_pool.stats()]

    assert a.address in asyncio.run(run())


def test_wait_ready_names_the_stages_that_are_not_serving(cluster):
    nowhere = f"127.0.0.1:{free_port()}"

    async def run():
        # Built outside any call, as the gateway does; the first call opens the channels.
        stages = GrpcStageClients(cluster.settings(nowhere, assembly_address=nowhere, ready_timeout_seconds=1.0))
        assert stages.clip_concurrency() == 1  # at least one, even with no replica serving
        try:
            await stages.wait_ready()
        finally:
            await stages.close()

    with pytest.raises(TransientError) as caught:
        asyncio.run(run())
    message = str(caught.value)
    assert f"the assembly stage at {nowhere} is unreachable" in message
    assert f"no video replica at {nowhere} is serving" in message
    assert "segmentation" not in message and "analysis" not in message


def test_a_unary_stage_that_comes_up_late_is_retried(cluster, tmp_path, finished_job):
    layout = finished_job.job.layout
    late = stage_server("scripting", tmp_path, local_store_env(cluster.store.root))
    request = WriteScriptRequest(labels_key=layout.labels, segments_key=layout.segments, writer="template",
                                 prompt_key="jobs/late/prompt.txt", script_key="jobs/late/script.json",
                                 script_text_key="jobs/late/script.txt")

    async def run() -> StageResult:
        settings = cluster.settings(cluster.servers["video_a"].address, scripting_address=late.address)
        async with GrpcStageClients(settings) as stages:
            asyncio.get_running_loop().call_later(0.5, late.start)
            return await stages.write_script(request, lambda *progress: None, lambda: False)

    try:
        result = asyncio.run(run())
    finally:
        late.close()
    assert result.keys["script"] == "jobs/late/script.json"
    assert cluster.store.exists("jobs/late/script.json")


def llm_script_request(cluster: Cluster, job: str) -> WriteScriptRequest:
    """A 20-segment song's labels and segments in the store, and the request for its script by an LLM writer."""
    cluster.store.put_bytes(f"jobs/{job}/labels.json", artifacts.dumps(make_labels(SECTIONED_ROLES)))
    cluster.store.put_bytes(f"jobs/{job}/segments.json", artifacts.dumps(make_segmentation(len(SECTIONED_ROLES))))
    keys = {name: f"jobs/{job}/{name}.{ext}" for name, ext in (("prompt", "txt"), ("script", "json"),
                                                               ("script_text", "txt"), ("response", "txt"),
                                                               ("plan", "json"), ("sections", "json"))}
    return WriteScriptRequest(labels_key=f"jobs/{job}/labels.json", segments_key=f"jobs/{job}/segments.json",
                              writer="openai", prompt_key=keys["prompt"], script_key=keys["script"],
                              script_text_key=keys["script_text"], response_key=keys["response"], plan_key=keys["plan"],
                              sections_key=keys["sections"])


def llm_scripting_server(cluster: Cluster, tmp_path, model: RecordingProxy, port: int | None = None) -> StageServer:
    env = {**local_store_env(cluster.store.root), "MVGEN_BACKENDS": "openai,template", "MVGEN_LLM_URL": model.base_url,
           "MVGEN_LLM_MODEL": "canned", "MVGEN_LLM_PARALLEL": "1"}
    return stage_server("scripting", tmp_path, env, port)


def test_the_scripting_service_streams_each_section_as_it_is_written(cluster, tmp_path):
    model = RecordingProxy(answer=canned_answer)
    server = llm_scripting_server(cluster, tmp_path, model)
    request = llm_script_request(cluster, "script-stream")
    progress: list[tuple[int, int, str]] = []

    async def run() -> StageResult:
        settings = cluster.settings(cluster.servers["video_a"].address, scripting_address=server.address)
        async with GrpcStageClients(settings) as stages:
            return await stages.write_script(request, lambda *p: progress.append(p), lambda: False)

    with serving(server):
        result = asyncio.run(run())
    model.close()
    assert [p[:2] for p in progress] == [(i, 5) for i in range(1, 6)]  # the plan, then 4 sections
    assert progress[0][2] == "plan written" and progress[-1][2] == "section 3 (scenes 16-19) written"
    assert result.info["sections"] == 4 and result.info["replies"] == 5 == len(model.requests)
    assert set(result.keys) >= {"script", "plan", "sections", "response", "prompt"}


def test_a_scripting_service_killed_mid_script_is_retried_and_resumes_from_what_it_saved(cluster, tmp_path):
    def slow_answer(body):
        time.sleep(0.4)
        return canned_answer(body)

    model = RecordingProxy(answer=slow_answer)
    server = llm_scripting_server(cluster, tmp_path, model)
    request = llm_script_request(cluster, "script-resume")

    async def run() -> StageResult:
        settings = cluster.settings(cluster.servers["video_a"].address, scripting_address=server.address)
        async with GrpcStageClients(settings) as stages:
            writing = asyncio.ensure_future(stages.write_script(request, lambda *p: None, lambda: False))
            await until(lambda: cluster.store.exists(request.sections_key) and len(model.requests) >= 3)
            server.kill()  # SIGKILL: nothing of the section in flight is saved
            server.start()
            return await writing

    with serving(server):
        result = asyncio.run(run())
    model.close()
    asked = [next(iter(r["response_format"]["json_schema"]["schema"]["properties"])) for r in model.requests]
    assert asked.count("title") == 1  # the plan was written once
    saved_before_kill = asked[1:2]  # the first section was saved before the kill
    assert all(asked.count(first) == 1 for first in saved_before_kill)
    assert sorted(set(asked) - {"title"}) == ["scene 0", "scene 12", "scene 16", "scene 4"]
    assert result.info["resumed"] is True and result.info["sections_kept"] >= 1
    script = artifacts.Script.from_dict(json.loads(cluster.store.get_bytes(request.script_key)))
    assert [s.index for s in script.scenes] == list(range(20))


def test_each_service_reports_its_backend_config_and_a_video_replica_with_other_weights_regenerates_the_clips(
        cluster, tmp_path):
    """Only a stage service sees its environment: the gateway asks it (StageInfoService) before it
    reuses an output, so a replica restarted with new weights regenerates what the old ones made."""
    a = cluster.servers["video_a"]
    reweighted = stage_server("video", tmp_path, {**a.env, "MVGEN_VIDEO_STEPS": "12"})
    job = cluster.job("reweighted")

    async def run_on(video: str) -> tuple[dict, list[JobEvent], dict[str, str]]:
        events: list[JobEvent] = []
        async with GrpcStageClients(cluster.settings(video)) as stages:
            await until(lambda: stages.video_pool.serving_count() == len(video.split(",")))
            configs = {s: await stages.backend_config(s) for s in ("analysis", "scripting", "video")}
            manifest = await Orchestrator(cluster.store, stages, on_event=events.append).run(job)
        return manifest.data, events, configs

    def generated(events: list[JobEvent]) -> set[str]:
        return {e.stage for e in events if e.kind == "stage" and e.state == "succeeded"}

    with serving(reweighted):
        _, _, first = asyncio.run(run_on(a.address))
        _, events, same = asyncio.run(run_on(cluster.servers["video_b"].address))
        manifest, reweighted_events, second = asyncio.run(run_on(reweighted.address))
        _, _, mixed = asyncio.run(run_on(f"{a.address},{reweighted.address}"))

    environ = {**os.environ, **a.env}
    assert first == same == {s: backend_config_digest(s, PROMPTS_DIR, environ) for s in first}
    assert generated(events) == set()  # another replica, the same configuration: every output reused
    assert second == {**first, "video": backend_config_digest("video", PROMPTS_DIR, {**environ, **reweighted.env})}
    assert second["video"] != first["video"]
    assert generated(reweighted_events) == {"video", "assembly", "review"}  # the new video is judged again
    assert all(c["state"] == "succeeded" and "reused_from" not in c for c in manifest["clips"].values())
    assert mixed["video"] == "+".join(sorted({first["video"], second["video"]}))  # a rollout half done
    assert_complete(cluster, job, manifest)


def test_a_stage_service_without_stage_info_counts_as_unknown_configuration(cluster):
    """A gateway upgraded before its stage services keeps working: an old service's digest is empty."""
    class OldAnalysis(analysis_service_pb2_grpc.AnalysisServiceServicer):
        pass

    async def run() -> str:
        server = grpc.aio.server()
        analysis_service_pb2_grpc.add_AnalysisServiceServicer_to_server(OldAnalysis(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            settings = cluster.settings(cluster.servers["video_a"].address, analysis_address=f"127.0.0.1:{port}")
            async with GrpcStageClients(settings) as stages:
                return await stages.backend_config("analysis")
        finally:
            await server.stop(None)

    assert asyncio.run(run()) == ""


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MVGEN_VIDEO_ADDR", "dns:///video-headless.mvgen.svc.cluster.local:50054")
    monkeypatch.setenv("MVGEN_ASSEMBLY_ADDR", "assembly:7000")
    monkeypatch.setenv("MVGEN_CLIP_TIMEOUT_SECONDS", "90")
    monkeypatch.delenv("MVGEN_SEGMENTATION_ADDR", raising=False)
    monkeypatch.setenv("MVGEN_STAGE_SECRET", STAGE_SECRET)
    settings = GrpcStageClients.from_env().settings
    assert settings.video_address == "dns:///video-headless.mvgen.svc.cluster.local:50054"
    assert settings.assembly_address == "assembly:7000"
    assert settings.segmentation_address == "localhost:50051"
    assert settings.clip_timeout_seconds == 90.0
    assert settings.stage_secret == STAGE_SECRET
