"""Security of the gateway and the store: TLS (a self-signed certificate made here), per-client
limits on jobs and uploads, short-lived presigned URLs, object keys that cannot leave the store.

Covered elsewhere: tokens stored as digests and compared in constant time, wrong tokens refused
(tests/test_gateway.py, tests/test_system.py); user text delimited and cut in the prompt
(tests/test_scripting.py) and refused when absurdly long (tests/test_hostile_input.py); no secret
in any log of a stack after faults (tests/test_faults.py); non-root images (tests/test_deploy_files.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.parse
import uuid
from dataclasses import replace
from functools import partial
from pathlib import Path

import grpc
import pytest
import yaml

from services.common.errors import InvalidInputError, ResourceExhaustedError
from services.common.pb import job_pb2, stage_pb2
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.pb import music_video_service_pb2_grpc as api_grpc
from services.common.settings import StoreSettings
from services.common.store import LocalArtifactStore
from gateway.cli.remote import open_channel
from gateway.server.settings import MIB, GatewaySettings
from gateway.server.songs import UploadAllowance
from tests.media import tone
from tests.servers import REPO_ROOT

# local_store and s3_store are fixtures: imported, pytest finds them here.
from tests.test_gateway import AUTH, TOKEN, RunningGateway, create, local_store, s3_store, upload  # noqa: F401
from tests.tls import self_signed_certificate

MVGEN = str(Path(sys.executable).parent / "mvgen")
OTHER_TOKEN = "the-token-of-another-client"
OTHER_AUTH = (("authorization", f"Bearer {OTHER_TOKEN}"),)
SMALL = job_pb2.JobOptions(segmenter=stage_pb2.SegmenterParams(segmenter="random", seed=3), fps=12, width=160,
                           height=90)


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("songs")
    tone(folder / "short.wav", 4.0, rate=22050, channels=1)  # 176 KB
    tone(folder / "long.wav", 40.0, rate=22050, channels=1)  # 1.7 MB
    return folder


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM files)."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"), ["localhost"], ("127.0.0.1",), stem="gateway")


def list_jobs(channel: grpc.Channel, metadata=AUTH) -> list[job_pb2.Job]:
    return list(api_grpc.MusicVideoServiceStub(channel).ListJobs(api_pb2.ListJobsRequest(), metadata=metadata,
                                                                  timeout=10).jobs)


def mvgen(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MVGEN_")} | {"MVGEN_TOKEN": TOKEN}
    return subprocess.run([MVGEN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


# --- TLS --------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_gateway_serves_tls_and_the_client_verifies_it(local_store, certificate, songs, tmp_path):  # noqa: F811
    cert, key = certificate
    running = RunningGateway(local_store, tls_cert_file=str(cert), tls_key_file=str(key))
    address = f"127.0.0.1:{running.gateway.port}"
    try:
        with open_channel(address, ca_file=str(cert)) as channel:
            assert list_jobs(channel) == []  # trusted: the call goes through, token and all
        with grpc.insecure_channel(address) as channel:  # plain text is not spoken at all
            with pytest.raises(grpc.RpcError) as plain:
                list_jobs(channel)
            assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
        with open_channel(address, tls=True) as channel:  # the system's CAs do not vouch for this certificate
            with pytest.raises(grpc.RpcError) as untrusted:
                list_jobs(channel)
            assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE

        # The command line over TLS: a whole job, its upload stream and its watch stream.
        done = mvgen("submit", str(songs / "short.wav"), "--server", address, "--tls-ca", str(cert),
                     "--segmenter", "random", "--fps", "12", "--size", "160x90", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "final.mp4 in the gateway's store" in done.stdout
        refused = mvgen("jobs", "--server", address, "--tls", cwd=tmp_path)
        assert refused.returncode == 1 and "cannot reach the gateway" in refused.stderr, refused.stderr

        # docker-compose.yml's health check of the gateway, as the container runs it, speaks TLS too.
        check = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["gateway"]["healthcheck"]
        assert check["test"][:2] == ["CMD", "python"]
        command = [sys.executable, *check["test"][2:]]  # the image's python is this one's
        env = {"MVGEN_PORT": str(running.gateway.port), "MVGEN_TLS_SERVER_NAME": "localhost"}
        healthy = subprocess.run(command, env=env | {"MVGEN_TLS_CERT_FILE": str(cert)}, capture_output=True,
                                 text=True, timeout=30)
        assert healthy.returncode == 0, healthy.stderr
        unhealthy = subprocess.run(command, env=env | {"MVGEN_TLS_CERT_FILE": ""}, capture_output=True, timeout=30)
        assert unhealthy.returncode != 0  # plain text against a TLS port: not healthy
    finally:
        running.stop()


def test_tls_needs_both_the_certificate_and_the_key(certificate):
    cert, _ = certificate
    settings = GatewaySettings(StoreSettings("local", "", "", "mvgen", "", "", "us-east-1", False), (),
                               tls_cert_file=str(cert))
    with pytest.raises(InvalidInputError, match="both MVGEN_TLS_CERT_FILE and MVGEN_TLS_KEY_FILE"):
        settings.server_credentials()
    with pytest.raises(InvalidInputError, match="MVGEN_TLS_KEY_FILE: cannot read"):
        replace(settings, tls_key_file="/nonexistent/key.pem").server_credentials()


# --- per-client limits ------------------------------------------------------------------------------------------

def test_a_client_may_have_only_so_many_jobs_at_once(local_store, songs):  # noqa: F811
    running = RunningGateway(local_store, tokens=(TOKEN, OTHER_TOKEN), max_active_jobs=1, max_jobs_per_client=2)
    try:
        song_id = upload(running.stub, songs / "long.wav").song_id
        first_request = str(uuid.uuid4())
        first = create(running.stub, song_id, SMALL, first_request)
        second = create(running.stub, song_id, SMALL)
        with pytest.raises(grpc.RpcError) as third:
            create(running.stub, song_id, SMALL)
        assert third.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert third.value.details() == ("you have 2 jobs queued or running; one client may have at most 2 at once: "
                                         "wait for one to end, or cancel one")
        assert create(running.stub, song_id, SMALL, first_request).job_id == first.job_id  # a retry is no new job
        other_song = upload(running.stub, songs / "long.wav", metadata=OTHER_AUTH).song_id
        other = running.stub.CreateJob(api_pb2.CreateJobRequest(song_id=other_song, options=SMALL),
                                       metadata=OTHER_AUTH).job  # another client has its own limit
        running.stub.CancelJob(api_pb2.CancelJobRequest(job_id=second.job_id), metadata=AUTH)
        fourth = create(running.stub, song_id, SMALL)  # a slot is free again
        for job_id, auth in ((first.job_id, AUTH), (fourth.job_id, AUTH), (other.job_id, OTHER_AUTH)):
            running.stub.CancelJob(api_pb2.CancelJobRequest(job_id=job_id), metadata=auth)
    finally:
        running.stop()


def test_a_client_may_upload_only_so_much_per_hour(local_store, songs):  # noqa: F811
    running = RunningGateway(local_store, tokens=(TOKEN, OTHER_TOKEN), upload_bytes_per_hour=3 * MIB)
    try:
        upload(running.stub, songs / "long.wav")  # 1.7 MB of 3 MiB
        with pytest.raises(grpc.RpcError) as refused:
            upload(running.stub, songs / "long.wav")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details().startswith("upload limit reached: one client may upload 3 MiB per hour; "
                                                  "try again in ")
        assert upload(running.stub, songs / "short.wav", metadata=OTHER_AUTH).sha256  # its own allowance
    finally:
        running.stop()


def test_the_upload_allowance_refills_at_its_hourly_rate():
    now = [0.0]
    allowance = UploadAllowance(3600 * 1000, clock=lambda: now[0])  # 1000 bytes a second
    allowance.take("a", 3600 * 1000)  # the whole hour's worth at once
    with pytest.raises(ResourceExhaustedError, match="try again in 5 s"):
        allowance.take("a", 5000)
    now[0] = 5.0
    allowance.take("a", 5000)
    with pytest.raises(ResourceExhaustedError, match="larger than the upload limit"):
        allowance.take("b", 3600 * 1000 + 1)
    UploadAllowance(0).take("a", 10**12)  # 0: no limit


# --- presigned URLs ---------------------------------------------------------------------------------------------

def test_presigned_urls_are_short_lived(s3_store):  # noqa: F811
    running = RunningGateway(s3_store, presign_seconds=60)
    try:
        before = time.time()
        reserved = running.stub.RequestUpload(api_pb2.RequestUploadRequest(file_name="a.mp3", size_bytes=1000),
                                              metadata=AUTH)
        query = urllib.parse.parse_qs(urllib.parse.urlparse(reserved.upload_url).query)
        # Signed into the URL: MinIO and S3 refuse it after a minute (moto, standing in here, does not check).
        assert query["X-Amz-Expires"] == ["60"] and "X-Amz-Signature" in query
        assert before + 59 <= reserved.expire_time.ToSeconds() <= time.time() + 61
    finally:
        running.stop()
    with pytest.raises(InvalidInputError, match="MVGEN_PRESIGN_SECONDS"):
        GatewaySettings(StoreSettings("local", "", "", "mvgen", "", "", "us-east-1", False), (),
                        presign_seconds=8 * 24 * 3600)


# --- object keys ------------------------------------------------------------------------------------------------

ESCAPING_KEYS = ["../outside", "a/../../outside", "/etc/passwd", "a//b", "a/./b", "a\\..\\b", "a\x00b", "a\nb", "",
                 "jobs/", "x" * 2000]


def test_keys_that_could_escape_are_refused_by_both_stores(tmp_path, s3_store):  # noqa: F811
    local = LocalArtifactStore(tmp_path / "store")
    for store in (local, s3_store):
        for key in ESCAPING_KEYS:
            for call in (partial(store.put_bytes, key, b"x"), partial(store.get_bytes, key),
                         partial(store.exists, key), partial(store.copy, key, "ok")):
                with pytest.raises(InvalidInputError):
                    call()
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing written anywhere

    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "store" / "jobs").mkdir(parents=True)
    (tmp_path / "store" / "jobs" / "link").symlink_to(outside)
    with pytest.raises(InvalidInputError, match="leads outside the store"):
        local.put_bytes("jobs/link/x.json", b"x")
    assert not list(outside.iterdir())


def test_uploaded_file_names_never_become_keys(local_store, songs, tmp_path):  # noqa: F811
    running = RunningGateway(local_store)
    try:
        data = (songs / "short.wav").read_bytes()

        def messages():
            yield api_pb2.UploadSongRequest(metadata=api_pb2.UploadSongMetadata(
                file_name="../../../etc/cron.d/evil.wav", size_bytes=len(data)))
            yield api_pb2.UploadSongRequest(chunk=data)

        song = running.stub.UploadSong(messages(), metadata=AUTH).song
    finally:
        running.stop()
    assert re.fullmatch(rf"songs/[0-9a-f]{{12}}/{song.sha256}\.wav", song.song_key) and song.file_name == "evil.wav"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        f"store/{key}" for key in local_store.list(""))
