"""`mvgen submit | revise | jobs | status | cancel` as a user runs them, against `python -m gateway.server` in
its own process (stages in-process) with an S3 store (moto's server), so the video is downloaded.
The gateway is also restarted under a watching `mvgen submit`, which reconnects and gets its video."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.common.pb import job_pb2
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.pb import music_video_service_pb2_grpc as api_grpc
from gateway.server.auth import token_digest
from tests.media import audio_stream, probe_streams, tone, video_stream
from tests.servers import REPO_ROOT, free_port
from tools import processes

pytestmark = pytest.mark.system  # python -m gateway.server in a process of its own (make check leaves it out)

MVGEN = str(Path(sys.executable).parent / "mvgen")
TOKEN = "token-of-the-cli-test"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
SMALL = ["--segmenter", "random", "--seed", "2", "--fps", "12", "--size", "160x90"]


class GatewayProcess:
    """`python -m gateway.server` on a fixed loopback port, restartable; its output in `log`."""

    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.env = {**os.environ, **env, "MVGEN_HOST": "127.0.0.1", "MVGEN_PORT": str(self.port),
                    "MVGEN_METRICS_PORT": str(free_port()), "MVGEN_GRACE_SECONDS": "2"}
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        self.process = processes.spawn(processes.module_argv("gateway.server"), self.env, self.log, own_session=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the gateway exited:\n{self.log.read_text()}"
            if processes.is_serving(self.address, timeout=1):
                return
            time.sleep(0.1)
        raise TimeoutError(f"the gateway did not serve within {timeout:.0f} s:\n{self.log.read_text()}")

    def stop(self) -> int:
        """SIGTERM: running jobs are left to resume, then the process exits; returns its exit code."""
        assert self.process is not None
        process = self.process
        processes.stop_all({"gateway": process.pid}, 30, alive=lambda _: process.poll() is None)
        return process.wait()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[GatewayProcess]:
    from moto.server import ThreadedMotoServer

    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, s3_port = s3.get_host_and_port()
    env = {"MVGEN_STAGES": "inprocess", "MVGEN_GATEWAY_TOKENS_SHA256": token_digest(TOKEN), "MVGEN_STORE": "s3",
           "MVGEN_S3_ENDPOINT": f"http://{host}:{s3_port}", "MVGEN_S3_BUCKET": "mvgen",
           "MVGEN_S3_ACCESS_KEY": "test", "MVGEN_S3_SECRET_KEY": "test"}
    running = GatewayProcess(env, tmp_path_factory.mktemp("gateway") / "gateway.log")
    running.start()
    try:
        yield running
        assert running.stop() == 0, running.log.read_text()
    finally:
        if running.process.poll() is None:
            running.process.kill()
        s3.stop()


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("songs")
    tone(folder / "song.wav", 12.0)
    tone(folder / "long.wav", 60.0)
    return folder


def mvgen(*args: str, cwd: Path, token: str = TOKEN) -> subprocess.CompletedProcess:
    env = {**os.environ, "MVGEN_TOKEN": token}
    return subprocess.run([MVGEN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_submit_makes_and_downloads_the_video_then_jobs_and_status_show_it(gateway, songs, tmp_path):
    done = mvgen("submit", str(songs / "song.wav"), "--server", gateway.address, "-o", "out/video.mp4", *SMALL,
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "mvgen: out/video.mp4" in done.stdout and "segments" in done.stdout
    assert "✓ video" in done.stderr and "✓ assembly" in done.stderr  # the same progress lines as generate
    info = probe_streams(tmp_path / "out/video.mp4")
    assert video_stream(info)["width"] == 160 and audio_stream(info)["codec_name"] == "aac"
    job_id = done.stdout.split("(job ")[1].split(")")[0]

    listed = mvgen("jobs", "--server", gateway.address, cwd=tmp_path)
    assert listed.returncode == 0 and f"{job_id}  succeeded" in listed.stdout
    status = mvgen("status", job_id, "--server", gateway.address, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "succeeded" in status.stdout and "video: http://" in status.stdout
    ended = mvgen("cancel", job_id, "--server", gateway.address, cwd=tmp_path)
    assert ended.returncode == 0 and "already ended: succeeded" in ended.stdout


def test_submit_follows_its_job_across_a_gateway_restart(gateway, songs, tmp_path):
    submit = subprocess.Popen(
        [MVGEN, "submit", str(songs / "long.wav"), "--server", gateway.address, "-o", "video.mp4", "--segmenter",
         "random", "--seed", "4", "--fps", "24", "--size", "320x180"],
        cwd=tmp_path, env={**os.environ, "MVGEN_TOKEN": TOKEN}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        with grpc.insecure_channel(gateway.address) as channel:
            stub = api_grpc.MusicVideoServiceStub(channel)
            job = wait_for(lambda: next((j for j in stub.ListJobs(api_pb2.ListJobsRequest(), metadata=AUTH).jobs
                                         if j.state == job_pb2.JOB_STATE_RUNNING and clips_done(j) >= 1), None))
        assert gateway.stop() == 0
        gateway.start()
        out, err = submit.communicate(timeout=120)
    finally:
        submit.kill()
    assert submit.returncode == 0, err
    assert f"resuming job {job.job_id}" in gateway.log.read_text()
    assert "mvgen: video.mp4" in out and video_stream(probe_streams(tmp_path / "video.mp4"))["width"] == 320


def wait_for(find, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while (found := find()) is None:
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return found


def clips_done(job: job_pb2.Job) -> int:
    return sum(c.state == job_pb2.CLIP_STATE_SUCCEEDED for c in job.clips)


def test_cancel_a_detached_job(gateway, songs, tmp_path):
    detached = mvgen("submit", str(songs / "long.wav"), "--server", gateway.address, "--detach",
                     "--size", "320x180", cwd=tmp_path)
    assert detached.returncode == 0, detached.stderr
    job_id = detached.stdout.strip()
    cancelled = mvgen("cancel", job_id, "--server", gateway.address, cwd=tmp_path)
    assert cancelled.returncode == 0 and f"job {job_id} cancelled" in cancelled.stdout
    status = mvgen("status", job_id, "--server", gateway.address, cwd=tmp_path)
    assert f"job {job_id}  cancelled" in status.stdout


def test_errors_are_one_line_with_the_right_exit_code(gateway, songs, tmp_path):
    cases = (
        (("jobs", "--server", gateway.address), "wrong-token", 2, "invalid token"),
        (("jobs", "--server", gateway.address), "", 2, "MVGEN_TOKEN"),
        (("status", "no-such-job", "--server", gateway.address), TOKEN, 2, "job_id must be"),
        (("status", "0" * 32, "--server", gateway.address), TOKEN, 1, "no job"),
        (("submit", str(songs / "song.wav"), "--server", gateway.address, "--fps", "500"), TOKEN, 2, "fps"),
        (("submit", "missing.wav", "--server", gateway.address), TOKEN, 2, "no such file"),
        (("jobs", "--server", f"127.0.0.1:{free_port()}"), TOKEN, 1, "cannot reach the gateway"),
    )
    for args, token, code, says in cases:
        done = mvgen(*args, cwd=tmp_path, token=token)
        assert done.returncode == code, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mvgen: error: ") and says in lines[0], (args, done.stderr)


def test_the_readme_python_example_makes_a_video(gateway, songs, tmp_path):
    example = REPO_ROOT / "examples" / "python_client.py"
    assert example.read_text() in (REPO_ROOT / "README.md").read_text(), "README must show the example verbatim"
    env = {**os.environ, "MVGEN_TOKEN": TOKEN, "MVGEN_SERVER": gateway.address, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, str(example), str(songs / "song.wav"), "video.mp4"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "job JOB_STATE_SUCCEEDED" in done.stdout and "clip 0 done" in done.stdout
    assert video_stream(probe_streams(tmp_path / "video.mp4"))["width"] == 640


def test_revise_makes_a_new_video_from_a_finished_job_and_refuses_bad_input_in_one_line(gateway, songs, tmp_path):
    made = mvgen("submit", str(songs / "song.wav"), "--server", gateway.address, "-o", "first.mp4", *SMALL,
                 cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    job_id = made.stdout.split("(job ")[1].split(")")[0]
    style = tmp_path / "style.json"
    style.write_text(json.dumps({"palette": ["#203040", "#e0c080"], "look": "grainy 16 mm film",
                                 "lighting": "low golden sun", "camera": "slow push-ins", "atmosphere": "warm"}))

    text = "A red kite climbs over a quiet harbour at dawn."
    revised = mvgen("revise", job_id, "--scene", "1", text, "--style-file", str(style), "--server", gateway.address,
                    "-o", "revised.mp4", cwd=tmp_path)
    assert revised.returncode == 0, revised.stderr
    assert f"revises job {job_id} (scene 1, style)" in revised.stderr and "✓ video" in revised.stderr
    assert "mvgen: revised.mp4" in revised.stdout
    assert video_stream(probe_streams(tmp_path / "revised.mp4"))["width"] == 160
    revision_id = revised.stdout.split("(job ")[1].split(")")[0]
    assert revision_id != job_id
    status = mvgen("status", revision_id, "--server", gateway.address, cwd=tmp_path)
    assert f"revises       {job_id}: scene 1, style" in status.stdout, status.stdout

    detached = mvgen("revise", job_id, "--scene", "0", "Two children chase paper boats along a canal.", "--detach",
                     "--server", gateway.address, cwd=tmp_path)
    assert detached.returncode == 0 and len(detached.stdout.strip()) == 32, detached.stderr

    cases = (
        (("revise", job_id), 2, "nothing to revise"),
        (("revise", job_id, "--scene", "one", text), 2, "--scene takes a scene number"),
        (("revise", job_id, "--scene", "1", "The sound of the waves fills the bay."), 2,
         "scene 1: it uses 'sound'"),
        (("revise", job_id, "--scene", "99", text), 2, "scene 99: the script has no such scene"),
        (("revise", job_id, "--style-file", "missing.json"), 2, "cannot read missing.json"),
        (("revise", job_id, "--characters-file", str(style)), 2, "a JSON list of characters"),
        (("revise", "0" * 32, "--scene", "1", text), 1, "no job"),
    )
    for args, code, says in cases:
        done = mvgen(*args, "--server", gateway.address, cwd=tmp_path)
        assert done.returncode == code, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mvgen: error: ") and says in lines[0], (args, done.stderr)
