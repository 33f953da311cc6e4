"""Stage servers as real subprocesses on free loopback ports, for tests that want real sockets.

    servers = [stage_server("video", log_dir, local_store_env(root)), ...]
    with serving(*servers):   # started together, each waited for until health says SERVING
        ...                   # server.address, server.kill(), server.start(), server.wait_serving()

Every server requires STAGE_SECRET (services/common/transport/auth.py), as deployed ones do; a test
calls one directly through `stage_channel(address)`, which sends it.
"""

from __future__ import annotations

import collections
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.s3_store import S3ArtifactStore
from services.common.settings import StoreSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGE_SECRET = secrets.token_urlsafe(32)  # the secret every stage server of this test run requires
# Poll a starting server often: gRPC's default reconnect backoff would add seconds to every start.
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                  ("grpc.max_reconnect_backoff_ms", 200)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    _log: IO[bytes] | None = field(default=None, repr=False)

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
        if self._log is None:
            self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", f"services.{self.stage}.server"],
                                        cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address, options=FAST_RECONNECT) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if not self.running:
                    raise RuntimeError(f"the {self.stage} server on {self.address} is not running "
                                       f"(exit code {self.process and self.process.returncode}):\n{self.log_tail()}")
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the {self.stage} server on {self.address} did not serve within "
                                       f"{timeout:.0f} s:\n{self.log_tail()}")
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: the replica dies mid-work, as on a lost node or an out-of-memory kill."""
        if self.running:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (NOT_SERVING, drain, exit), then SIGKILL if it takes longer than `timeout`."""
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def close(self) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


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
        for server in servers:
            if server.running:
                server.process.terminate()
        for server in servers:
            server.close()
