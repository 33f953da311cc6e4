"""The whole mvgen system on loopback, without Docker: `make dev-up` and `make dev-down`.

moto's S3 server stands in for MinIO (no MinIO binary or image can be installed on these machines,
and moto speaks the S3 API the `minio` SDK uses); the five stage services and the gateway run as
subprocesses with the environment docker-compose.yml gives their containers (MVGEN_STORE=s3,
pointed at moto), every one listening on 127.0.0.1 only. `up` returns once each answers gRPC
health SERVING and leaves them running in the background; `down` stops them (SIGTERM, then SIGKILL
after a grace period). Under the base folder (default `.dev-stack/`): `state.json` (ports, pids,
the S3 settings, the generated dev token and stage secret; readable by its owner only) and one log
per process in `logs/`.

    python -m tools.dev_stack up [--free-ports] [--video-replicas N]
    python -m tools.dev_stack status
    python -m tools.dev_stack down

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
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASE_DIR = REPO / ".dev-stack"
STATE_VERSION = 1
HOST = "127.0.0.1"  # loopback only: nothing of the dev stack is reachable from another machine

# name -> (module run with `python -m`, default port, gRPC service its health and reflection name)
STAGES: dict[str, tuple[str, int, str]] = {
    "segmentation": ("services.segmentation.server", 50051, "mvgen.v1.SegmentationService"),
    "analysis": ("services.analysis.server", 50052, "mvgen.v1.AnalysisService"),
    "scripting": ("services.scripting.server", 50053, "mvgen.v1.ScriptingService"),
    "video": ("services.video.server", 50054, "mvgen.v1.VideoService"),
    "assembly": ("services.assembly.server", 50055, "mvgen.v1.AssemblyService"),
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


def free_ports(count: int) -> list[int]:
    """Ports the kernel has just handed out; all sockets are held until the last one is bound, so
    the ports differ from one another. (Another process could still take one before we bind it:
    the usual, accepted race.)"""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), to tell our process from a later one given the
    same pid; None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22, counted after the command name, which is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[1].split()[19]


def _is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie has exited, it only awaits reaping)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_ours(entry: Mapping[str, Any]) -> bool:
    """Whether the process recorded in a state entry is still that process, not a pid reused since."""
    pid = entry["pid"]
    if not _is_running(pid):
        return False
    started = _proc_start_time(pid)
    if started is not None and entry.get("start_time") is not None:
        return started == entry["start_time"]
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        cmdline = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True,
                                 text=True, check=False).stdout
    return entry["module"] in cmdline


def log_tail(path: str | Path, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


def check_health(address: str, service: str = "", timeout: float = 2.0) -> str:
    """The grpc.health.v1 status name of `service` at `address` (e.g. "SERVING"); raises
    grpc.RpcError when nothing answers."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


class DevStack:
    """moto, the five stage services and the gateway, as local processes.

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
        self.state: dict[str, Any] | None = None
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
        tmp = self.state_path.with_suffix(".tmp")
        # The state holds the dev token and the S3 keys: owner-only from the first byte.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.state, f, indent=2)
            f.write("\n")
        os.replace(tmp, self.state_path)

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
        # five services): each process gets exactly what compose would give its container.
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
        argv = [self.python, "-m", module, *args]
        env = self._env(name, port) if env is None else env
        with open(log_path, "ab" if append_log else "wb") as log:
            # A session of its own: ^C in the terminal that ran `make dev-up` does not reach it, and
            # `down` can end the whole process group (ffmpeg children included) if it must.
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self._popen[name] = proc
        self._spawned[name] = (argv, env)
        self.state["processes"][name] = {
            "pid": proc.pid, "start_time": _proc_start_time(proc.pid), "module": module, "port": port,
            "address": f"{HOST}:{port}" if port else None, "log": str(log_path), **extra}
        self._write_state()

    def _wait_s3(self, deadline: float) -> None:
        from services.common.s3_store import S3ArtifactStore
        from services.common.settings import StoreSettings

        entry = self.state["processes"]["s3"]
        while True:
            if self._popen["s3"].poll() is not None:
                raise DevStackError(f"moto (S3) exited at start; its log:\n{log_tail(entry['log'])}")
            try:
                with socket.create_connection((HOST, entry["port"]), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise DevStackError(f"moto (S3) did not listen on {entry['address']}:\n{log_tail(entry['log'])}")
                time.sleep(0.1)
        s3 = self.state["s3"]
        # The bucket is made through the store the services use, so a client mismatch shows here.
        S3ArtifactStore(StoreSettings(kind="s3", root="", endpoint=s3["endpoint"], bucket=s3["bucket"],
                                      access_key=s3["access_key"], secret_key=s3["secret_key"],
                                      region=s3["region"], secure=False)).ensure_bucket()

    def _wait_serving(self, names: Iterable[str], deadline: float, timeout: float | None = None) -> None:
        import grpc

        pending = list(names)
        while pending:
            for name in list(pending):
                entry = self.state["processes"][name]
                if self._popen[name].poll() is not None:
                    raise DevStackError(f"{name} exited (code {self._popen[name].returncode}) before it was "
                                        f"ready; the end of {entry['log']}:\n{log_tail(entry['log'])}")
                try:
                    if check_health(entry["address"], timeout=1.0) == "SERVING":
                        pending.remove(name)
                except grpc.RpcError:
                    pass  # not listening yet
            if pending and time.monotonic() > deadline:
                logs = "\n".join(f"  {n}: {self.state['processes'][n]['log']}\n{log_tail(self.state['processes'][n]['log'], 10)}"
                                 for n in pending)
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
        token = secrets.token_urlsafe(32)
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
            self._kill_group(entry["pid"])
        self._reap(name)

    def restart(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        """Start `name` again after `kill(name)` (or a crash): the same module and arguments on the same
        port with the same environment (the one it was started with by this object; otherwise made
        again from the state), its log appended to. Returns its new state entry once it answers health
        SERVING (moto: once it listens and the bucket exists again; moto keeps objects in memory, so
        a restarted moto is empty). DevStackError if it is still running or does not come back."""
        entry = self._entry(name)
        if self._alive(name, entry):
            raise DevStackError(f"{name} (pid {entry['pid']}) is still running: kill or stop it first")
        self._reap(name)
        argv, env = self._spawned.get(name, (None, None))
        if argv is None:
            args = ["-H", HOST, "-p", str(entry["port"])] if name == "s3" else []
        else:
            args = argv[3:]  # after python -m <module>
        extra = {k: v for k, v in entry.items() if k not in ("pid", "start_time", "module", "port", "address", "log")}
        self._spawn(name, entry["module"], args, entry["port"], env=env, append_log=True, **extra)
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if name == "s3":
            self._wait_s3(deadline)
        else:
            self._wait_serving([name], deadline, timeout)
        return self.state["processes"][name]

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
        del self.state["processes"][name]
        self._write_state()
        return outcome

    # ------------------------------------------------------------------ stop

    def stop(self, grace_seconds: float | None = None) -> dict[str, str]:
        """Stop every recorded process: SIGTERM (the services drain in-flight calls within
        MVGEN_GRACE_SECONDS), then SIGKILL to the process group of any still running after the
        grace period. The gateway goes first, moto last, so draining calls can still reach the
        store. Returns how each ended ("exited", "killed", "gone"); removes the state file."""
        state = self.state or self.load_state()
        if not state:
            return {}
        grace = self.grace_seconds + 5.0 if grace_seconds is None else grace_seconds
        procs = state["processes"]
        gateways = [n for n in procs if n.startswith("gateway")]
        services = [n for n in procs if n not in gateways and n != "s3"]
        outcome: dict[str, str] = {}
        for group in (gateways, services, [n for n in procs if n == "s3"]):
            outcome.update(self._stop_group({name: procs[name] for name in group}, grace))
        self.state_path.unlink(missing_ok=True)
        self.state = None
        return outcome

    def _stop_group(self, entries: Mapping[str, Mapping[str, Any]], grace: float) -> dict[str, str]:
        """SIGTERM each process, then SIGKILL those still running after `grace` seconds."""
        outcome: dict[str, str] = {}
        live = {}
        for name, entry in entries.items():
            if self._alive(name, entry):
                live[name] = entry
                try:
                    os.kill(entry["pid"], signal.SIGTERM)
                except ProcessLookupError:
                    pass
            else:
                outcome[name] = "gone"
        deadline = time.monotonic() + grace
        while live and time.monotonic() < deadline:
            for name in [n for n, e in live.items() if not self._alive(n, e)]:
                outcome[name] = "exited"
                del live[name]
            time.sleep(0.05)
        for name, entry in live.items():
            self._kill_group(entry["pid"])
            outcome[name] = "killed"
        for name in entries:
            self._reap(name)
        return outcome

    def _alive(self, name: str, entry: Mapping[str, Any]) -> bool:
        proc = self._popen.get(name)
        if proc is not None and proc.pid == entry["pid"]:
            return proc.poll() is None  # our child: poll() also reaps it
        return _is_ours(entry)

    def _kill_group(self, pid: int) -> None:
        try:
            if os.getpgid(pid) == pid:  # started with its own session, so its group is its own
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        end = time.monotonic() + 5.0
        while _is_running(pid) and time.monotonic() < end:
            time.sleep(0.05)

    def _reap(self, name: str) -> None:
        proc = self._popen.pop(name, None)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


# ---------------------------------------------------------------------- CLI

def _describe(state: Mapping[str, Any], python_hint: str = ".venv/bin") -> str:
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
    lines += ["", "Submit a song:",
              f"  MVGEN_TOKEN={gw['token']} {python_hint}/mvgen submit song.wav --server {gw['server']}"]
    lines += ["", "Stop: make dev-down"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dev_stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-dir", default=str(DEFAULT_BASE_DIR), help="state and logs (default: .dev-stack)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start everything and wait until it is SERVING")
    up.add_argument("--free-ports", action="store_true", help="pick unused ports instead of 9000 and 50050-50055")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness (default 180)")
    up.add_argument("--video-replicas", type=int, default=1, metavar="N",
                    help="video services to run; the gateway spreads clips over them (default 1)")
    down = sub.add_parser("down", help="stop everything (SIGTERM, then SIGKILL after the grace period)")
    down.add_argument("--grace", type=float, default=None, help="seconds before SIGKILL (default 10)")
    sub.add_parser("status", help="what is running")
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            stack = DevStack(args.base_dir, free_ports=args.free_ports, startup_timeout=args.timeout,
                             video_replicas=args.video_replicas)
            print(_describe(stack.start()))
            return 0
        stack = DevStack(args.base_dir)
        if args.command == "status":
            state = stack.load_state()
            alive = stack.running()
            if not state:
                print("no dev stack recorded in", stack.base_dir)
                return 1
            for name, entry in state["processes"].items():
                print(f"{name:<14} pid {entry['pid']:<8} {'running' if name in alive else 'NOT running'}")
            return 0 if len(alive) == len(state["processes"]) else 1
        if not stack.load_state():
            print("no dev stack recorded in", stack.base_dir, "- nothing to stop")
            return 0
        for name, how in stack.stop(args.grace).items():
            print(f"{name:<14} {how}")
        return 0
    except DevStackError as exc:
        print(f"dev_stack: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
