"""Stage servers as real subprocesses on free loopback ports, for tests that want real sockets.

    servers = [stage_server("video", log_dir, local_store_env(root)), ...]
    with serving(*servers):   # started together, each waited for until health says SERVING
        ...                   # server.address, server.kill(), server.start(), server.wait_serving()

Every server requires STAGE_SECRET (services/common/transport/auth.py), as deployed ones do; a test
calls one directly through `stage_channel(address)`, which sends it.

Processes are started, watched and stopped by tools/processes.py, as the dev stack's are
(tools/dev_stack.py); a test's servers stay in the test run's process group, so they end with it.
"""

from __future__ import annotations

import collections
import os
import secrets
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.s3_store import S3ArtifactStore
from services.common.settings import StoreSettings
from tools import processes
from tools.processes import FAST_RECONNECT, free_port

__all__ = ["FAST_RECONNECT", "REPO_ROOT", "STAGE_SECRET", "StageServer", "dev_stack_store", "free_port",
           "local_store_env", "serving", "stage_channel", "stage_server"]

REPO_ROOT = processes.REPO
STAGE_SECRET = secrets.token_urlsafe(32)  # the secret every stage server of this test run requires


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                           "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


class _SendStageSecret(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                       grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, secret: str):
        self.metadatum = ("authorization", f"Bearer {secret}")

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(details.method, details.timeout, [*(details.metadata or ()), self.metadatum],
                            details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


def stage_channel(address: str, secret: str = STAGE_SECRET) -> grpc.Channel:
    """A channel to a stage server that sends `secret` with every call, as the gateway does."""
    return grpc.intercept_channel(grpc.insecure_channel(address), _SendStageSecret(secret))


def dev_stack_store(state: Mapping) -> S3ArtifactStore:
    """The S3 store of a running dev stack (tools/dev_stack.py), as the tests read it directly."""
    s3 = state["s3"]
    return S3ArtifactStore(StoreSettings(kind="s3", root="", endpoint=s3["endpoint"], bucket=s3["bucket"],
                                         access_key=s3["access_key"], secret_key=s3["secret_key"],
                                         region=s3["region"], secure=False))


def local_store_env(root: str | Path) -> dict[str, str]:
    """The environment of a server whose store is the folder `root` (the tests' stand-in for S3)."""
    return {"MVGEN_STORE": "local", "MVGEN_STORE_ROOT": str(root)}


@dataclass(eq=False)
class StageServer:
    """`python -m services.<stage>.server` on 127.0.0.1:<port>, its output in `log_path`."""

    stage: str
    port: int
    env: dict[str, str]  # added to this process's environment: the store, MVGEN_BACKENDS, ...
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> StageServer:
        """Spawn the server (again, after a kill: same port, same log); return at once."""
        env = {**os.environ, "MVGEN_HOST": "127.0.0.1", "MVGEN_PORT": str(self.port),
               "MVGEN_GRACE_SECONDS": "2", "MVGEN_STAGE_SECRET": STAGE_SECRET, **self.env}
        self.process = processes.spawn(processes.module_argv(f"services.{self.stage}.server"), env, self.log_path,
                                       own_session=False)
        return self

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise RuntimeError(f"the {self.stage} server on {self.address} is not running "
                                   f"(exit code {self.process and self.process.returncode}):\n{self.log_tail()}")
            if processes.is_serving(self.address, timeout=1.0):  # False while it does not listen yet
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {self.stage} server on {self.address} did not serve within "
                                   f"{timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: the replica dies mid-work, as on a lost node or an out-of-memory kill."""
        if self.process is not None and self.running:
            processes.kill_group(self.process.pid)
            self.process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (NOT_SERVING, drain, exit), then SIGKILL if it takes longer than `timeout`."""
        stop_servers([self], timeout)

    def close(self) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        return processes.log_tail(self.log_path, lines, indent="")


def stage_server(stage: str, log_dir: str | Path, env: Mapping[str, str], port: int | None = None) -> StageServer:
    """A server for `stage`, not started yet; on a free port unless one is given."""
    port = port or free_port()
    return StageServer(stage, port, dict(env), Path(log_dir) / f"{stage}-{port}.log")


@contextmanager
def serving(*servers: StageServer, timeout: float = 90.0) -> Iterator[tuple[StageServer, ...]]:
    """Start the servers together (they load in parallel), wait until each serves, stop them all at exit."""
    try:
        for server in servers:
            if not server.running:
                server.start()
        for server in servers:
            server.wait_serving(timeout)
        yield servers
    finally:
        stop_servers(servers)


def stop_servers(servers: Sequence[StageServer], grace: float = 10.0) -> None:
    """SIGTERM them all at once, SIGKILL any still running after `grace` seconds, and reap them."""
    started = {str(index): (server, server.process) for index, server in enumerate(servers) if server.process}
    processes.stop_all({key: process.pid for key, (_, process) in started.items()}, grace,
                       alive=lambda key: started[key][0].running)
    for _, process in started.values():
        process.wait()
