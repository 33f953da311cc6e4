"""Load: many jobs at once through the gateway of the real system on loopback (tools/dev_stack.py:
moto, the six stage services with two video replicas, the gateway; CPU backends), each from its
own client thread: upload, CreateJob, WatchJob to the end.

All jobs must complete, each with a video of the right length. Measured and reported (printed, and
written to build/reliability/load-<N>.json): throughput, latency, the gateway's overhead per job
(its CPU time, its requests to the object store by operation as its metrics count them, and the wall
time between one stage's end and the next one's start, which is the orchestrator's own work), and the
peak resident memory of every process.

MVGEN_LOAD_JOBS sets N: 4 in `make test` (short songs), 20 in `make soak`.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.pb import job_pb2, stage_pb2
from tests.media import counted_frames
from tests.servers import REPO_ROOT, dev_stack_store
from tests.test_system import Client, System, describe
from tools.dev_stack import DevStack
from tools.synth_song import render_song

pytestmark = pytest.mark.system  # the dev stack's processes (make check leaves it out)

JOBS = int(os.environ.get("MVGEN_LOAD_JOBS", "4"))
SONG_SECONDS = 10 if JOBS <= 4 else 12  # the synthesizer needs 5 bars: 10 s at 120 BPM
FPS = 12
RESULTS = REPO_ROOT / "build" / "reliability"
# Bounds that hold on a busy 2-core machine with room to spare; the figures themselves are reported.
MAX_GATEWAY_CPU_SECONDS_PER_JOB = 2.0
MAX_GATEWAY_PEAK_MIB = 300
MAX_SERVICE_PEAK_MIB = 1200
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def options(seed: int) -> job_pb2.JobOptions:
    # A seed per job: no two jobs share a segmentation, so none reuses another's outputs.
    return job_pb2.JobOptions(segmenter=stage_pb2.SegmenterParams(segmenter="random", seed=seed), seed=seed, fps=FPS,
                              width=160, height=90)


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Iterator[System]:
    stack = DevStack(tmp_path_factory.mktemp("load") / "stack", free_ports=True, grace_seconds=2,
                     startup_timeout=120, video_replicas=2,
                     env={"gateway": {"MVGEN_MAX_ACTIVE_JOBS": str(JOBS), "MVGEN_CLIENT_MAX_JOBS": str(JOBS)}})
    try:
        state = stack.start()
        store = dev_stack_store(state)
        yield System(stack, state, store, state["gateway"]["token"])
    finally:
        stack.stop()


@dataclass
class Run:
    job: job_pb2.Job
    submitted: float  # time.time() before the upload
    ended: float  # when the terminal snapshot arrived


def one_job(system: System, song: Path, seed: int) -> Run:
    client = Client(system)
    try:
        submitted = time.time()
        song_id = client.upload(song).song_id
        job = client.create(song_id, options(seed), str(uuid.uuid4()))
        ended_job = client.follow(job.job_id, timeout=600, logs=("gateway",))
        return Run(ended_job, submitted, time.time())
    finally:
        client.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def store_requests(system: System) -> dict[str, float]:
    """The gateway's requests to the object store so far, by operation, from its metrics endpoint."""
    url = f"http://127.0.0.1:{system.state['gateway']['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {sample.labels["operation"]: sample.value
            for family in text_string_to_metric_families(text) if family.name == "mvgen_store_requests"
            for sample in family.samples if sample.name == "mvgen_store_requests_total"}


def settled_store_requests(system: System, quiet: float = 0.5, timeout: float = 10.0) -> dict[str, float]:
    """The same, once two scrapes `quiet` seconds apart agree: the gateway may still be finishing a
    job's last reads and writes after its terminal snapshot went out."""
    last, deadline = store_requests(system), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = store_requests(system)
        if now == last:
            break
        last = now
    return last


def stage_gaps(job: job_pb2.Job) -> float:
    """Seconds between each stage's end and the next one's start: the orchestrator's own work
    (reading the last output back, fingerprints, manifest writes)."""
    stages = sorted(job.stages, key=lambda s: s.start_time.ToNanoseconds())
    return sum(max(0, later.start_time.ToNanoseconds() - earlier.end_time.ToNanoseconds())
               for earlier, later in zip(stages, stages[1:])) / 1e9


def test_many_jobs_at_once_all_complete(system, tmp_path):
    song = tmp_path / "song.wav"
    truth = render_song(song, seconds=SONG_SECONDS, seed=7)
    gateway_pid = system.state["processes"]["gateway"]["pid"]
    cpu_before, requests_before = cpu_seconds(gateway_pid), store_requests(system)
    with ThreadPoolExecutor(JOBS) as pool:
        runs = list(pool.map(lambda i: one_job(system, song, 1000 + i), range(JOBS)))
    gateway_cpu = cpu_seconds(gateway_pid) - cpu_before
    requests = {operation: count - requests_before.get(operation, 0)
                for operation, count in settled_store_requests(system).items()}

    failed = [describe(r.job) for r in runs if r.job.state != job_pb2.JOB_STATE_SUCCEEDED]
    assert not failed, "\n".join(failed) + "\n" + system.logs("gateway")
    for run in runs:
        with system.store.local_path(run.job.artifact_keys["video"]) as video:
            assert counted_frames(video) == round(truth.duration * FPS), run.job.job_id

    span = max(r.ended for r in runs) - min(r.submitted for r in runs)
    latencies = sorted(r.ended - r.submitted for r in runs)
    gaps = [stage_gaps(r.job) for r in runs]
    peaks = {name: round(peak_mib(entry["pid"]), 1) for name, entry in system.state["processes"].items()}
    # Busy stages (RESOURCE_EXHAUSTED) the gateway retried: the load was more than the stages take at once.
    busy = Path(system.state["processes"]["gateway"]["log"]).read_text(errors="replace").count("RESOURCE_EXHAUSTED")
    figures = {
        "jobs": JOBS, "song_seconds": round(truth.duration, 2), "clips": sum(len(r.job.clips) for r in runs),
        "wall_seconds": round(span, 1), "jobs_per_minute": round(JOBS / span * 60, 2),
        "latency_seconds": {"median": round(statistics.median(latencies), 1), "max": round(latencies[-1], 1)},
        "gateway_cpu_seconds_per_job": round(gateway_cpu / JOBS, 3),
        "store_requests_per_job": {"total": round(sum(requests.values()) / JOBS, 2),
                                   "by_operation": {operation: round(count / JOBS, 2)
                                                    for operation, count in sorted(requests.items()) if count}},
        "gateway_stage_gap_seconds_per_job": {"median": round(statistics.median(gaps), 3), "max": round(max(gaps), 3)},
        "busy_answers_retried": busy, "peak_rss_mib": peaks, "cpus": os.cpu_count(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"load-{JOBS}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"load, {JOBS} jobs at once: {json.dumps(figures, indent=2)}")

    assert figures["gateway_cpu_seconds_per_job"] < MAX_GATEWAY_CPU_SECONDS_PER_JOB, figures
    assert figures["store_requests_per_job"]["total"] > 0, figures  # the gateway's store counts its requests
    assert peaks["gateway"] < MAX_GATEWAY_PEAK_MIB, peaks
    assert max(peaks.values()) < MAX_SERVICE_PEAK_MIB, peaks
