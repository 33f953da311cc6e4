"""Hostile and broken input through the gateway: the corpus of tests/corpus/make_corpus.py and
broken requests, against a gateway process (stages in-process, MVGEN_STAGES=inprocess, so the
stage logic that reads an accepted file runs in the process under test too).

Every file is either refused with INVALID_ARGUMENT and a message naming the file and saying what
is wrong, or accepted and made into a video of the right length; every broken request is refused
with INVALID_ARGUMENT (RESOURCE_EXHAUSTED for size) and a message naming the field. Afterwards the
gateway still serves, logged no internal error, and its peak memory stayed bounded.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import pytest

from services.common.pb import job_pb2, stage_pb2
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.pb import music_video_service_pb2_grpc as api_grpc
from gateway.server.auth import token_digest
from tests.corpus.make_corpus import CORPUS, MAX_SONG_SECONDS, make_corpus
from tests.media import counted_frames
from tests.servers import FAST_RECONNECT
from tests.test_client_cli import GatewayProcess
from tools.processes import check_health

pytestmark = pytest.mark.system  # python -m gateway.server in a process of its own (make check leaves it out)

TOKEN = "hostile-input-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
MIB = 1 << 20
MAX_UPLOAD_BYTES = 12 * MIB  # the corpus's largest file (9 MB) fits
OPTIONS = job_pb2.JobOptions(segmenter=stage_pb2.SegmenterParams(segmenter="random", seed=1), fps=12, width=160,
                             height=90)
# The gateway's peak resident memory may grow this much over its peak after one ordinary job (the
# stage logic loaded): the corpus, an oversized upload and 8 jobs at once must not pile up in memory
# (uploads stream to disk, decoding is bounded by the longest song).
MAX_PEAK_GROWTH_MIB = 150


@dataclass
class Gateway:
    process: GatewayProcess
    root: Path  # the local store's folder
    stub: api_grpc.MusicVideoServiceStub
    warm_peak_kib: int = 0  # VmHWM after one ordinary job

    @property
    def address(self) -> str:
        return self.process.address

    def memory(self, field: str) -> int:
        """A VmRSS/VmHWM figure of the process, in KiB."""
        for line in Path(f"/proc/{self.process.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.process.process.pid}/status")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("hostile")
    env = {"MVGEN_STAGES": "inprocess", "MVGEN_STORE": "local", "MVGEN_STORE_ROOT": str(folder / "store"),
           "MVGEN_GATEWAY_TOKENS_SHA256": token_digest(TOKEN), "MVGEN_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
           "MVGEN_MAX_SONG_SECONDS": str(MAX_SONG_SECONDS), "MVGEN_MAX_ACTIVE_JOBS": "4",
           "MVGEN_CLIENT_MAX_JOBS": "20"}
    process = GatewayProcess(env, folder / "gateway.log")
    process.start(timeout=90)
    channel = grpc.insecure_channel(process.address, options=FAST_RECONNECT)
    try:
        yield Gateway(process, folder / "store", api_grpc.MusicVideoServiceStub(channel))
        assert process.stop() == 0, process.log.read_text()[-3000:]  # a clean exit: nothing left broken
    finally:
        channel.close()
        if process.process.poll() is None:
            process.process.kill()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def song(gateway, corpus) -> api_pb2.Song:
    """An ordinary song, made into a video once first: the gateway's memory is measured from there."""
    data = corpus["mono-8k.wav"].read_bytes()
    uploaded = gateway.stub.UploadSong(upload_messages("mono-8k.wav", data), metadata=AUTH, timeout=60).song
    assert run_job(gateway, uploaded.song_id).state == job_pb2.JOB_STATE_SUCCEEDED
    gateway.warm_peak_kib = gateway.memory("VmHWM")
    return uploaded


def upload_messages(name: str, data: bytes, *, size_bytes: int | None = None, sha256: str = "",
                    chunk: int = 1 << 20) -> Iterator[api_pb2.UploadSongRequest]:
    yield api_pb2.UploadSongRequest(metadata=api_pb2.UploadSongMetadata(
        file_name=name, size_bytes=len(data) if size_bytes is None else size_bytes, sha256=sha256))
    for start in range(0, len(data), chunk):
        yield api_pb2.UploadSongRequest(chunk=data[start:start + chunk])


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value


def assert_readable(error: grpc.RpcError, code: grpc.StatusCode, says: str) -> None:
    """The status a client can act on, with a message for a person: what is wrong, no internals."""
    details = error.details() or ""
    assert error.code() == code, f"{error.code().name}: {details}"
    assert says in details, details
    assert not any(word in details for word in ("Traceback", "internal error", "/tmp/", "Exception")), details


def test_every_broken_file_is_refused_and_every_odd_one_makes_a_video(gateway, corpus, song):
    accepted = {}
    for entry in CORPUS:
        data = corpus[entry.name].read_bytes()
        if entry.says is None:
            accepted[entry.name] = gateway.stub.UploadSong(upload_messages(entry.name, data), metadata=AUTH,
                                                           timeout=60).song
            continue
        error = refusal(partial(gateway.stub.UploadSong, upload_messages(entry.name, data), metadata=AUTH, timeout=60))
        assert_readable(error, grpc.StatusCode.INVALID_ARGUMENT, entry.says)
        assert error.details().startswith(f"{entry.name}: "), error.details()  # names the client's file

    # The content decides, not the name or the header: a WAV named .mp3 is stored as a WAV; headers
    # claiming hours hold 3 s.
    assert accepted["wav-named.mp3"].song_key.endswith(".wav")
    for name in ("claims-hours.wav", "claims-hours.mp3", "truncated-half.mp3", "huge-id3.mp3"):
        assert 2.9 < accepted[name].duration_seconds < 3.1, (name, accepted[name])
    assert (accepted["surround-192k.wav"].channels, accepted["surround-192k.wav"].sample_rate_hz) == (8, 192000)

    with ThreadPoolExecutor(len(accepted)) as pool:
        jobs = dict(zip(accepted, pool.map(lambda song: run_job(gateway, song.song_id), accepted.values())))
    for name, job in jobs.items():
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED, f"{name}: {job.error_message}"
        frames = counted_frames(gateway.root / job.artifact_keys["video"])
        assert frames == round(accepted[name].duration_seconds * OPTIONS.fps), name


def run_job(gateway: Gateway, song_id: str) -> job_pb2.Job:
    job = gateway.stub.CreateJob(api_pb2.CreateJobRequest(request_id=str(uuid.uuid4()), song_id=song_id,
                                                          options=OPTIONS), metadata=AUTH, timeout=60).job
    for message in gateway.stub.WatchJob(api_pb2.WatchJobRequest(job_id=job.job_id), metadata=AUTH, timeout=240):
        if message.HasField("job"):
            job = message.job
    return job


def test_an_oversized_upload_is_refused_for_its_size(gateway, corpus):
    big = os.urandom(MAX_UPLOAD_BYTES + MIB)
    streamed = refusal(lambda: gateway.stub.UploadSong(upload_messages("big.wav", big, size_bytes=0), metadata=AUTH,
                                                       timeout=60))
    assert_readable(streamed, grpc.StatusCode.RESOURCE_EXHAUSTED, "the song is larger than 12 MiB")
    announced = refusal(lambda: gateway.stub.UploadSong(upload_messages("big.wav", b"", size_bytes=len(big)),
                                                        metadata=AUTH, timeout=60))
    assert_readable(announced, grpc.StatusCode.RESOURCE_EXHAUSTED, "the song is larger than 12 MiB")


def test_broken_upload_streams_are_refused(gateway, corpus):
    data = corpus["mono-8k.wav"].read_bytes()
    chunk_first = lambda: iter([api_pb2.UploadSongRequest(chunk=data)])  # noqa: E731
    metadata_twice = lambda: iter([next(upload_messages("a.wav", data)), next(upload_messages("a.wav", data))])  # noqa: E731
    for messages, says in (
            (chunk_first, "the first UploadSong message must carry the metadata"),
            (lambda: iter([]), "the first UploadSong message must carry the metadata"),
            (metadata_twice, "only the first UploadSong message may carry metadata"),
            (lambda: upload_messages("a.wav", data, size_bytes=len(data) + 1), "not the"),
            (lambda: upload_messages("a.wav", data, sha256="0" * 64), "corrupted")):
        error = refusal(partial(gateway.stub.UploadSong, messages(), metadata=AUTH, timeout=30))
        assert_readable(error, grpc.StatusCode.INVALID_ARGUMENT, says)


def options(**fields) -> job_pb2.JobOptions:
    segmenter = fields.pop("segmenter", {})
    return job_pb2.JobOptions(segmenter=stage_pb2.SegmenterParams(**segmenter), **fields)


@pytest.mark.parametrize("request_fields, says", [
    ({"options": options(pipeline=99)}, "unknown pipeline 99"),
    ({"options": options(generator="wan")}, "unknown generator 'wan'"),
    ({"options": options(segmenter={"segmenter": "magic"})}, "unknown segmenter 'magic'"),
    ({"song_id": ""}, "song_id is missing"),
    ({"options": options(fps=100_000)}, "fps must be between 1 and 120"),
    ({"options": options(width=-2, height=100_000)}, "width must be even and between 16 and 4096"),
    ({"options": options(top_k=1_000_000_000)}, "top_k must be between 1 and 20"),
    ({"options": options(seed=-1)}, "seed must be >= 0"),
    ({"options": options(segmenter={"segmenter": "random", "random_min_seconds": 0.001})},
     "segmenter.random_min_seconds must be at least 1 s"),
    ({"options": options(segmenter={"max_seconds": 0.01})}, "segmenter.max_seconds must be at least 1 s"),
    ({"options": options(segmenter={"min_seconds": float("nan")})}, "min_seconds must be a positive number"),
    ({"options": options(segmenter={"max_seconds": float("inf")})}, "max_seconds must be a positive number"),
    ({"options": options(segmenter={"beats_per_cut": 0})}, "beats_per_cut must be a whole number >= 1"),
    ({"options": options(script_inputs=stage_pb2.ScriptInputs(story="la " * 400_000))},
     "story is longer than 4000 characters"),
    ({"options": options(script_inputs=stage_pb2.ScriptInputs(characters="x" * 4001, style="y" * 4001))},
     "characters is longer than 4000 characters; style is longer than 4000 characters"),
    ({"request_id": "r" * 10_000}, "request_id is longer than 200 characters"),
])
def test_broken_and_absurd_job_requests_are_invalid_arguments(gateway, song, request_fields, says):
    request = api_pb2.CreateJobRequest(request_id=str(uuid.uuid4()), song_id=song.song_id, options=OPTIONS)
    for name, value in request_fields.items():
        if isinstance(value, job_pb2.JobOptions):
            request.options.CopyFrom(value)
        else:
            setattr(request, name, value)
    error = refusal(lambda: gateway.stub.CreateJob(request, metadata=AUTH, timeout=30))
    assert_readable(error, grpc.StatusCode.INVALID_ARGUMENT, says)


def test_broken_job_lookups_are_invalid_arguments(gateway):
    calls = {
        "GetJob": lambda: gateway.stub.GetJob(api_pb2.GetJobRequest(), metadata=AUTH, timeout=10),
        "CancelJob": lambda: gateway.stub.CancelJob(api_pb2.CancelJobRequest(), metadata=AUTH, timeout=10),
        "WatchJob": lambda: list(gateway.stub.WatchJob(api_pb2.WatchJobRequest(), metadata=AUTH, timeout=10)),
    }
    for call in calls.values():
        assert_readable(refusal(call), grpc.StatusCode.INVALID_ARGUMENT, "job_id is missing")
    for request, says in ((api_pb2.ListJobsRequest(state=99), "unknown job state 99"),
                          (api_pb2.ListJobsRequest(page_size=-5), "page_size must not be negative"),
                          (api_pb2.ListJobsRequest(page_token="../../etc"), "page_token is not one")):
        error = refusal(partial(gateway.stub.ListJobs, request, metadata=AUTH, timeout=10))
        assert_readable(error, grpc.StatusCode.INVALID_ARGUMENT, says)
    # Ids that are paths are not ids: refused for their format before any lookup.
    for job_id in ("../../etc/passwd", "jobs/x/../y", "\x00"):
        error = refusal(partial(gateway.stub.GetJob, api_pb2.GetJobRequest(job_id=job_id), metadata=AUTH, timeout=10))
        assert_readable(error, grpc.StatusCode.INVALID_ARGUMENT, "job_id must be the 32 hexadecimal digits")
    error = refusal(lambda: gateway.stub.CreateJob(api_pb2.CreateJobRequest(song_id="../songs/x"), metadata=AUTH,
                                                   timeout=10))
    assert_readable(error, grpc.StatusCode.INVALID_ARGUMENT, "song_id must be the hexadecimal id")


def test_last_the_gateway_still_serves_logged_no_internal_error_and_its_memory_stayed_bounded(gateway, song):
    assert gateway.process.process.poll() is None
    assert check_health(gateway.address, "mvgen.v1.MusicVideoService") == "SERVING"
    log = gateway.process.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    peak, warm = gateway.memory("VmHWM"), gateway.warm_peak_kib
    print(f"gateway memory: peak {warm / 1024:.0f} MiB after one job, {peak / 1024:.0f} MiB after the corpus, "
          f"the broken requests and {len([e for e in CORPUS if e.says is None])} jobs")
    assert warm and peak - warm < MAX_PEAK_GROWTH_MIB * 1024, (warm, peak)
