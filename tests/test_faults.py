"""Faults injected into the real system on loopback, each a test that fails if anything is lost.

One stack for the module (tools/dev_stack.py: moto, the six stage services with two video
replicas, the gateway), with the object store reached through a TCP proxy the tests can pause, so
"the store is unreachable" is a real refused connection. Stages that answer wrongly or not at all
are a fault injector (`FakeStages`): a gRPC server speaking the stage protocol, put in place of one
stage behind a second gateway (`DevStack.spawn_gateway`); every other stage stays the real one.

Faults covered elsewhere and not repeated here (RELIABILITY.md lists them all): the gateway killed
mid-job and restarted, the only video replica killed and restarted, a cancel while stages are down
(tests/test_system.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import encoding
from services.common.pb import (
    job_pb2,
    scripting_service_pb2,
    scripting_service_pb2_grpc,
    segmentation_service_pb2,
    segmentation_service_pb2_grpc,
    stage_pb2,
    video_service_pb2,
    video_service_pb2_grpc,
)
from services.common.store import ArtifactStore
from tests.media import counted_frames
from tests.servers import dev_stack_store
from tests.test_system import (
    FPS,
    RUNNING,
    SUCCEEDED,
    Client,
    System,
    assert_complete_video,
    describe,
    fault_options,
    manifest_of,
    segments_of,
    small_options,
    wait_for,
)
from tools.dev_stack import DevStack
from tools.processes import free_ports
from tools.synth_song import SongTruth, render_song

pytestmark = pytest.mark.system  # the dev stack's processes (make check leaves it out)

# The store's own retries absorb about this long an outage (backoff 0.2, 0.4, 0.8, 1.6 s, jittered);
# a stage call or clip is retried by the gateway for RETRY_SECONDS more. Short, so that "past the
# limit" is reached in seconds.
S3_RETRY_SECONDS = 3
RETRY_SECONDS = 3
SHORT_OUTAGE_SECONDS = 1.5  # under the store's retries even with the most jitter (0.75 x 3 s)
STAGE_DEADLINE_SECONDS = 2  # MVGEN_STAGE_TIMEOUT_SECONDS / MVGEN_CLIP_TIMEOUT_SECONDS of the fault gateways


# --- the object store behind a switch ---------------------------------------------------------------------

class PausableProxy:
    """A TCP proxy on loopback in front of the S3 server. `pause()` closes its port and drops every
    connection (clients get "connection refused", as from a store that is down); `resume()` serves
    again on the same port."""

    def __init__(self, target_port: int, port: int):
        self.target = ("127.0.0.1", target_port)
        self.port = port
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.resume()

    def resume(self) -> None:
        if self._listener is not None:
            return
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def pause(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            listener.close()
        with self._lock:
            for sock in self._sockets:
                _close(sock)
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # paused
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # paused meanwhile
                    _close(client)
                    _close(upstream)
                    return
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets -= {source, sink}
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


# --- stages that answer wrongly ---------------------------------------------------------------------------

class FakeStages:
    """A fault injector: one gRPC server answering as the segmentation, scripting and video services
    would, but as `script_mode` and `video_mode` say:
    video "short" (a clip of half its frames), "garbage" (bytes that are no video), "stall" (never
    answers); scripting "good" (a scene per segment), "one-scene-short" or "misnumbered" (every
    scene numbered 0); segmentation always stalls."""

    def __init__(self, store: ArtifactStore):
        self.store = store
        self.video_mode = "short"
        self.script_mode = "good"
        self.calls: list[str] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        health_servicer = health.HealthServicer()
        for name in ("", "mvgen.v1.SegmentationService", "mvgen.v1.ScriptingService", "mvgen.v1.VideoService"):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        video_service_pb2_grpc.add_VideoServiceServicer_to_server(_FakeVideo(self), self.server)
        scripting_service_pb2_grpc.add_ScriptingServiceServicer_to_server(_FakeScripting(self), self.server)
        segmentation_service_pb2_grpc.add_SegmentationServiceServicer_to_server(_StalledSegmentation(self),
                                                                                self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=0)


def _stall(context: grpc.ServicerContext) -> None:
    while context.is_active():  # until the caller's deadline or cancel
        time.sleep(0.05)


class _FakeVideo(video_service_pb2_grpc.VideoServiceServicer):
    def __init__(self, fake: FakeStages):
        self.fake = fake

    def GenerateClip(self, request, context):
        self.fake.calls.append(f"video {request.index} {self.fake.video_mode}")
        if self.fake.video_mode == "stall":
            yield video_service_pb2.GenerateClipResponse(progress=stage_pb2.ClipProgress(fraction=0.01))
            _stall(context)
            return
        if self.fake.video_mode == "garbage":
            self.fake.store.put_bytes(request.clip_key, b"this is not a video\n" * 64)
        else:
            frames = max(1, request.frame_count // 2)
            with (self.fake.store.writing(request.clip_key) as path,
                  encoding.RawVideoEncoder(path, request.width, request.height, request.fps) as encoder):
                for i in range(frames):
                    encoder.write(np.full((request.height, request.width, 3), 40 + i % 200, np.uint8))
        yield video_service_pb2.GenerateClipResponse(result=stage_pb2.StageResult(keys={"clip": request.clip_key}))


class _FakeScripting(scripting_service_pb2_grpc.ScriptingServiceServicer):
    def __init__(self, fake: FakeStages):
        self.fake = fake

    def WriteScript(self, request, context):
        self.fake.calls.append(f"script {self.fake.script_mode}")
        segments = json.loads(self.fake.store.get_bytes(request.segments_key))["segments"]
        if self.fake.script_mode == "one-scene-short":
            segments = segments[:-1]
        elif self.fake.script_mode == "misnumbered":
            segments = [{**s, "index": 0} for s in segments]
        script = {"writer": "fake", "title": "A fault injector's script",
                  "style": {"palette": ["#203040"], "look": "flat", "lighting": "even", "camera": "still",
                            "atmosphere": "test"},
                  "characters": [], "scenes": [{"index": s["index"], "text": f"Scene {s['index']}."} for s in segments]}
        self.fake.store.put_bytes(request.script_key, json.dumps(script).encode())
        yield scripting_service_pb2.WriteScriptResponse(progress=stage_pb2.StageProgress(done=1, total=1, fraction=1.0))
        yield scripting_service_pb2.WriteScriptResponse(
            result=stage_pb2.StageResult(keys={"script": request.script_key}))


class _StalledSegmentation(segmentation_service_pb2_grpc.SegmentationServiceServicer):
    def __init__(self, fake: FakeStages):
        self.fake = fake

    def Segment(self, request, context):
        self.fake.calls.append("segment stall")
        _stall(context)
        return segmentation_service_pb2.SegmentResponse()


# --- fixtures ----------------------------------------------------------------------------------------------

@dataclass
class FaultSystem(System):
    proxy: PausableProxy | None = None


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> Iterator[FaultSystem]:
    s3_port, proxy_port = free_ports(2)
    proxy = PausableProxy(s3_port, proxy_port)
    stack = DevStack(tmp_path_factory.mktemp("faults") / "stack", free_ports=True, grace_seconds=2,
                     startup_timeout=120, video_replicas=2, ports={"s3": s3_port}, env={
                         # Every service reaches the store through the proxy; the tests read it directly.
                         "*": {"MVGEN_S3_ENDPOINT": f"http://127.0.0.1:{proxy_port}",
                               "MVGEN_S3_RETRY_SECONDS": str(S3_RETRY_SECONDS)},
                         "gateway": {"MVGEN_RETRY_SECONDS": str(RETRY_SECONDS)}})
    try:
        state = stack.start()
        store = dev_stack_store(state)
        yield FaultSystem(stack, state, store, state["gateway"]["token"], proxy)
    finally:
        stack.stop()
        proxy.pause()


@pytest.fixture(autouse=True)
def process_logs(faults) -> Iterator[None]:
    """The end of every process's log, printed after each test: pytest shows it for a failed test only."""
    yield
    print(f"process logs under {faults.stack.log_dir}:\n{faults.logs(lines=40)}")


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> dict[str, tuple[Path, SongTruth]]:
    folder = tmp_path_factory.mktemp("songs")
    return {name: (folder / f"{name}.wav", render_song(folder / f"{name}.wav", seconds=seconds, seed=seed))
            for name, seconds, seed in (("short", 10, 4), ("long", 24, 5))}


@pytest.fixture
def fake(faults) -> Iterator[FakeStages]:
    injector = FakeStages(faults.store)
    yield injector
    injector.stop()


def gateway_with(system: System, name: str, env: dict[str, str]) -> System:
    """A second gateway on the stack with `env` over the first's; the System as its clients see it."""
    entry = system.stack.spawn_gateway(name, env, timeout=60)
    return replace(system, state={**system.state, "gateway": {**system.state["gateway"], "address": entry["address"]}})


def packet_hashes(path: Path) -> list[str]:
    """The MD5 of every video packet, in order, as stored (no decoding)."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "framemd5",
                          "-"], capture_output=True, text=True, check=True).stdout
    return [line.rsplit(",", 1)[1].strip() for line in out.splitlines() if line and not line.startswith("#")]


def assert_each_clip_once(system: System, job_id: str, tmp_path: Path) -> None:
    """The final video's packets are exactly the clips' packets, clip after clip in segment order (the
    assembler joins by stream copy): every clip is in it exactly once, and nothing else is."""
    clips = []
    for segment in segments_of(system, job_id):
        with system.store.local_path(f"jobs/{job_id}/clips/{segment['index']:04d}.mp4") as clip:
            clips.append(packet_hashes(clip))
    with system.store.local_path(f"jobs/{job_id}/final.mp4") as final:
        joined = packet_hashes(final)
    assert joined == [h for clip in clips for h in clip], "the final video is not the clips, each once, in order"


def gateway_log(system: System, name: str = "gateway") -> str:
    return Path(system.state["processes"][name]["log"]).read_text(errors="replace")


# --- the tests -----------------------------------------------------------------------------------------------

def test_two_clients_creating_the_same_job_at_once_get_one_job(faults, songs):
    clients = [Client(faults), Client(faults)]  # two channels, one identity (one token)
    try:
        song = clients[0].upload(songs["short"][0])
        request_id = str(uuid.uuid4())
        before = clients[0].job_ids()
        records_before = {k for k in faults.store.list("jobs/") if k.endswith("/job.json")}
        with futures.ThreadPoolExecutor(8) as pool:
            made = list(pool.map(lambda i: clients[i % 2].create(song.song_id, small_options(8), request_id),
                                 range(8)))
        assert len({job.job_id for job in made}) == 1, [job.job_id for job in made]
        print(f"figure: {len(made)} concurrent CreateJob calls with one request id on 2 channels -> 1 job")
        job_id = made[0].job_id
        assert clients[1].job_ids() - before == {job_id}
        assert {k for k in faults.store.list("jobs/") if k.endswith("/job.json")} - records_before == \
            {f"jobs/{job_id}/job.json"}
        ended = clients[0].follow(job_id, logs=("gateway",))
        assert ended.state == job_pb2.JOB_STATE_SUCCEEDED, describe(ended)
    finally:
        for client in clients:
            client.close()


def test_a_video_replica_killed_mid_clip_has_the_clip_made_on_the_other_each_clip_once(faults, songs, tmp_path):
    song_path, truth = songs["long"]
    client = Client(faults)
    addresses = {name: faults.state["processes"][name]["address"] for name in ("video", "video-2")}
    try:
        job = client.create(client.upload(song_path).song_id, fault_options(51))

        def both_rendering(job: job_pb2.Job) -> bool:  # one clip on each replica, both early
            return sum(c.state == RUNNING and 0 < c.progress.fraction <= 0.5 for c in job.clips) == 2

        client.follow(job.job_id, both_rendering, what="two clips rendering at once", logs=("gateway", "video"))
        killed_at = time.time()
        faults.stack.kill("video-2")  # and it stays down: whatever it was rendering must be made by "video"
        ended = client.follow(job.job_id, what="the job to end on the surviving replica",
                              logs=("gateway", "video"))
    finally:
        client.close()
    assert ended.state == job_pb2.JOB_STATE_SUCCEEDED, f"{describe(ended)}\n{faults.logs('gateway')}"
    lost = [int(m[1]) for m in re.finditer(rf"clip (\d+) on video replica {re.escape(addresses['video-2'])}: "
                                           r"(UNAVAILABLE|CANCELLED)", gateway_log(faults))]
    assert len(lost) == 1, lost  # the clip video-2 was rendering, lost with it
    clip = next(c for c in ended.clips if c.index == lost[0])
    assert clip.state == SUCCEEDED and clip.end_time.ToNanoseconds() / 1e9 > killed_at, describe(ended)
    print(f"figure: video-2 killed mid-clip; clip {lost[0]} made again on video, done "
          f"{clip.end_time.ToNanoseconds() / 1e9 - killed_at:.1f} s after the kill; {len(ended.clips)} clips, "
          "each once")
    assert all(c.state == SUCCEEDED and not c.cached for c in ended.clips), describe(ended)
    assert_complete_video(faults, job.job_id, truth, FPS, tmp_path)
    assert_each_clip_once(faults, job.job_id, tmp_path)


def test_the_store_unreachable_for_a_moment_is_retried_and_the_job_goes_on(faults, songs, tmp_path):
    song_path, truth = songs["short"]
    client = Client(faults)
    try:
        job = client.create(client.upload(song_path).song_id, fault_options(61))
        client.follow(job.job_id, lambda j: any(c.state == RUNNING and c.progress.fraction > 0.2 for c in j.clips),
                      what="a clip rendering", logs=("gateway", "video"))
        retries_before = sum(_retries(faults).values())
        faults.proxy.pause()
        time.sleep(SHORT_OUTAGE_SECONDS)
        faults.proxy.resume()
        ended = client.follow(job.job_id, what="the job to end after the outage", logs=("gateway", "video"))
    finally:
        faults.proxy.resume()
        client.close()
    assert ended.state == job_pb2.JOB_STATE_SUCCEEDED, f"{describe(ended)}\n{faults.logs()}"
    retries = _retries(faults)
    assert sum(retries.values()) > retries_before, f"no store operation was retried during the outage: {retries}"
    print(f"figure: {SHORT_OUTAGE_SECONDS} s store outage mid-clip; {sum(retries.values()) - retries_before} store "
          f"operations retried, the job succeeded")
    assert_complete_video(faults, job.job_id, truth, FPS, tmp_path)
    assert_each_clip_once(faults, job.job_id, tmp_path)


def _retries(system: System) -> dict[str, int]:
    """Per process, how many store operations it has retried so far (the store logs each retry)."""
    return {name: Path(entry["log"]).read_text(errors="replace").count("failed, retrying in")
            for name, entry in system.state["processes"].items() if name != "s3"}


def test_the_store_unreachable_past_the_limit_fails_the_job_clearly_and_keeps_what_finished(faults, songs):
    song_path, _ = songs["long"]
    client = Client(faults)
    try:
        song = client.upload(song_path)
        job = client.create(song.song_id, fault_options(71))
        client.follow(job.job_id, lambda j: sum(c.state == SUCCEEDED for c in j.clips) >= 1,
                      what="a clip finished", logs=("gateway", "video"))
        faults.proxy.pause()
        paused_at = time.monotonic()
        try:
            failed = client.follow(job.job_id, timeout=90, what="the job to fail while the store is down",
                                   logs=("gateway", "video"))
        finally:
            faults.proxy.resume()
        failed_after = time.monotonic() - paused_at
        assert failed.state == job_pb2.JOB_STATE_FAILED, describe(failed)
        assert re.search(r"object store at \S+ is unreachable after \d+ tries", failed.error_message), \
            failed.error_message
        # The store is back: the failure is recorded where a restarted gateway would look, with its reason.
        manifest = wait_for(lambda: (m := manifest_of(faults, job.job_id))["state"] == "failed" and m,
                            timeout=30, what="the manifest to record the failure", context=faults.logs)
        assert manifest["error"] == failed.error_message
        recorded_after = time.monotonic() - paused_at - failed_after
        finished = {int(k) for k, clip in manifest["clips"].items() if clip["state"] == "succeeded"}
        assert finished and all(faults.store.exists(f"jobs/{job.job_id}/clips/{i:04d}.mp4") for i in finished)

        # What finished is kept: the same request again (a new job) reuses those clips.
        again = client.follow(client.create(song.song_id, fault_options(71)).job_id, logs=("gateway",))
    finally:
        client.close()
    assert again.state == job_pb2.JOB_STATE_SUCCEEDED, describe(again)
    assert {c.index for c in again.clips if c.cached} >= finished, describe(again)
    print(f"figure: store down; the job failed {failed_after:.1f} s later ({failed.error_message}); recorded "
          f"{recorded_after:.1f} s after the store came back; {len(finished)} of {len(again.clips)} clips kept "
          "and reused by the rerun")


def test_a_clip_of_the_wrong_length_is_conformed_and_a_clip_that_is_no_video_fails_the_job(faults, songs, fake):
    gateway = gateway_with(faults, "gateway-wrong-clips", {"MVGEN_VIDEO_ADDR": fake.address})
    client = Client(gateway)
    try:
        song = client.upload(songs["short"][0])
        fake.video_mode = "short"
        repaired = client.follow(client.create(song.song_id, small_options(81)).job_id, logs=("gateway-wrong-clips",))
        fake.video_mode = "garbage"
        broken = client.follow(client.create(song.song_id, small_options(82)).job_id, logs=("gateway-wrong-clips",))
    finally:
        client.close()
        faults.stack.remove("gateway-wrong-clips")
    assert repaired.state == job_pb2.JOB_STATE_SUCCEEDED, describe(repaired)
    assembly = next(s for s in repaired.stages if s.stage == job_pb2.STAGE_ASSEMBLY)
    assert assembly.info["clips_reencoded"] == len(repaired.clips) >= 1  # every short clip was conformed
    with faults.store.local_path(repaired.artifact_keys["video"]) as final:
        assert counted_frames(final) == sum(c.frame_count for c in repaired.clips)
    assert broken.state == job_pb2.JOB_STATE_FAILED, describe(broken)
    assert re.search(r"\d{4}\.mp4 is not a readable video", broken.error_message), broken.error_message
    assert "video" not in broken.artifact_keys and {"segments", "labels", "script"} <= set(broken.artifact_keys)
    print(f"figure: {len(repaired.clips)} half-length clips conformed by the assembler; a non-video clip: "
          f"{broken.error_message[:80]}")


def test_a_script_with_the_wrong_number_of_scenes_or_misnumbered_scenes_is_refused(faults, songs, fake):
    gateway = gateway_with(faults, "gateway-bad-script", {"MVGEN_SCRIPTING_ADDR": fake.address})
    client = Client(gateway)
    try:
        song_id = client.upload(songs["short"][0]).song_id
        fake.script_mode = "one-scene-short"
        short = client.follow(client.create(song_id, small_options(91)).job_id, logs=("gateway-bad-script",))
        fake.script_mode = "misnumbered"
        misnumbered = client.follow(client.create(song_id, small_options(92)).job_id, logs=("gateway-bad-script",))
    finally:
        client.close()
        faults.stack.remove("gateway-bad-script")
    assert short.state == misnumbered.state == job_pb2.JOB_STATE_FAILED, f"{describe(short)}\n{describe(misnumbered)}"
    segments = len(segments_of(faults, short.job_id))
    assert short.error_message == f"the script has {segments - 1} scenes for {segments} segments"
    assert misnumbered.error_message.startswith("the script's scenes are not numbered as the segments are")
    for job in (short, misnumbered):  # refused before any clip was made
        assert not faults.store.list(f"jobs/{job.job_id}/clips/"), describe(job)


def test_stalled_stages_fail_the_job_at_their_deadline(faults, songs, fake):
    # Each deadline only where the fake stalls: the real stages keep their generous ones.
    stalled_clips = gateway_with(faults, "gateway-stalled-video", {
        "MVGEN_VIDEO_ADDR": fake.address, "MVGEN_CLIP_TIMEOUT_SECONDS": str(STAGE_DEADLINE_SECONDS)})
    stalled_first = gateway_with(faults, "gateway-stalled-segments", {
        "MVGEN_SEGMENTATION_ADDR": fake.address, "MVGEN_STAGE_TIMEOUT_SECONDS": str(STAGE_DEADLINE_SECONDS)})
    clients = [Client(stalled_first), Client(stalled_clips)]
    fake.video_mode = "stall"
    try:
        song_id = clients[0].upload(songs["short"][0]).song_id
        started = time.monotonic()
        jobs = [client.create(song_id, small_options(101)) for client in clients]
        ended = [client.follow(job.job_id, timeout=60, logs=(f"gateway-stalled-{kind}",))
                 for client, job, kind in zip(clients, jobs, ("segments", "video"))]
        seconds = time.monotonic() - started
    finally:
        for client in clients:
            client.close()
        for name in ("gateway-stalled-video", "gateway-stalled-segments"):
            faults.stack.remove(name)
    segmentation, clip = ended
    assert segmentation.state == clip.state == job_pb2.JOB_STATE_FAILED, f"{describe(segmentation)}\n{describe(clip)}"
    assert re.fullmatch(rf"the segmentation stage at {re.escape(fake.address)} did not answer within "
                        rf"{STAGE_DEADLINE_SECONDS} s", segmentation.error_message), segmentation.error_message
    assert re.match(rf"clip \d+ took longer than {STAGE_DEADLINE_SECONDS} s", clip.error_message), clip.error_message
    assert seconds < 60  # neither job hung: both failed within their deadlines plus the real stages' work
    print(f"figure: stalled segmentation and stalled clip, deadline {STAGE_DEADLINE_SECONDS} s: both jobs failed "
          f"within {seconds:.1f} s")
    assert "segment stall" in fake.calls
    assert any(call.endswith("stall") and call.startswith("video") for call in fake.calls)


def test_no_secret_appears_in_any_log(faults):
    """Last: the logs of every process after all the faults above, plus a call with a wrong token."""
    wrong = "wrong-token-" + uuid.uuid4().hex
    intruder = Client(faults, token=wrong)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            intruder.job_ids()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        intruder.close()
    s3 = faults.state["s3"]
    secrets = {"the gateway token": faults.token, "a wrong token": wrong, "the S3 secret key": s3["secret_key"]}
    logs = {path.name: path.read_text(errors="replace") for path in faults.stack.log_dir.glob("*.log")}
    assert len(logs) >= 8 and any("unreachable" in text for text in logs.values())  # the faults were logged
    for what, secret in secrets.items():
        leaked = [name for name, text in logs.items() if secret in text]
        assert not leaked, f"{what} appears in {leaked}"
    assert not [name for name, text in logs.items() if "X-Amz-Signature" in text or "Bearer " in text]
    print(f"figure: {len(secrets)} secrets searched in {len(logs)} logs "
          f"({sum(len(text) for text in logs.values()) // 1024} KiB): not found")
