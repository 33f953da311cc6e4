"""What a client sends never comes back or into the log at its own length.

Ids the gateway makes have a format, checked before any lookup: a job id of 10 KB, 16 KB or 1 MB is
INVALID_ARGUMENT with a short message (before, 10 KB came back whole in NOT_FOUND, and 16 KB and more
failed as RESOURCE_EXHAUSTED on the client, whose metadata limit the echoed message broke). Every other
string a client chooses (song and request ids, backend names, file names) is shortened and escaped by
one helper (services/common/untrusted.py) wherever it reaches a message or a log line. Measured
through `python -m gateway.server` on loopback: its log grows by a few hundred bytes a call, whatever
the call carries.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from services.common.pb import job_pb2, stage_pb2
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.pb import music_video_service_pb2_grpc as api_grpc
from services.common.untrusted import SHOWN_CHARS, printable, quoted
from gateway.server.auth import token_digest
from tests.servers import FAST_RECONNECT
from tests.test_client_cli import GatewayProcess

pytestmark = pytest.mark.system  # python -m gateway.server in a process of its own (make check leaves it out)

TOKEN = "token-of-the-untrusted-text-test"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
SIZES = (10_000, 16_384, 1 << 20)
MAX_MESSAGE_CHARS = 300  # what a person reads; the id itself is cut to SHOWN_CHARS
MAX_LOG_BYTES_PER_CALL = 1024


def test_quoted_text_is_short_one_line_and_says_how_long_it_was():
    assert quoted("abc") == "'abc'" and printable("song.mp3") == "song.mp3"
    long = quoted("x" * 1_000_000)
    assert long == f"'{'x' * SHOWN_CHARS}…' (1000000 characters)"
    # Control, format and separator characters are escaped: a newline cannot forge a log line, a
    # right-to-left override cannot reorder one; a quote or backslash cannot pass for ours.
    assert quoted("a\nb\r\x00\x1b[31m\u202e\u2028'\\") == r"'a\nb\r\x00\x1b[31m\u202e\u2028\'\\'"
    assert printable("Don't stop – été 日本.mp3") == "Don't stop – été 日本.mp3"  # printable text is kept
    escapes = quoted("\x00" * 100)  # escapes count toward the limit: the result stays bounded
    assert len(escapes) < SHOWN_CHARS + 30 and escapes.endswith("(100 characters)")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[tuple[GatewayProcess, api_grpc.MusicVideoServiceStub]]:
    folder = tmp_path_factory.mktemp("untrusted")
    env = {"MVGEN_STAGES": "inprocess", "MVGEN_STORE": "local", "MVGEN_STORE_ROOT": str(folder / "store"),
           "MVGEN_GATEWAY_TOKENS_SHA256": token_digest(TOKEN)}
    process = GatewayProcess(env, folder / "gateway.log")
    process.start(timeout=90)
    channel = grpc.insecure_channel(process.address, options=FAST_RECONNECT)
    try:
        yield process, api_grpc.MusicVideoServiceStub(channel)
        assert process.stop() == 0, process.log.read_text()[-3000:]
    finally:
        channel.close()
        if process.process.poll() is None:
            process.process.kill()


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def assert_short_refusal(error: grpc.RpcError, says: str, code=grpc.StatusCode.INVALID_ARGUMENT) -> None:
    details = error.details() or ""
    assert error.code() == code, f"{error.code().name}: {details[:300]}"
    assert says in details and len(details) <= MAX_MESSAGE_CHARS, details[:1000]


def lookups(stub, job_id: str) -> dict:
    return {
        "GetJob": lambda: stub.GetJob(api_pb2.GetJobRequest(job_id=job_id), metadata=AUTH, timeout=30),
        "WatchJob": lambda: list(stub.WatchJob(api_pb2.WatchJobRequest(job_id=job_id), metadata=AUTH, timeout=30)),
        "CancelJob": lambda: stub.CancelJob(api_pb2.CancelJobRequest(job_id=job_id), metadata=AUTH, timeout=30),
    }


def upload(stub, file_name: str, data: bytes):
    messages = iter([api_pb2.UploadSongRequest(metadata=api_pb2.UploadSongMetadata(file_name=file_name)),
                     api_pb2.UploadSongRequest(chunk=data)])
    return stub.UploadSong(messages, metadata=AUTH, timeout=30)


@pytest.mark.parametrize("size", SIZES)
def test_ids_of_any_length_are_invalid_arguments_with_a_short_message_and_a_short_log(gateway, size):
    process, stub = gateway
    log_before = process.log.stat().st_size
    calls = 0
    for name, call in lookups(stub, "7" * size).items():
        assert_short_refusal(refused(call), "job_id must be"), name
        calls += 1
    create = lambda **fields: lambda: stub.CreateJob(api_pb2.CreateJobRequest(**fields), metadata=AUTH,  # noqa: E731
                                                     timeout=30)
    assert_short_refusal(refused(create(song_id="a" * size)), "song_id must be")
    assert_short_refusal(refused(create(song_id="0" * 64, request_id="r" * size)), "request_id is longer than")
    for option in ("analyzer", "writer", "generator", "fallback_writer", "storyteller"):
        error = refused(create(song_id="0" * 64, options=job_pb2.JobOptions(**{option: "w" * size})))
        assert_short_refusal(error, f"({size} characters)")
    segmenter = job_pb2.JobOptions(segmenter=stage_pb2.SegmenterParams(segmenter="s" * size))
    assert_short_refusal(refused(create(song_id="0" * 64, options=segmenter)), "unknown segmenter")
    assert_short_refusal(refused(lambda: upload(stub, "n" * size + ".mp3", b"not audio at all\n" * 64)),
                         "not a readable audio file")
    calls += 10
    grown = process.log.stat().st_size - log_before
    print(f"{size}-character strings: {calls} calls refused, the gateway log grew by {grown} bytes")
    assert grown <= calls * MAX_LOG_BYTES_PER_CALL, process.log.read_text(errors="replace")[-2000:]


def test_an_id_or_a_name_cannot_forge_a_log_line(gateway):
    process, stub = gateway
    forged = "\nERROR forged line from a client"
    for call in lookups(stub, "0" * 32 + forged).values():
        assert_short_refusal(refused(call), "job_id must be")
    assert_short_refusal(refused(lambda: upload(stub, f"song{forged}.mp3", b"not audio at all\n" * 64)),
                         "not a readable audio file")
    assert_short_refusal(refused(lambda: stub.CreateJob(api_pb2.CreateJobRequest(
        song_id="0" * 64, options=job_pb2.JobOptions(generator=f"wan{forged}")), metadata=AUTH, timeout=30)),
        r"unknown generator 'wan\nERROR forged")
    lines = process.log.read_text(errors="replace").splitlines()
    assert not [line for line in lines if line.startswith("ERROR forged")], lines[-20:]


def test_well_formed_ids_nobody_made_are_not_found(gateway):
    _, stub = gateway
    for call in lookups(stub, "0" * 32).values():
        assert_short_refusal(refused(call), "no job '00000000000000000000000000000000'", grpc.StatusCode.NOT_FOUND)
    error = refused(lambda: stub.CreateJob(api_pb2.CreateJobRequest(song_id="0" * 64), metadata=AUTH, timeout=30))
    assert_short_refusal(error, "no song", grpc.StatusCode.NOT_FOUND)
