"""Service processes on loopback: started, watched until gRPC health says SERVING, stopped.

The one supervisor under the dev stack and the tests. tools/dev_stack.py (`make dev-up`: moto, the
six stage services and the gateway, recorded in state.json so that a later `make dev-down` can stop
them) and tests/servers.py (a stage server or a gateway on a free port, started and stopped by a test)
both start, watch and stop their processes with what is here:

- `spawn`: `python -m <module>` (`module_argv`) from the repository, its output appended to a log file;
  in a session of its own where it must outlive the command that started it (the dev stack: ^C in
  the terminal that ran `make dev-up` does not reach it), else in the caller's process group (a test's
  servers die with the test run, whatever ends it);
- `is_serving` / `check_health`: the grpc.health.v1 status of what listens at an address;
- `stop_all`: SIGTERM (the services drain in-flight calls within MVGEN_GRACE_SECONDS), then SIGKILL to
  the process group of any still running after a grace period; `kill_group`: SIGKILL at once, as a
  crashed pod, ffmpeg children included;
- ports (`free_ports`, `port_in_use`), pids recorded by another process (`is_running`,
  `proc_start_time`), and the end of a log for error messages (`log_tail`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only: nothing started here is reachable from another machine
# Poll a starting server often: gRPC's default reconnect backoff would add seconds to every start.
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                  ("grpc.max_reconnect_backoff_ms", 200)]


# ---------------------------------------------------------------------- ports

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


def free_port() -> int:
    return free_ports(1)[0]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


# ---------------------------------------------------------------------- processes

def module_argv(module: str, *args: str, python: str | None = None) -> list[str]:
    """`python -m module args...` with this interpreter (the venv's) unless `python` is given."""
    return [python or sys.executable, "-m", module, *args]


def spawn(argv: Sequence[str], env: Mapping[str, str], log_path: str | Path, *, append: bool = True,
          own_session: bool = True, cwd: str | Path = REPO) -> subprocess.Popen[bytes]:
    """Start `argv` with exactly `env`, stdin closed, stdout and stderr into `log_path` (appended to,
    or truncated when not `append`); return at once. `own_session`: a session and process group of
    its own, which outlives the caller's terminal and which `kill_group` ends whole."""
    with open(log_path, "ab" if append else "wb") as log:
        return subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=own_session)


def signal_name(returncode: int) -> str:
    """'SIGSEGV' for a process that a signal ended (a negative return code), else 'code N'."""
    try:
        return signal.Signals(-returncode).name if returncode < 0 else f"code {returncode}"
    except ValueError:
        return f"signal {-returncode}"


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), to tell our process from a later one given the
    same pid; None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22, counted after the command name, which is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[1].split()[19]


def is_running(pid: int) -> bool:
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


def kill_group(pid: int, wait: float = 5.0) -> None:
    """SIGKILL `pid`, and its whole process group where it leads one (started in a session of its own:
    ffmpeg children die with it); return once it is gone or after `wait` seconds."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    end = time.monotonic() + wait
    while is_running(pid) and time.monotonic() < end:
        time.sleep(0.05)


def stop_all(pids: Mapping[str, int], grace: float, alive: Callable[[str], bool]) -> dict[str, str]:
    """SIGTERM each process (by name), then `kill_group` those still running after `grace` seconds.
    `alive(name)` says whether one still runs (for a child, Popen.poll() is None: that also reaps it).
    Returns how each ended: "exited", "killed", or "gone" (not running when asked to stop)."""
    outcome: dict[str, str] = {}
    live = {}
    for name, pid in pids.items():
        if alive(name):
            live[name] = pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        else:
            outcome[name] = "gone"
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        for name in [n for n in live if not alive(n)]:
            outcome[name] = "exited"
            del live[name]
        time.sleep(0.05)
    for name, pid in live.items():
        kill_group(pid)
        outcome[name] = "killed"
    return outcome


# ---------------------------------------------------------------------- health

def check_health(address: str, service: str = "", timeout: float = 2.0) -> str:
    """The grpc.health.v1 status name of `service` at `address` (e.g. "SERVING"); raises
    grpc.RpcError when nothing answers."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address, options=FAST_RECONNECT) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def is_serving(address: str, timeout: float = 1.0) -> bool:
    """Whether the server at `address` answers health SERVING (False while nothing listens yet)."""
    import grpc

    try:
        return check_health(address, timeout=timeout) == "SERVING"
    except grpc.RpcError:
        return False


def log_tail(path: str | Path, lines: int = 25, indent: str = "    ") -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(indent + line for line in text[-lines:])
