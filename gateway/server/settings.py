"""The gateway's settings, from its environment."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from services.common import envs
from services.common.errors import InvalidInputError
from services.common.settings import StoreSettings
from gateway.server.auth import load_token_digests
from gateway.server.options import BackendChoices

log = logging.getLogger(__name__)

MIB = 1 << 20
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
PORT = 50050  # the gateway's MVGEN_PORT when unset (each service has its own)
# BackendChoices' fields, in order, from these variables (MVGEN_ANALYZERS, ...).
BACKEND_KINDS = ("ANALYZERS", "WRITERS", "GENERATORS", "STORYTELLERS", "TRANSCRIBERS")


@dataclass(frozen=True)
class GatewaySettings:
    store: StoreSettings
    token_digests: tuple[str, ...]  # MVGEN_GATEWAY_TOKENS_SHA256 / MVGEN_GATEWAY_TOKENS_FILE
    # Each field's variable and default are in services/common/envs.py.
    host: str = envs.default("MVGEN_HOST")
    port: int = PORT  # MVGEN_PORT (0: any free port)
    metrics_port: int = envs.default("MVGEN_METRICS_PORT")  # (0: any free port)
    max_upload_bytes: int = envs.default("MVGEN_MAX_UPLOAD_BYTES")
    max_song_seconds: float = envs.default("MVGEN_MAX_SONG_SECONDS")
    presign_seconds: int = envs.default("MVGEN_PRESIGN_SECONDS")  # how long upload and download URLs work
    max_active_jobs: int = envs.default("MVGEN_MAX_ACTIVE_JOBS")  # jobs run at once; more wait, QUEUED
    grace_seconds: float = envs.default("MVGEN_GRACE_SECONDS")  # on SIGTERM, how long calls in progress may finish
    # MVGEN_ANALYZERS, MVGEN_WRITERS, MVGEN_GENERATORS, MVGEN_STORYTELLERS, MVGEN_TRANSCRIBERS: what the
    # stage services serve; first = default. No storytellers: the LALM pipeline is refused. No
    # transcribers: no lyrics, unless a job brings its own.
    backends: BackendChoices = BackendChoices(*(envs.default(f"MVGEN_{kind}") for kind in BACKEND_KINDS))
    stages: str = envs.default("MVGEN_STAGES")  # "grpc" (the stage services) or "inprocess" (development)
    # MVGEN_TLS_CERT_FILE, MVGEN_TLS_KEY_FILE: the server's certificate chain and key (PEM); both or neither
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # MVGEN_CLIENT_MAX_JOBS: jobs one client may have queued or running (0: no limit)
    max_jobs_per_client: int = envs.default("MVGEN_CLIENT_MAX_JOBS")
    # MVGEN_CLIENT_UPLOAD_BYTES_PER_HOUR: what one client may upload in an hour (0: no limit)
    upload_bytes_per_hour: int = envs.default("MVGEN_CLIENT_UPLOAD_BYTES_PER_HOUR")
    # MVGEN_SHARED_CACHE: one output cache for all clients (a client then learns, from its job's
    # "cached" stages, that another processed the same song with the same settings); off: one per client
    shared_cache: bool = envs.default("MVGEN_SHARED_CACHE")

    def __post_init__(self) -> None:
        if not 1 <= self.presign_seconds <= MAX_PRESIGN_SECONDS:
            raise InvalidInputError(f"MVGEN_PRESIGN_SECONDS must be between 1 and {MAX_PRESIGN_SECONDS} (7 days, "
                                    f"the most S3 signs for), not {self.presign_seconds}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewaySettings:
        def get(name: str, **default: Any) -> Any:
            return envs.get(name, environ, **default)

        return cls(
            store=StoreSettings.from_env(environ),
            token_digests=load_token_digests(envs.raw("MVGEN_GATEWAY_TOKENS_SHA256", environ),
                                             get("MVGEN_GATEWAY_TOKENS_FILE")),
            host=get("MVGEN_HOST"),
            port=get("MVGEN_PORT", default=PORT),
            metrics_port=get("MVGEN_METRICS_PORT"),
            max_upload_bytes=get("MVGEN_MAX_UPLOAD_BYTES"),
            max_song_seconds=get("MVGEN_MAX_SONG_SECONDS"),
            presign_seconds=get("MVGEN_PRESIGN_SECONDS"),
            max_active_jobs=get("MVGEN_MAX_ACTIVE_JOBS"),
            grace_seconds=get("MVGEN_GRACE_SECONDS"),
            backends=BackendChoices(*(get(f"MVGEN_{kind}") for kind in BACKEND_KINDS)),
            stages=get("MVGEN_STAGES"),
            tls_cert_file=get("MVGEN_TLS_CERT_FILE"),
            tls_key_file=get("MVGEN_TLS_KEY_FILE"),
            max_jobs_per_client=get("MVGEN_CLIENT_MAX_JOBS"),
            upload_bytes_per_hour=get("MVGEN_CLIENT_UPLOAD_BYTES_PER_HOUR"),
            shared_cache=get("MVGEN_SHARED_CACHE"),
        )

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials from the certificate and key files, or None for plain text."""
        if not (self.tls_cert_file or self.tls_key_file):
            return None
        if not (self.tls_cert_file and self.tls_key_file):
            raise InvalidInputError("TLS needs both MVGEN_TLS_CERT_FILE and MVGEN_TLS_KEY_FILE")
        pem = {}
        for name, path in (("MVGEN_TLS_CERT_FILE", self.tls_cert_file), ("MVGEN_TLS_KEY_FILE", self.tls_key_file)):
            try:
                pem[name] = Path(path).read_bytes()
            except OSError as exc:
                raise InvalidInputError(f"{name}: cannot read {path}: {exc.strerror}") from None
        return grpc.ssl_server_credentials([(pem["MVGEN_TLS_KEY_FILE"], pem["MVGEN_TLS_CERT_FILE"])])
