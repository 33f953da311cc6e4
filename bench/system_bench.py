"""The system rows of `make bench`: the deployed architecture (gateway + six stage services + S3) on
loopback, against the in-process `mvgen generate` that bench/run.py has just measured.

One dev stack (tools/dev_stack.py: moto's S3 server, the six stage services, the gateway) runs two
jobs of the same song through `mvgen submit` (upload, job, download all timed):

1. with two video replicas, each MVGEN_MAX_CONCURRENT=1: the stack's own and a second one started
   here. Two clips at a time is what `mvgen generate` does on this machine (min(2, cores) clip
   workers), so this job's end-to-end time against generate's is the cost of the architecture:
   gRPC, S3 round-trips through moto, the upload and the download, the extra processes.
2. with the second replica stopped again: one clip at a time. Its video stage against the first
   job's is the clip fan-out's speed-up from one replica to two. The gateway shares outputs
   between jobs by fingerprint, so this job takes another seed (its clips differ, the same work):
   with the same seed every clip would come from the first job's cache. (Segmentation, which
   the seed does not change under `rules`, still comes from it: this job's stage sum is not used.)

The video stage's seconds come from each job's manifest (the orchestrator's own timing of the
stage, the same number `mvgen generate` writes into its run folder), read from the stack's S3.
The gateway is told both replicas' addresses at start (MVGEN_VIDEO_ADDR, a list); which of them
it sees serving is taken from its log ("video replica ADDR: SERVING") before each job starts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tools.dev_stack import DevStack
from tools.processes import HOST, REPO, check_health, free_ports

Row = tuple[str, float, str, float]
SEEN_SECONDS = 30.0  # how long the gateway may take to notice a replica start or stop (it polls every 0.5 s)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def system_rows(song: Path, song_seconds: float, generate_seconds: float, generate_run_dir: Path | None,
                work: Path, log=print) -> list[Row]:
    """Rows (what, value, baseline name, baseline value) for the song at `song`, already measured
    in process: `generate_seconds` end to end, its run folder (manifest) in `generate_run_dir`."""
    cores = cpu_count()
    video_port, extra_port = free_ports(2)
    video_addr, extra_addr = f"{HOST}:{video_port}", f"{HOST}:{extra_port}"
    stack = DevStack(work / "stack", free_ports=True, ports={"video": video_port}, env={
        "video": {"MVGEN_MAX_CONCURRENT": "1"},
        "gateway": {"MVGEN_VIDEO_ADDR": f"{video_addr},{extra_addr}"},
    })
    log("system bench: starting the dev stack (moto, six stage services, gateway)")
    started = time.perf_counter()
    state = stack.start()
    start_seconds = time.perf_counter() - started
    extra: subprocess.Popen[bytes] | None = None
    try:
        gateway_log = Path(state["processes"]["gateway"]["log"])
        extra = start_replica(state, extra_port, work / "stack" / "logs" / f"video-{extra_port}.log")
        wait_gateway_sees(gateway_log, extra_addr, serving=True)
        wait_gateway_sees(gateway_log, video_addr, serving=True)

        log("system bench: mvgen submit, 2 video replicas")
        two = submit_job(song, state, work / "two.mp4", seed=0)
        stop_process(extra)
        wait_gateway_sees(gateway_log, extra_addr, serving=False)
        log("system bench: mvgen submit, 1 video replica")
        one = submit_job(song, state, work / "one.mp4", seed=1)
    finally:
        if extra is not None:
            stop_process(extra)
        stack.stop()

    if two["clips"] != one["clips"]:
        raise RuntimeError(f"the two jobs made different clip counts: {two['clips']} and {one['clips']}")
    clips = two["clips"]
    share = f"2 replicas share {cores} cores: CPU-bound" if cores <= 2 else f"2 replicas on {cores} cores"
    rows: list[Row] = [
        (f"submit via gateway + services on loopback (moto S3), {song_seconds:.0f} s song, 2 video replicas, s",
         two["seconds"], "generate in-process", generate_seconds),
        (f"video stage, {clips} clips: 2 replicas × 1 clip ({share}), s",
         two["video_seconds"], "1 replica", one["video_seconds"]),
    ]
    inprocess = read_manifest(generate_run_dir / "manifest.json") if generate_run_dir else None
    if inprocess:
        rows.append(("six stages' seconds summed (manifest), services, 2 video replicas, s",
                     stages_seconds(two["manifest"]), "in-process", stages_seconds(inprocess)))
        rows.append((f"video stage, {clips} clips: 2 replicas (gRPC + S3), s", two["video_seconds"],
                     "in-process, 2 clip workers", stage_seconds(inprocess, "video")))
    rows.append(("dev stack start (moto + 6 services + gateway, until all SERVING), s", start_seconds, "-", 0.0))
    return rows


# ------------------------------------------------------------------ the second replica

def replica_env(state: dict[str, Any], port: int) -> dict[str, str]:
    """What tools/dev_stack.py gives its video service, on another port."""
    s3 = state["s3"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MVGEN_")}
    env.update({
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
        "PYTHONUNBUFFERED": "1",
        "MVGEN_HOST": HOST, "MVGEN_PORT": str(port), "MVGEN_GRACE_SECONDS": "5",
        "MVGEN_STORE": "s3", "MVGEN_S3_ENDPOINT": s3["endpoint"], "MVGEN_S3_BUCKET": s3["bucket"],
        "MVGEN_S3_ACCESS_KEY": s3["access_key"], "MVGEN_S3_SECRET_KEY": s3["secret_key"],
        "MVGEN_S3_REGION": s3["region"], "MVGEN_S3_SECURE": "false",
        "MVGEN_PROMPTS_DIR": str(REPO / "prompts"),
        "MVGEN_MAX_CONCURRENT": "1",
        "MVGEN_STAGE_SECRET": state["stage_secret"],
    })
    return env


def start_replica(state: dict[str, Any], port: int, log_path: Path, timeout: float = 120.0) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "services.video.server"], cwd=REPO,
                                env=replica_env(state, port), stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the second video replica exited ({proc.returncode}):\n{_tail(log_path)}")
        try:
            if check_health(f"{HOST}:{port}", timeout=1.0) == "SERVING":
                return proc
        except Exception:  # grpc.RpcError: not listening yet
            pass
        if time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"the second video replica did not serve within {timeout:.0f} s:\n{_tail(log_path)}")
        time.sleep(0.2)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_gateway_sees(gateway_log: Path, address: str, *, serving: bool) -> None:
    """Until the gateway's last word on the replica at `address` says it serves (or that it does not)."""
    marker = f"video replica {address}: "
    deadline = time.monotonic() + SEEN_SECONDS
    while True:
        said = [line for line in gateway_log.read_text(errors="replace").splitlines() if marker in line]
        if said and said[-1].endswith(f"{marker}SERVING") == serving:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not see video replica {address} "
                               f"{'serving' if serving else 'stop'} within {SEEN_SECONDS:.0f} s:\n{_tail(gateway_log)}")
        time.sleep(0.2)


# ------------------------------------------------------------------ one job

def submit_job(song: Path, state: dict[str, Any], output: Path, seed: int) -> dict[str, Any]:
    """`mvgen submit` with the in-process defaults spelled out (seed 0 is generate's); its wall time,
    the job's clips and the video stage's seconds from the job's manifest."""
    mvgen = str(Path(sys.executable).parent / "mvgen")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MVGEN_")}
    env["MVGEN_TOKEN"] = state["gateway"]["token"]
    command = [mvgen, "submit", str(song), "--server", state["gateway"]["server"], "-q", "-o", str(output),
               "--segmenter", "rules", "--analysis", "descriptors", "--writer", "template",
               "--generator", "animatic", "--fps", "24", "--size", "640x360", "--seed", str(seed)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"mvgen submit failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    match = re.search(r"\(job ([^)\s]+)\)", done.stdout)
    if not match or not output.is_file():
        raise RuntimeError(f"mvgen submit did not report a job and write {output}:\n{done.stdout}\n{done.stderr}")
    manifest = json.loads(s3_store(state).get_bytes(f"jobs/{match[1]}/manifest.json"))
    video = manifest["stages"]["video"]
    if manifest.get("state") != "succeeded" or video.get("state") != "succeeded":
        raise RuntimeError(f"job {match[1]} did not succeed: {manifest.get('state')} {manifest.get('error')}")
    if video["info"]["generated"] != video["info"]["clips"]:
        raise RuntimeError(f"job {match[1]} took {video['info']['clips'] - video['info']['generated']} clips "
                           f"from the cache: its video stage is not a measurement")
    return {"seconds": seconds, "job_id": match[1], "clips": video["info"]["clips"],
            "video_seconds": stage_seconds(manifest, "video"), "manifest": manifest}


def s3_store(state: dict[str, Any]):
    from services.common.s3_store import S3ArtifactStore
    from services.common.settings import StoreSettings

    s3 = state["s3"]
    return S3ArtifactStore(StoreSettings(kind="s3", root="", endpoint=s3["endpoint"], bucket=s3["bucket"],
                                         access_key=s3["access_key"], secret_key=s3["secret_key"],
                                         region=s3["region"], secure=False))


STAGES = ("segmentation", "analysis", "scripting", "video", "assembly")


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage_seconds(manifest: dict[str, Any], stage: str) -> float:
    """The orchestrator's timing of one stage that ran (not taken from the cache)."""
    record = manifest["stages"][stage]
    if record.get("state") != "succeeded" or "seconds" not in record:
        raise RuntimeError(f"the {stage} stage of job {manifest.get('job_id')} has no timing: {record}")
    return float(record["seconds"])


def stages_seconds(manifest: dict[str, Any]) -> float:
    return sum(stage_seconds(manifest, stage) for stage in STAGES)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
