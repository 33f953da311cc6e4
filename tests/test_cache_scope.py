"""The output cache is scoped to a client by default; a deployment may share it (MVGEN_SHARED_CACHE).

Two clients, A and B (two tokens), send the same bytes with the same options. By default B's job
is made from nothing, as if A did not exist: no stage or clip of B's says `cached`, B's song is its
own object, and nothing of B's names anything of A's. A client's own rerun still reuses everything.
With the shared cache B's job copies A's outputs (every stage cached) and still holds nothing of A's:
copies under its own job, its own song, no id of A's job or client in anything B can read.

The saving is measured on the real loopback stack (tools/dev_stack.py: moto, the six stage services
and the gateway, with a second gateway sharing the cache beside it): B's job with and without the
shared cache, printed and written to build/reliability/cache-scope.json.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from services.common.pb import job_pb2, stage_pb2
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.pb import music_video_service_pb2_grpc as api_grpc
from services.common.store import LocalArtifactStore
from gateway.server.auth import CLIENT_ID_HEX_DIGITS, token_digest
from tests.servers import FAST_RECONNECT, REPO_ROOT
from tests.test_gateway import RunningGateway
from tools.dev_stack import DevStack
from tools.synth_song import render_song

pytestmark = pytest.mark.system  # the dev stack's processes (make check leaves it out)

TOKENS = {"A": "token-of-client-a", "B": "token-of-client-b"}
OPTIONS = job_pb2.JobOptions(segmenter=stage_pb2.SegmenterParams(segmenter="random", seed=5), fps=12, width=160,
                             height=90)
TERMINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)
RESULTS = REPO_ROOT / "build" / "reliability"


def client_id(token: str) -> str:
    return token_digest(token)[:CLIENT_ID_HEX_DIGITS]


class Client:
    """The public API with one client's token."""

    def __init__(self, stub: api_grpc.MusicVideoServiceStub, token: str):
        self.stub = stub
        self.auth = (("authorization", f"Bearer {token}"),)

    def upload(self, path: Path) -> api_pb2.Song:
        data = path.read_bytes()
        messages = [api_pb2.UploadSongRequest(metadata=api_pb2.UploadSongMetadata(file_name=path.name))]
        messages += [api_pb2.UploadSongRequest(chunk=data[i:i + (1 << 20)]) for i in range(0, len(data), 1 << 20)]
        return self.stub.UploadSong(iter(messages), metadata=self.auth, timeout=120).song

    def run(self, song_id: str, options: job_pb2.JobOptions = OPTIONS) -> tuple[api_pb2.GetJobResponse, float]:
        """A job to its end: what GetJob says of it then, and the seconds from CreateJob to its end."""
        started = time.monotonic()
        job = self.stub.CreateJob(api_pb2.CreateJobRequest(request_id=str(uuid.uuid4()), song_id=song_id,
                                                           options=options), metadata=self.auth, timeout=120).job
        for message in self.stub.WatchJob(api_pb2.WatchJobRequest(job_id=job.job_id), metadata=self.auth,
                                          timeout=600):
            if message.HasField("job") and message.job.state in TERMINAL:
                break
        seconds = time.monotonic() - started
        answer = self.get(job.job_id)
        assert answer.job.state == job_pb2.JOB_STATE_SUCCEEDED, answer.job.error_message
        return answer, seconds

    def get(self, job_id: str) -> api_pb2.GetJobResponse:
        return self.stub.GetJob(api_pb2.GetJobRequest(job_id=job_id, include_artifacts=True), metadata=self.auth,
                                timeout=60)


def cached(job: job_pb2.Job) -> tuple[set[int], set[int]]:
    """The stages and the clips of `job` that say they were copied from another job's output."""
    return {s.stage for s in job.stages if s.cached}, {c.index for c in job.clips if c.cached}


def assert_holds_nothing_of(answer: api_pb2.GetJobResponse, other: job_pb2.Job, other_token: str) -> None:
    """Everything B can read of its job is B's: its keys under its own job and song, and no id of
    the other client's job or of the other client anywhere in the answer (URLs included)."""
    job = answer.job
    own = (f"jobs/{job.job_id}/", job.song.song_key)
    keys = [*job.artifact_keys.values(), *(c.clip_key for c in job.clips),
            *(k for s in job.stages for k in s.artifact_keys.values())]
    assert all(key.startswith(own) for key in keys), [k for k in keys if not k.startswith(own)]
    text = json_format.MessageToJson(answer)
    assert other.job_id not in text and client_id(other_token) not in text and other.song.song_key not in text


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("songs") / "song.wav"
    render_song(path, seconds=12, seed=7)
    return path


def two_clients(store: LocalArtifactStore, **settings) -> tuple[RunningGateway, Client, Client]:
    gateway = RunningGateway(store, tokens=tuple(TOKENS.values()), **settings)
    return gateway, Client(gateway.stub, TOKENS["A"]), Client(gateway.stub, TOKENS["B"])


def test_by_default_a_client_reuses_only_its_own_outputs_and_learns_nothing_of_another(tmp_path, song):
    store = LocalArtifactStore(tmp_path / "store")
    gateway, a, b = two_clients(store)
    try:
        a_song = a.upload(song)
        a_answer, _ = a.run(a_song.song_id)
        b_song = b.upload(song)
        assert b_song.sha256 == a_song.sha256 and b_song.song_key != a_song.song_key  # the same bytes, B's copy
        b_answer, _ = b.run(b_song.song_id)
        assert cached(b_answer.job) == (set(), set())  # made from nothing: B cannot tell A processed the song
        manifest = json.loads(store.get_bytes(f"jobs/{b_answer.job.job_id}/manifest.json"))
        assert not [r for r in (*manifest["stages"].values(), *manifest["clips"].values()) if "reused_from" in r]
        assert_holds_nothing_of(b_answer, a_answer.job, TOKENS["A"])
        assert not [key for key in store.list("cache/") if not key.startswith(("cache/clients/",))]

        # A's own rerun (a new job) reuses every output of A's first job.
        rerun, _ = a.run(a.upload(song).song_id)
        stages, clips = cached(rerun.job)
        assert len(stages) == 6 and clips == {c.index for c in rerun.job.clips}
    finally:
        gateway.stop()


def test_a_shared_cache_reuses_another_clients_outputs_and_still_holds_nothing_of_it(tmp_path, song):
    store = LocalArtifactStore(tmp_path / "store")
    gateway, a, b = two_clients(store, shared_cache=True)
    try:
        a_answer, _ = a.run(a.upload(song).song_id)
        b_answer, _ = b.run(b.upload(song).song_id)
        stages, clips = cached(b_answer.job)
        assert len(stages) == 6 and clips == {c.index for c in b_answer.job.clips}  # every output copied
        assert_holds_nothing_of(b_answer, a_answer.job, TOKENS["A"])
        video = store.get_bytes(b_answer.job.artifact_keys["video"])
        assert video == store.get_bytes(a_answer.job.artifact_keys["video"])
    finally:
        gateway.stop()


# --- the saving, measured on the real loopback stack ------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[DevStack, dict]]:
    folder = tmp_path_factory.mktemp("cache-scope")
    tokens_file = folder / "tokens"  # client B beside the stack's own dev token (client A)
    tokens_file.write_text(token_digest(TOKENS["B"]) + "\n")
    stack = DevStack(folder / "stack", free_ports=True, grace_seconds=2, startup_timeout=120,
                     env={"gateway": {"MVGEN_GATEWAY_TOKENS_FILE": str(tokens_file)}})
    try:
        yield stack, stack.start()
    finally:
        stack.stop()


def test_the_shared_cache_saves_the_second_clients_work_on_the_loopback_stack(stack, tmp_path):
    dev_stack, state = stack
    song = tmp_path / "song.wav"
    render_song(song, seconds=20, seed=11)
    options = job_pb2.JobOptions(segmenter=stage_pb2.SegmenterParams(segmenter="random", seed=9))  # 24 fps, 640x360
    figures = {}
    for mode in ("per client", "shared"):
        if mode == "per client":
            address = state["gateway"]["address"]
        else:  # a gateway of the same stack sharing its cache; started while no job runs
            address = dev_stack.spawn_gateway("gateway-shared", {"MVGEN_SHARED_CACHE": "true"})["address"]
            options = job_pb2.JobOptions(segmenter=stage_pb2.SegmenterParams(segmenter="random", seed=10))
        with grpc.insecure_channel(address, options=FAST_RECONNECT) as channel:
            stub = api_grpc.MusicVideoServiceStub(channel)
            a, b = Client(stub, state["gateway"]["token"]), Client(stub, TOKENS["B"])
            a_answer, a_seconds = a.run(a.upload(song).song_id, options)
            b_answer, b_seconds = b.run(b.upload(song).song_id, options)
            assert_holds_nothing_of(b_answer, a_answer.job, state["gateway"]["token"])
        clips = len(b_answer.job.clips)
        figures[mode] = {"first_client_seconds": round(a_seconds, 2), "second_client_seconds": round(b_seconds, 2),
                         "clips": clips, "second_client_clips_generated": sum(c.attempts for c in b_answer.job.clips),
                         "second_client_stages_cached": len(cached(b_answer.job)[0])}
    assert figures["per client"]["second_client_clips_generated"] >= figures["per client"]["clips"]
    assert figures["per client"]["second_client_stages_cached"] == 0
    assert figures["shared"]["second_client_clips_generated"] == 0
    assert figures["shared"]["second_client_stages_cached"] == 6
    assert figures["shared"]["second_client_seconds"] < figures["per client"]["second_client_seconds"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cache-scope.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"cache scope on the loopback stack (20 s song, 640x360 at 24 fps, animatic): {json.dumps(figures)}")
