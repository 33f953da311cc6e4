"""`make dev-up` / `make dev-down` (tools/dev_stack.py): the whole system on loopback, moto for MinIO.

The stack is started the way `make dev-up` starts it (the CLI, in a process of its own, so the
services outlive it) on free ports, checked, and stopped the way `make dev-down` stops it (from
the state file alone). A service killed (SIGKILL) and restarted comes back on the same port with
the same configuration. The whole system doing its work is tested in tests/test_system.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.common.s3_store import S3ArtifactStore
from services.common.settings import StoreSettings
from tests.servers import stage_channel
from tools.dev_stack import STAGES, DevStack, DevStackError
from tools.processes import check_health, is_running

pytestmark = pytest.mark.system  # the dev stack's processes (make check leaves it out)

REPO = Path(__file__).resolve().parents[1]
GRPC_PROCESSES = [*STAGES, "gateway"]


def dev_stack_cli(base_dir: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.dev_stack", "--base-dir", str(base_dir), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base_dir = tmp_path_factory.mktemp("dev-stack")
    up = dev_stack_cli(base_dir, "up", "--free-ports")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((base_dir / "state.json").read_text())
        yield base_dir, state, up
    finally:
        DevStack(base_dir).stop(grace_seconds=5)  # whatever the tests did, nothing is left running


def store_of(state: dict) -> S3ArtifactStore:
    s3 = state["s3"]
    return S3ArtifactStore(StoreSettings(kind="s3", root="", endpoint=s3["endpoint"], bucket=s3["bucket"],
                                         access_key=s3["access_key"], secret_key=s3["secret_key"],
                                         region=s3["region"], secure=False))


def test_up_says_how_to_submit_a_song(stack):
    _, state, up = stack
    server = state["gateway"]["server"]
    assert f"MVGEN_TOKEN={state['gateway']['token']} .venv/bin/mvgen submit song.wav --server {server}" in up.stdout
    assert "make dev-down" in up.stdout


def test_state_file_records_every_process_and_is_private(stack):
    base_dir, state, _ = stack
    assert stat.S_IMODE((base_dir / "state.json").stat().st_mode) == 0o600  # it holds the token and keys
    assert set(state["processes"]) == {"s3", *STAGES, "gateway"}
    ports = [p["port"] for p in state["processes"].values()]
    assert len(set(ports)) == len(ports)
    for name, entry in state["processes"].items():
        assert is_running(entry["pid"]), name
        assert Path(entry["log"]).parent == base_dir / "logs"
        assert entry["address"] == f"127.0.0.1:{entry['port']}"  # loopback only
    assert (base_dir / ".gitignore").read_text() == "*\n"


def test_every_service_is_serving_and_reflects_its_service(stack):
    _, state, _ = stack
    for name in GRPC_PROCESSES:
        entry = state["processes"][name]
        assert check_health(entry["address"]) == "SERVING", name
        assert check_health(entry["address"], entry["service"]) == "SERVING", name
        with stage_channel(entry["address"], state["stage_secret"]) as channel:
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {entry["service"], "grpc.health.v1.Health"} <= services, (name, services)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads the environment from /proc")
def test_every_service_is_configured_for_the_moto_store(stack):
    _, state, _ = stack
    for name in GRPC_PROCESSES:
        env = proc_environ(state["processes"][name]["pid"])
        assert env["MVGEN_STORE"] == "s3", name
        assert env["MVGEN_S3_ENDPOINT"] == state["s3"]["endpoint"], name
        assert env["MVGEN_S3_BUCKET"] == state["s3"]["bucket"], name
        assert env["MVGEN_HOST"] == "127.0.0.1", name
    assert {proc_environ(state["processes"][name]["pid"])["MVGEN_STAGE_SECRET"] for name in GRPC_PROCESSES} == \
        {state["stage_secret"]}
    env = proc_environ(state["processes"]["gateway"]["pid"])
    for stage in STAGES:
        assert env[f"MVGEN_{stage.upper()}_ADDR"] == state["processes"][stage]["address"]
    assert state["gateway"]["token"] not in env["MVGEN_GATEWAY_TOKENS_SHA256"]  # a digest, never the token


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_an_object_written_through_moto_is_readable(stack):
    _, state, _ = stack
    store = store_of(state)
    store.put_bytes("dev-stack-test/hello.txt", b"hello from the dev stack")
    assert store_of(state).get_bytes("dev-stack-test/hello.txt") == b"hello from the dev stack"
    assert store.exists("dev-stack-test/hello.txt")
    assert "dev-stack-test/hello.txt" in store.list("dev-stack-test/")


def test_the_gateway_accepts_the_printed_dev_token_only(stack):
    from services.common.pb import music_video_service_pb2 as api_pb2
    from services.common.pb import music_video_service_pb2_grpc as api_grpc

    _, state, _ = stack
    with grpc.insecure_channel(state["gateway"]["address"]) as channel:
        gateway = api_grpc.MusicVideoServiceStub(channel)
        gateway.ListJobs(api_pb2.ListJobsRequest(), timeout=10,
                         metadata=(("authorization", f"Bearer {state['gateway']['token']}"),))
        with pytest.raises(grpc.RpcError) as refused:
            gateway.ListJobs(api_pb2.ListJobsRequest(), timeout=10,
                             metadata=(("authorization", "Bearer not-the-dev-token"),))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_second_up_is_refused_while_the_stack_runs(stack):
    base_dir, state, _ = stack
    again = dev_stack_cli(base_dir, "up", "--free-ports", timeout=60)
    assert again.returncode == 1
    assert "already running" in again.stderr
    assert json.loads((base_dir / "state.json").read_text())["processes"] == state["processes"]


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads the environment from /proc")
def test_a_killed_service_restarts_on_its_port_with_its_configuration(stack):
    # kill/restart from the state file alone, as another process than the one that started the stack
    # (tests/test_system.py uses them on a stack it started, mid-job).
    base_dir, state, _ = stack
    stack_ = DevStack(base_dir)
    before = state["processes"]["segmentation"]
    env_before = {k: v for k, v in proc_environ(before["pid"]).items() if k.startswith("MVGEN_")}
    stack_.kill("segmentation")
    assert not is_running(before["pid"])
    with pytest.raises(grpc.RpcError):
        check_health(before["address"], timeout=1.0)
    assert "segmentation" not in stack_.running()
    with pytest.raises(DevStackError, match="still running"):
        stack_.restart("assembly")
    after = stack_.restart("segmentation", timeout=60)
    assert after["pid"] != before["pid"] and after["port"] == before["port"]
    assert check_health(after["address"], before["service"]) == "SERVING"
    assert {k: v for k, v in proc_environ(after["pid"]).items() if k.startswith("MVGEN_")} == env_before
    assert json.loads((base_dir / "state.json").read_text())["processes"]["segmentation"]["pid"] == after["pid"]
    assert set(stack_.running()) == set(state["processes"])


def test_the_restart_command_restarts_a_running_process_on_its_port(stack):
    from services.common.pb import music_video_service_pb2 as api_pb2
    from services.common.pb import music_video_service_pb2_grpc as api_grpc

    base_dir, state, _ = stack
    before = json.loads((base_dir / "state.json").read_text())["processes"]["gateway"]
    restarted = dev_stack_cli(base_dir, "restart", "gateway")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    after = json.loads((base_dir / "state.json").read_text())["processes"]["gateway"]
    assert f"{'gateway':<14} restarted: {after['address']} pid {after['pid']}" in restarted.stdout
    assert after["pid"] != before["pid"] and after["port"] == before["port"]
    assert not is_running(before["pid"])
    assert check_health(after["address"], before["service"]) == "SERVING"
    with grpc.insecure_channel(after["address"]) as channel:  # the printed dev token still opens it
        api_grpc.MusicVideoServiceStub(channel).ListJobs(
            api_pb2.ListJobsRequest(), timeout=10, metadata=(("authorization", f"Bearer {state['gateway']['token']}"),))


def test_restarting_moto_keeps_its_objects(stack):
    base_dir, state, _ = stack
    store_of(state).put_bytes("dev-stack-test/kept.txt", b"still here after a restart")
    restarted = dev_stack_cli(base_dir, "restart", "s3")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "the store holds again its" in restarted.stdout
    assert store_of(state).get_bytes("dev-stack-test/kept.txt") == b"still here after a restart"


def test_restart_names_the_processes_there_are(stack):
    base_dir, _, _ = stack
    unknown = dev_stack_cli(base_dir, "restart", "nosuch", timeout=60)
    assert unknown.returncode == 1
    assert "no process 'nosuch' in the dev stack; there are: s3, segmentation" in unknown.stderr, unknown.stderr


def test_a_stage_of_the_stack_refuses_a_call_without_the_stack_secret(stack):
    from services.common.pb import segmentation_service_pb2 as seg_pb
    from services.common.pb import segmentation_service_pb2_grpc as seg_grpc

    _, state, _ = stack
    address = state["processes"]["segmentation"]["address"]
    request = seg_pb.SegmentRequest(song_key="nowhere.wav", segments_key="x.json", segments_text_key="x.txt")
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as refused:
        seg_grpc.SegmentationServiceStub(channel).Segment(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with stage_channel(address, state["stage_secret"]) as channel, pytest.raises(grpc.RpcError) as served:
        seg_grpc.SegmentationServiceStub(channel).Segment(request, timeout=10)
    assert served.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # past the check: the song is not there


def test_down_stops_every_process(stack):
    # Last in this module: `make dev-down` works from the state file alone (the processes are not
    # its children), SIGTERM first.
    base_dir, _, _ = stack
    state = json.loads((base_dir / "state.json").read_text())  # the pids now, restarts included
    down = dev_stack_cli(base_dir, "down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    for name, entry in state["processes"].items():
        assert not is_running(entry["pid"]), f"{name} (pid {entry['pid']}) still runs"
        assert f"{name}" in down.stdout
    assert "killed" not in down.stdout, down.stdout  # every service drained and exited on SIGTERM
    assert not (base_dir / "state.json").exists()
    again = dev_stack_cli(base_dir, "down", timeout=60)
    assert again.returncode == 0 and "nothing to stop" in again.stdout


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists child processes through /proc")
def test_a_service_that_cannot_start_is_reported_and_nothing_is_left_running(tmp_path):
    # An invalid port makes segmentation exit at once: start() must say so, with its log, and stop
    # what it had started (moto and the other services).
    stack = DevStack(tmp_path / "stack", free_ports=True, startup_timeout=120,
                     env={"segmentation": {"MVGEN_PORT": "not-a-port"}})
    started = time.monotonic()
    with pytest.raises(DevStackError, match=r"(?s)segmentation exited .*MVGEN_PORT must be an integer"):
        stack.start()
    assert time.monotonic() - started < 60
    assert stack.load_state() is None
    logs = sorted(p.stem for p in (tmp_path / "stack" / "logs").iterdir())
    assert "s3" in logs and "segmentation" in logs
    for proc in live_children():
        assert "services." not in proc and "moto.server" not in proc, proc


def live_children() -> list[str]:
    """Command lines of this process's live children (from /proc, without psutil)."""
    me = str(os.getpid())
    found = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
            if fields[1] == me and fields[0] != "Z":
                found.append((status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError):
            continue
    return found
