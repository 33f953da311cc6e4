"""The whole mvgen system on loopback, without Docker: `make dev-up` and `make dev-down`.

moto's S3 server stands in for MinIO (no MinIO binary or image can be installed on these machines,
and moto speaks the S3 API the `minio` SDK uses); the six stage services and the gateway run as
subprocesses with the environment docker-compose.yml gives their containers (MVGEN_STORE=s3,
pointed at moto), every one listening on 127.0.0.1 only. `up` returns once each answers gRPC
health SERVING and leaves them running in the background; `down` stops them (SIGTERM, then SIGKILL
after a grace period; tools/processes.py starts, watches and stops them, as it does the tests' stage
servers, tests/servers.py). Under the base folder (default `.dev-stack/`): `state.json` (ports, pids,
the S3 settings, the generated dev token and stage secret; readable by its owner only) and one log
per process in `logs/`.

moto keeps objects in memory only, so `down` copies the bucket into `store/` before it stops moto
(with the dev token, in `kept.json`), and the next `up` puts them back: jobs, songs and videos
outlive a dev-down/up, and the same token still owns them. `down --discard` drops them instead.

A service that dies of a signal while it loads (a crash in native code) is started once more before
`up` gives up; each one that compiles librosa's kernels has a numba cache of its own
(services/common/numba_cache.py), so services starting together never corrupt one another's.

    python -m tools.dev_stack up [--free-ports] [--video-replicas N]
    python -m tools.dev_stack status
    python -m tools.dev_stack restart PROCESS     # e.g. gateway, video, s3: stopped, started again
    python -m tools.dev_stack down [--discard]

Importable, so that tests run the real system:

    stack = DevStack(tmp_path / "stack", free_ports=True)
    state = stack.start()          # a dict: the content of state.json
    ...
    stack.kill("video")            # SIGKILL, as a crashed pod (fault tests)
    stack.restart("video")         # the same module, port and environment; back once SERVING
    stack.spawn_gateway("gateway-b", {"MVGEN_VIDEO_ADDR": ...})   # another gateway, other settings
    stack.remove("gateway-b")      # SIGTERM (drain), then SIGKILL after the grace period
    ...
    stack.stop()

`video_replicas=N` (`--video-replicas N`) runs N video services, "video", "video-2", ...; the
gateway's MVGEN_VIDEO_ADDR lists them all, so it spreads clips over them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common.errors import MvgenError
from services.scripting.llm.local import DEFAULT_GGUF
from tools.processes import (
    HOST,
    REPO,
    free_ports,
    is_serving,
    kill_group,
    log_tail,
    module_argv,
    port_in_use,
    proc_start_time,
    signal_name,
    spawn,
    stop_all,
)
from tools.processes import is_running as _is_running

if TYPE_CHECKING:
    from services.common.s3_store import S3ArtifactStore

DEFAULT_BASE_DIR = REPO / ".dev-stack"
STATE_VERSION = 1

# name -> (module run with `python -m`, default port, gRPC service its health and reflection name)
STAGES: dict[str, tuple[str, int, str]] = {
    "segmentation": ("services.segmentation.server", 50051, "mvgen.v1.SegmentationService"),
    "analysis": ("services.analysis.server", 50052, "mvgen.v1.AnalysisService"),
    "scripting": ("services.scripting.server", 50053, "mvgen.v1.ScriptingService"),
    "video": ("services.video.server", 50054, "mvgen.v1.VideoService"),
    "assembly": ("services.assembly.server", 50055, "mvgen.v1.AssemblyService"),
    "review": ("services.review.server", 50056, "mvgen.v1.ReviewService"),
}
GATEWAY = ("gateway.server", 50050, "mvgen.v1.MusicVideoService")
MOTO_MODULE = "moto.server"
# Default ports: the compose ports for the services, MinIO's 9000 for the S3 stand-in.
DEFAULT_PORTS = {"s3": 9000, **{name: spec[1] for name, spec in STAGES.items()},
                 "gateway": GATEWAY[1], "metrics": 9090}
VIDEO_REPLICA_PORT_STEP = 100  # video-2 listens on 50154, video-3 on 50254, ... by default


def video_names(replicas: int) -> list[str]:
    return ["video", *(f"video-{k}" for k in range(2, replicas + 1))]


def default_port(name: str) -> int:
    if name.startswith("video-"):
        return STAGES["video"][1] + VIDEO_REPLICA_PORT_STEP * (int(name.removeprefix("video-")) - 1)
    return DEFAULT_PORTS[name]


class DevStackError(RuntimeError):
    """Something a person can act on: a port in use, a service that did not come up (with its log)."""


@dataclass(frozen=True)
class KeptStore:
    """What `stop(keep_store=True)` copied out of moto, or what `start()` put back."""

    objects: int
    bytes: int
    path: Path

    def describe(self) -> str:
        return f"{self.objects} objects ({self.bytes / 2**20:.1f} MiB)"


def _is_ours(entry: Mapping[str, Any]) -> bool:
    """Whether the process recorded in a state entry is still that process, not a pid reused since."""
    pid = entry["pid"]
    if not _is_running(pid):
        return False
    started = proc_start_time(pid)
    if started is not None and entry.get("start_time") is not None:
        return started == entry["start_time"]
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        cmdline = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True,
                                 text=True, check=False).stdout
    return entry["module"] in cmdline


class DevStack:
    """moto, the six stage services and the gateway, as local processes.

    `ports` overrides single ports by name ("s3", the stage names, "gateway", "metrics");
    `free_ports=True` picks unused ones for all the others, so that tests never collide with a
    running stack. `env` adds variables per process name, or for all under "*" (e.g.
    {"video": {"MVGEN_MAX_CONCURRENT": "2"}}). `grace_seconds` becomes every service's
    MVGEN_GRACE_SECONDS; `stop()` waits that plus 5 s before SIGKILL. For fault tests, `kill(name)`
    crashes one process (SIGKILL to its group) and `restart(name)` brings it back as it was."""

    def __init__(self, base_dir: str | Path = DEFAULT_BASE_DIR, *, ports: Mapping[str, int] | None = None,
                 free_ports: bool = False, bucket: str = "mvgen",
                 grace_seconds: float = 5.0, startup_timeout: float = 180.0,
                 env: Mapping[str, Mapping[str, str]] | None = None, python: str | None = None,
                 video_replicas: int = 1):
        if video_replicas < 1:
            raise DevStackError("video_replicas must be at least 1")
        self.base_dir = Path(base_dir).resolve()
        self.state_path = self.base_dir / "state.json"
        self.log_dir = self.base_dir / "logs"
        self.requested_ports = dict(ports or {})
        self.free_ports = free_ports
        self.bucket = bucket
        self.grace_seconds = grace_seconds
        self.startup_timeout = startup_timeout
        self.extra_env = {name: dict(values) for name, values in (env or {}).items()}
        self.python = python or sys.executable
        self.videos = video_names(video_replicas)
        self.kept_dir = self.base_dir / "store"  # the bucket's objects, as the last dev-down kept them
        self.kept_path = self.base_dir / "kept.json"  # what was kept, and the dev token that owns it
        self.state: dict[str, Any] | None = None
        self.restored: KeptStore | None = None  # what start() put back into moto
        self.kept: KeptStore | None = None  # what stop(keep_store=True) copied out of moto
        self.crashed_at_start: dict[str, str] = {}  # name -> the signal that ended its first start
        self.keep_failure: str | None = None  # why stop(keep_store=True) could not copy the objects
        self._popen: dict[str, subprocess.Popen] = {}  # only the processes this object started
        self._spawned: dict[str, tuple[list[str], dict[str, str]]] = {}  # name -> (argv, environment)

    # ------------------------------------------------------------------ state

    def load_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None

    def _write_state(self) -> None:
        assert self.state is not None
        _write_private_json(self.state_path, self.state)

    def running(self) -> dict[str, dict[str, Any]]:
        """The processes of the recorded stack that are still alive, by name."""
        state = self.state or self.load_state()
        if not state:
            return {}
        return {name: entry for name, entry in state["processes"].items() if _is_ours(entry)}

    # ------------------------------------------------------------------ start

    def _choose_ports(self) -> dict[str, int]:
        names = ["s3", *STAGES, *self.videos[1:], "gateway", "metrics"]
        ports = {name: self.requested_ports[name] for name in names if name in self.requested_ports}
        missing = [name for name in names if name not in ports]
        if self.free_ports:
            ports.update(zip(missing, free_ports(len(missing))))
        else:
            ports.update({name: default_port(name) for name in missing})
        busy = [f"{name} {port}" for name, port in ports.items() if port_in_use(port)]
        if busy:
            raise DevStackError(f"port in use on {HOST}: {', '.join(busy)}; stop what holds it, or start "
                                f"with free ports (python -m tools.dev_stack up --free-ports)")
        return ports

    def _env(self, name: str, port: int | None) -> dict[str, str]:
        assert self.state is not None
        # Nothing MVGEN_* leaks in from the caller's shell (a stray MVGEN_BACKENDS would reach all
        # six services): each process gets exactly what compose would give its container.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MVGEN_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
        env["PYTHONUNBUFFERED"] = "1"
        if name != "s3":
            s3 = self.state["s3"]
            env.update({
                "MVGEN_HOST": HOST,
                "MVGEN_PORT": str(port),
                "MVGEN_GRACE_SECONDS": f"{self.grace_seconds:g}",
                "MVGEN_STORE": "s3",
                "MVGEN_S3_ENDPOINT": s3["endpoint"],
                "MVGEN_S3_BUCKET": s3["bucket"],
                "MVGEN_S3_ACCESS_KEY": s3["access_key"],
                "MVGEN_S3_SECRET_KEY": s3["secret_key"],
                "MVGEN_S3_REGION": s3["region"],
                "MVGEN_S3_SECURE": "false",
                "MVGEN_PROMPTS_DIR": str(REPO / "prompts"),
            })
            # Stages and gateways alike: the stages serve only callers that hold it (transport/auth.py).
            env["MVGEN_STAGE_SECRET"] = self.state["stage_secret"]
        if name == "gateway":
            env.update(self._gateway_env())
        env.update(self.extra_env.get("*", {}))
        if name.startswith("video-"):  # every video replica is configured as "video" is
            env.update(self.extra_env.get("video", {}))
        env.update(self.extra_env.get(name, {}))
        return env

    def _gateway_env(self) -> dict[str, str]:
        """What the gateway reads beyond the common variables: the stage addresses, the digest of
        the dev token (never the token itself) and its metrics port."""
        assert self.state is not None
        procs = self.state["processes"]
        token = self.state["gateway"]["token"]
        videos = [procs[name]["address"] for name in procs if name == "video" or name.startswith("video-")]
        return {
            "MVGEN_STAGES": "grpc",
            **{f"MVGEN_{name.upper()}_ADDR": procs[name]["address"] for name in STAGES},
            "MVGEN_VIDEO_ADDR": ",".join(videos),
            "MVGEN_GATEWAY_TOKENS_SHA256": hashlib.sha256(token.encode()).hexdigest(),
            "MVGEN_METRICS_PORT": str(self.state["gateway"]["metrics_port"]),
        }

    def _spawn(self, name: str, module: str, args: list[str], port: int | None, *,
               env: dict[str, str] | None = None, append_log: bool = False, **extra: Any) -> None:
        assert self.state is not None
        log_path = self.log_dir / f"{name}.log"
        argv = module_argv(module, *args, python=self.python)
        env = self._env(name, port) if env is None else env
        # A session of its own: ^C in the terminal that ran `make dev-up` does not reach it, and
        # `down` can end the whole process group (ffmpeg children included) if it must.
        proc = spawn(argv, env, log_path, append=append_log, own_session=True)
        self._popen[name] = proc
        self._spawned[name] = (argv, env)
        self.state["processes"][name] = {
            "pid": proc.pid, "start_time": proc_start_time(proc.pid), "module": module, "port": port,
            "address": f"{HOST}:{port}" if port else None, "log": str(log_path), **extra}
        self._write_state()

    def _wait_s3(self, deadline: float) -> None:
        assert self.state is not None
        entry = self.state["processes"]["s3"]
        while True:
            if self._popen["s3"].poll() is not None:
                raise DevStackError(f"moto (S3) exited at start; its log:\n{log_tail(entry['log'])}")
            try:
                with socket.create_connection((HOST, entry["port"]), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise DevStackError(f"moto (S3) did not listen on {entry['address']}:\n"
                                        f"{log_tail(entry['log'])}") from None
                time.sleep(0.1)
        # The bucket is made through the store the services use, so a client mismatch shows here.
        self.store().ensure_bucket()

    def store(self, retry_seconds: float = 10.0) -> S3ArtifactStore:
        """moto's bucket through the store the services use; `retry_seconds`: how long an operation
        retries while moto does not answer."""
        from services.common.s3_store import S3ArtifactStore
        from services.common.settings import StoreSettings

        assert self.state is not None
        s3 = self.state["s3"]
        return S3ArtifactStore(StoreSettings(kind="s3", root="", endpoint=s3["endpoint"], bucket=s3["bucket"],
                                             access_key=s3["access_key"], secret_key=s3["secret_key"],
                                             region=s3["region"], secure=False, retry_seconds=retry_seconds))

    def _wait_serving(self, names: Iterable[str], deadline: float, timeout: float | None = None) -> None:
        assert self.state is not None
        pending = list(names)
        while pending:
            for name in list(pending):
                entry = self.state["processes"][name]
                code = self._popen[name].poll()
                if code is not None and code < 0 and name not in self.crashed_at_start:
                    # Died of a signal while loading (a crash in native code): once more, with what it
                    # left behind cleared (a numba cache it was filling is emptied by its next lessee).
                    self.crashed_at_start[name] = signal_name(code)
                    with open(entry["log"], "a") as log:
                        log.write(f"dev_stack: {name} died of {signal_name(code)} while loading; starting it again\n")
                    self._spawn_again(name)
                    continue
                if code is not None:
                    again = " again" if name in self.crashed_at_start else ""
                    raise DevStackError(f"{name} exited{again} ({signal_name(code)}) before it was ready; the end "
                                        f"of {entry['log']}:\n{log_tail(entry['log'])}")
                if is_serving(entry["address"], timeout=1.0):  # False while it does not listen yet
                    pending.remove(name)
            if pending and time.monotonic() > deadline:
                logs = "\n".join(f"  {n}: {self.state['processes'][n]['log']}\n"
                                 f"{log_tail(self.state['processes'][n]['log'], 10)}" for n in pending)
                waited = self.startup_timeout if timeout is None else timeout
                raise DevStackError(f"not SERVING after {waited:.0f} s: {', '.join(pending)}\n{logs}")
            if pending:
                time.sleep(0.25)

    def start(self) -> dict[str, Any]:
        """Start everything and wait until it is ready; returns the state (also in state.json).
        On any failure, what was started is stopped again before the error is raised."""
        alive = self.running()
        if alive:
            raise DevStackError(f"a dev stack is already running from {self.base_dir} "
                                f"(pids {', '.join(str(e['pid']) for e in alive.values())}); stop it first "
                                f"(make dev-down)")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Runtime state never belongs in git (it holds a token), whatever the repo's .gitignore says.
        (self.base_dir / ".gitignore").write_text("*\n")
        ports = self._choose_ports()
        kept = self.read_kept()
        # The token that owned the kept jobs owns them again; without a kept store, a new one.
        token = kept.get("token") or secrets.token_urlsafe(32)
        self.state = {
            "version": STATE_VERSION,
            "base_dir": str(self.base_dir),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            # moto accepts any keys; random ones all the same, so none is ever written into the repo.
            "s3": {"endpoint": f"http://{HOST}:{ports['s3']}", "bucket": self.bucket,
                   "access_key": "dev" + secrets.token_hex(8), "secret_key": secrets.token_urlsafe(24),
                   "region": "us-east-1"},
            "gateway": {"address": f"{HOST}:{ports['gateway']}", "server": f"localhost:{ports['gateway']}",
                        "metrics_port": ports["metrics"], "token": token},
            "stage_secret": secrets.token_urlsafe(32),
            "processes": {},
        }
        deadline = time.monotonic() + self.startup_timeout
        try:
            self._spawn("s3", MOTO_MODULE, ["-H", HOST, "-p", str(ports["s3"])], ports["s3"], service=None)
            self._wait_s3(deadline)
            self.restored = self._restore_store()  # before the gateway starts: it resumes the jobs it finds
            for name, (module, _, service) in STAGES.items():
                self._spawn(name, module, [], ports[name], service=service)
            module, _, service = STAGES["video"]
            for name in self.videos[1:]:
                self._spawn(name, module, [], ports[name], service=service)
            self._wait_serving([*STAGES, *self.videos[1:]], deadline)
            self._spawn("gateway", GATEWAY[0], [], ports["gateway"], service=GATEWAY[2])
            self._wait_serving(["gateway"], deadline)
            self._write_state()
        except BaseException:
            self.stop()
            raise
        return self.state

    # ------------------------------------------------------------------ faults

    def _entry(self, name: str) -> dict[str, Any]:
        if self.state is None:
            self.state = self.load_state()
        if not self.state:
            raise DevStackError(f"no dev stack recorded in {self.base_dir}")
        try:
            return self.state["processes"][name]
        except KeyError:
            raise DevStackError(f"no process {name!r} in the dev stack; there are: "
                                f"{', '.join(self.state['processes'])}") from None

    def kill(self, name: str) -> None:
        """SIGKILL the process group of `name` ("video", "gateway", ...), as a crashed pod: no drain, no
        goodbye; ffmpeg children die with it. Returns once it is gone. Its entry stays in the state,
        so `restart(name)` can bring it back; `stop()` reports it as "gone"."""
        entry = self._entry(name)
        if self._alive(name, entry):
            kill_group(entry["pid"])
        self._reap(name)

    def restart(self, name: str, timeout: float | None = None, *, stop_first: bool = False) -> dict[str, Any]:
        """Start `name` again after `kill(name)` (or a crash): the same module and arguments on the same
        port with the same environment (the one it was started with by this object; otherwise made
        again from the state), its log appended to. Returns its new state entry once it answers health
        SERVING (moto: once it listens and the bucket exists again). DevStackError if it does not come
        back, or if it is still running and not `stop_first`.

        `stop_first` (`python -m tools.dev_stack restart NAME`): a running `name` is stopped first as
        `stop()` stops it (SIGTERM, drain, SIGKILL after the grace period); moto's objects are copied
        out before and put back after, as dev-down and dev-up do. A killed moto comes back empty."""
        entry = self._entry(name)
        keep = False
        if self._alive(name, entry):
            if not stop_first:
                raise DevStackError(f"{name} (pid {entry['pid']}) is still running: kill or stop it first")
            if name == "s3":
                self._keep_store()
                keep = True
            self._stop_group({name: entry}, self.grace_seconds + 5.0)
        self._reap(name)
        self._spawn_again(name)
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if name == "s3":
            self._wait_s3(deadline)
            if keep:
                self.restored = self._restore_store()
        else:
            self._wait_serving([name], deadline, timeout)
        assert self.state is not None
        return self.state["processes"][name]

    def _spawn_again(self, name: str) -> None:
        """`name` as it was last started: by this object, or as the state records it."""
        assert self.state is not None
        entry = self.state["processes"][name]
        argv, env = self._spawned.get(name, (None, None))
        if argv is None:
            args = ["-H", HOST, "-p", str(entry["port"])] if name == "s3" else []
        else:
            args = argv[3:]  # after python -m <module>
        extra = {k: v for k, v in entry.items() if k not in ("pid", "start_time", "module", "port", "address", "log")}
        self._spawn(name, entry["module"], args, entry["port"], env=env, append_log=True, **extra)

    def spawn_gateway(self, name: str, env: Mapping[str, str], timeout: float | None = None) -> dict[str, Any]:
        """Another gateway beside the stack's, on a free port, with the stack gateway's environment
        and `env` over it (e.g. a stage address pointing at a fault injector). Returns its state
        entry once it answers health SERVING. It shares the store: a gateway resumes every unfinished
        job it finds there, so start one while no job runs."""
        if self.state is None:
            raise DevStackError("start the stack first")
        if not name.startswith("gateway-") or name in self.state["processes"]:
            raise DevStackError(f"another gateway needs a new name starting with 'gateway-', not {name!r}")
        port, metrics_port = free_ports(2)
        environment = {**self._env("gateway", port), "MVGEN_METRICS_PORT": str(metrics_port), **env}
        self._spawn(name, GATEWAY[0], [], port, env=environment, service=GATEWAY[2])
        timeout = self.startup_timeout if timeout is None else timeout
        self._wait_serving([name], time.monotonic() + timeout, timeout)
        return self.state["processes"][name]

    def remove(self, name: str) -> str:
        """Stop one process as `stop()` stops all (SIGTERM, SIGKILL after the grace period) and forget it.
        Returns how it ended: "exited", "killed" or "gone"."""
        entry = self._entry(name)
        outcome = self._stop_group({name: entry}, self.grace_seconds + 5.0)[name]
        assert self.state is not None
        del self.state["processes"][name]
        self._write_state()
        return outcome

    # ------------------------------------------------------------------ stop

    def stop(self, grace_seconds: float | None = None, *, keep_store: bool = False) -> dict[str, str]:
        """Stop every recorded process: SIGTERM (the services drain in-flight calls within
        MVGEN_GRACE_SECONDS), then SIGKILL to the process group of any still running after the
        grace period. The gateway goes first, moto last, so draining calls can still reach the
        store. Returns how each ended ("exited", "killed", "gone"); removes the state file.

        `keep_store`: once the gateway and the services are down (their last writes made), moto's
        objects are copied into `store/` and the dev token into `kept.json`, for the next `start()`
        (`self.kept` says what; None if moto was not there to copy from). Without it they are lost."""
        state = self.state = self.state or self.load_state()
        if not state:
            return {}
        grace = self.grace_seconds + 5.0 if grace_seconds is None else grace_seconds
        procs = state["processes"]
        gateways = [n for n in procs if n.startswith("gateway")]
        services = [n for n in procs if n not in gateways and n != "s3"]
        outcome: dict[str, str] = {}
        for group in (gateways, services):
            outcome.update(self._stop_group({name: procs[name] for name in group}, grace))
        if keep_store and "s3" in procs and self._alive("s3", procs["s3"]):
            try:
                self._keep_store()
            except (DevStackError, MvgenError, OSError) as exc:  # moto is stopped all the same
                self.keep_failure = str(exc)
        outcome.update(self._stop_group({name: procs[name] for name in procs if name == "s3"}, grace))
        self.state_path.unlink(missing_ok=True)
        self.state = None
        return outcome

    # ------------------------------------------------------------------ the store across restarts

    def read_kept(self) -> dict[str, Any]:
        try:
            return json.loads(self.kept_path.read_text())
        except FileNotFoundError:
            return {}

    def _keep_store(self) -> None:
        """Copy every object of moto's bucket into `store/` (replacing what was kept before, only once
        the copy is whole) and the dev token into `kept.json`; sets `self.kept`."""
        assert self.state is not None
        store = self.store()
        partial = self.base_dir / "store.partial"
        shutil.rmtree(partial, ignore_errors=True)
        objects = size = 0
        for key in store.list(""):
            target = (partial / key).resolve()
            if not target.is_relative_to(partial.resolve()):  # keys come from the store, which refuses such
                raise DevStackError(f"the bucket holds a key that would escape {partial}: {key!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with store.local_path(key) as path:
                shutil.copyfile(path, target)
            objects += 1
            size += target.stat().st_size
        shutil.rmtree(self.kept_dir, ignore_errors=True)
        partial.mkdir(exist_ok=True)
        partial.rename(self.kept_dir)
        _write_private_json(self.kept_path, {"kept_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "objects": objects,
                                             "bytes": size, "token": self.state["gateway"]["token"]})
        self.kept = KeptStore(objects, size, self.kept_dir)

    def _restore_store(self) -> KeptStore | None:
        """Put what the last `stop(keep_store=True)` kept back into moto's bucket."""
        if not self.kept_dir.is_dir():
            return None
        store = self.store()
        objects = size = 0
        for path in sorted(p for p in self.kept_dir.rglob("*") if p.is_file()):
            store.put_file(path.relative_to(self.kept_dir).as_posix(), path)
            objects += 1
            size += path.stat().st_size
        return KeptStore(objects, size, self.kept_dir)

    def discard_kept_store(self) -> KeptStore | None:
        """Delete what an earlier dev-down kept; returns what it was."""
        kept = self.read_kept()
        if not self.kept_dir.exists() and not kept:
            return None
        shutil.rmtree(self.kept_dir, ignore_errors=True)
        self.kept_path.unlink(missing_ok=True)
        return KeptStore(kept.get("objects", 0), kept.get("bytes", 0), self.kept_dir)

    def _stop_group(self, entries: Mapping[str, Mapping[str, Any]], grace: float) -> dict[str, str]:
        """SIGTERM each process, then SIGKILL those still running after `grace` seconds."""
        outcome = stop_all({name: entry["pid"] for name, entry in entries.items()}, grace,
                           alive=lambda name: self._alive(name, entries[name]))
        for name in entries:
            self._reap(name)
        return outcome

    def _alive(self, name: str, entry: Mapping[str, Any]) -> bool:
        proc = self._popen.get(name)
        if proc is not None and proc.pid == entry["pid"]:
            return proc.poll() is None  # our child: poll() also reaps it
        return _is_ours(entry)

    def _reap(self, name: str) -> None:
        proc = self._popen.pop(name, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def _write_private_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomically, readable by its owner only from the first byte (it holds the dev token)."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------- CLI

def _describe(state: Mapping[str, Any], restored: KeptStore | None = None,
              crashed: Mapping[str, str] | None = None, python_hint: str = ".venv/bin") -> str:
    base = Path(state["base_dir"])
    try:
        shown = base.relative_to(Path.cwd())
    except ValueError:
        shown = base
    lines = [f"mvgen dev stack is up (state: {shown}/state.json, logs: {shown}/logs/)"]
    procs = state["processes"]
    s3 = procs["s3"]
    lines.append(f"  {'s3 (moto)':<14} {state['s3']['endpoint']:<22} pid {s3['pid']:<8} bucket {state['s3']['bucket']}")
    for name in [n for n in procs if n != "s3"]:
        extra = (f"metrics http://{HOST}:{state['gateway']['metrics_port']}/metrics"
                 if name == "gateway" else "")
        lines.append(f"  {name:<14} {procs[name]['address']:<22} pid {procs[name]['pid']:<8} {extra}".rstrip())
    gw = state["gateway"]
    if restored is not None:
        lines += ["", f"The store holds again the {restored.describe()} that dev-down kept in {restored.path}/;",
                  "the dev token is the one that owns them."]
    for name, how in (crashed or {}).items():
        lines += ["", f"{name} died of {how} while loading and was started again (its log says more)."]
    lines += ["", "Submit a song:",
              f"  MVGEN_TOKEN={gw['token']} {python_hint}/mvgen submit song.wav --server {gw['server']}"]
    lines += ["", "Restart one process: .venv/bin/python -m tools.dev_stack restart NAME",
              "Stop: make dev-down (keeps the store's objects for the next dev-up)"]
    return "\n".join(lines)


def backend_env(writer: str) -> dict[str, dict[str, str]]:
    """The services and the gateway serving by default what `mvgen generate` uses: the best analyser installed,
    the lyrics where Whisper is, and `writer`: the local LLM (with the template beside it as a fallback, and
    the cascade storyteller on the same model for the LALM pipeline), or the template alone."""
    from services.analysis.lyrics import whisper_available
    from services.analysis.musicnn.weights import musicnn_available

    if writer == "llamacpp" and not DEFAULT_GGUF.is_file():
        raise DevStackError(f"the local LLM is missing ({DEFAULT_GGUF}): run `make llm-model`, "
                            "or start with --writer template")
    analyzers = "musicnn,descriptors" if musicnn_available() else "descriptors"
    transcribers = "whisper" if whisper_available() else ""
    writers = "llamacpp,template" if writer == "llamacpp" else "template"
    storytellers = "cascade" if writer == "llamacpp" else ""
    return {"analysis": {"MVGEN_BACKENDS": ",".join(filter(None, (analyzers, transcribers)))},
            "scripting": {"MVGEN_BACKENDS": ",".join(filter(None, (writers, storytellers)))},
            "gateway": {"MVGEN_ANALYZERS": analyzers, "MVGEN_TRANSCRIBERS": transcribers, "MVGEN_WRITERS": writers,
                        "MVGEN_STORYTELLERS": storytellers}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dev_stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-dir", default=str(DEFAULT_BASE_DIR), help="state and logs (default: .dev-stack)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start everything and wait until it is SERVING")
    up.add_argument("--free-ports", action="store_true", help="pick unused ports instead of 9000 and 50050-50056")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness (default 180)")
    up.add_argument("--video-replicas", type=int, default=1, metavar="N",
                    help="video services to run; the gateway spreads clips over them (default 1)")
    up.add_argument("--writer", choices=("llamacpp", "template"), default="llamacpp",
                    help="the scripting service's default writer: the local LLM, as `mvgen generate` uses "
                         "(`make llm-model` fetches it; the template is served beside it as a fallback), or the "
                         "template alone (default llamacpp)")
    down = sub.add_parser("down", help="stop everything (SIGTERM, then SIGKILL after the grace period), keeping "
                                       "the store's objects for the next up")
    down.add_argument("--grace", type=float, default=None, help="seconds before SIGKILL (default 10)")
    down.add_argument("--discard", action="store_true",
                      help="drop the store's objects (jobs, songs, videos) instead of keeping them")
    restart = sub.add_parser("restart", help="stop one process (if it runs) and start it again as it was: "
                                             "same port, same settings")
    restart.add_argument("process", help="its name, as `status` lists them: gateway, segmentation, video, s3, ...")
    restart.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness (default 180)")
    sub.add_parser("status", help="what is running")
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            stack = DevStack(args.base_dir, free_ports=args.free_ports, startup_timeout=args.timeout,
                             video_replicas=args.video_replicas, env=backend_env(args.writer))
            state = stack.start()
            print(_describe(state, stack.restored, stack.crashed_at_start))
            return 0
        stack = DevStack(args.base_dir)
        if args.command == "status":
            recorded = stack.load_state()
            alive = stack.running()
            if not recorded:
                print("no dev stack recorded in", stack.base_dir)
                return 1
            for name, entry in recorded["processes"].items():
                print(f"{name:<14} pid {entry['pid']:<8} {'running' if name in alive else 'NOT running'}")
            return 0 if len(alive) == len(recorded["processes"]) else 1
        if args.command == "restart":
            stack.startup_timeout = args.timeout
            entry = stack.restart(args.process, stop_first=True)
            print(f"{args.process:<14} restarted: {entry['address'] or ''} pid {entry['pid']}".rstrip())
            if stack.restored is not None:
                print(f"the store holds again its {stack.restored.describe()}")
            return 0
        if not stack.load_state():
            print("no dev stack recorded in", stack.base_dir, "- nothing to stop")
            return 0
        for name, how in stack.stop(args.grace, keep_store=not args.discard).items():
            print(f"{name:<14} {how}")
        print(_describe_store_after_down(stack, args.discard))
        return 0
    except DevStackError as exc:
        print(f"dev_stack: {exc}", file=sys.stderr)
        return 1


def _describe_store_after_down(stack: DevStack, discarded: bool) -> str:
    """What became of the store's objects, said plainly: moto held them in memory only."""
    if discarded:
        dropped = stack.discard_kept_store()
        earlier = f" (and the {dropped.describe()} kept by an earlier dev-down)" if dropped else ""
        return f"The store's objects are gone: moto held them in memory only{earlier}."
    if stack.kept is not None:
        return (f"Kept the store's {stack.kept.describe()} in {stack.kept.path}/: the next `make dev-up` puts them "
                f"back, with the same dev token. To drop them: python -m tools.dev_stack down --discard")
    kept = stack.read_kept()
    why = (f"copying them out of moto failed ({stack.keep_failure})" if stack.keep_failure
           else "moto (S3) was not running to copy them from")
    earlier = (f" The {kept.get('objects', 0)} objects that dev-down kept at {kept['kept_at']} stay in "
               f"{stack.kept_dir}/ for the next dev-up." if kept else "")
    return f"The store's objects are lost: {why}, and moto held them in memory only.{earlier}"


if __name__ == "__main__":
    sys.exit(main())
