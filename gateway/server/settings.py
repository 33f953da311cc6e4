"""The gateway's settings, from its environment."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.errors import InvalidInputError
from services.common.settings import StoreSettings, env_bool, env_float, env_int, env_list, env_str
from gateway.server.auth import load_token_digests
from gateway.server.options import BackendChoices


log = logging.getLogger(__name__)

MIB = 1 << 20
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class GatewaySettings:
    store: StoreSettings
    token_digests: tuple[str, ...]  # MVGEN_GATEWAY_TOKENS_SHA256 / MVGEN_GATEWAY_TOKENS_FILE
    host: str = "0.0.0.0"  # MVGEN_HOST
    port: int = 50050  # MVGEN_PORT (0: any free port)
    metrics_port: int = 9090  # MVGEN_METRICS_PORT (0: any free port)
    max_upload_bytes: int = 200 * MIB  # MVGEN_MAX_UPLOAD_BYTES
    max_song_seconds: float = 900.0  # MVGEN_MAX_SONG_SECONDS
    presign_seconds: int = 900  # MVGEN_PRESIGN_SECONDS: how long upload and download URLs work
    max_active_jobs: int = 4  # MVGEN_MAX_ACTIVE_JOBS: jobs run at once; more wait, QUEUED
    grace_seconds: float = 30.0  # MVGEN_GRACE_SECONDS: on SIGTERM, how long calls in progress may finish
    # MVGEN_ANALYZERS, MVGEN_WRITERS, MVGEN_GENERATORS, MVGEN_STORYTELLERS, MVGEN_TRANSCRIBERS: what the
    # stage services serve; first = default. No storytellers: the LALM pipeline is refused. No
    # transcribers: no lyrics, unless a job brings its own.
    backends: BackendChoices = BackendChoices(("descriptors",), ("template",), ("animatic",))
    stages: str = "grpc"  # MVGEN_STAGES: "grpc" (the stage services) or "inprocess" (development)
    # MVGEN_TLS_CERT_FILE, MVGEN_TLS_KEY_FILE: the server's certificate chain and key (PEM); both or neither
    tls_cert_file: str = ""
    tls_key_file: str = ""
    max_jobs_per_client: int = 8  # MVGEN_CLIENT_MAX_JOBS: jobs one client may have queued or running (0: no limit)
    # MVGEN_CLIENT_UPLOAD_BYTES_PER_HOUR: what one client may upload in an hour (0: no limit)
    upload_bytes_per_hour: int = 2048 * MIB
    # MVGEN_SHARED_CACHE: one output cache for all clients (a client then learns, from its job's
    # "cached" stages, that another processed the same song with the same settings); off: one per client
    shared_cache: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.presign_seconds <= MAX_PRESIGN_SECONDS:
            raise InvalidInputError(f"MVGEN_PRESIGN_SECONDS must be between 1 and {MAX_PRESIGN_SECONDS} (7 days, "
                                    f"the most S3 signs for), not {self.presign_seconds}")

    @classmethod
    def from_env(cls) -> GatewaySettings:
        defaults = cls(StoreSettings.from_env(), ())
        return cls(
            store=defaults.store,
            token_digests=load_token_digests(os.environ.get("MVGEN_GATEWAY_TOKENS_SHA256", ""),
                                             os.environ.get("MVGEN_GATEWAY_TOKENS_FILE", "").strip()),
            host=env_str("MVGEN_HOST", defaults.host),
            port=env_int("MVGEN_PORT", defaults.port),
            metrics_port=env_int("MVGEN_METRICS_PORT", defaults.metrics_port),
            max_upload_bytes=env_int("MVGEN_MAX_UPLOAD_BYTES", defaults.max_upload_bytes),
            max_song_seconds=env_float("MVGEN_MAX_SONG_SECONDS", defaults.max_song_seconds),
            presign_seconds=env_int("MVGEN_PRESIGN_SECONDS", defaults.presign_seconds),
            max_active_jobs=env_int("MVGEN_MAX_ACTIVE_JOBS", defaults.max_active_jobs),
            grace_seconds=env_float("MVGEN_GRACE_SECONDS", defaults.grace_seconds),
            backends=BackendChoices(env_list("MVGEN_ANALYZERS", defaults.backends.analyzers),
                                    env_list("MVGEN_WRITERS", defaults.backends.writers),
                                    env_list("MVGEN_GENERATORS", defaults.backends.generators),
                                    env_list("MVGEN_STORYTELLERS", defaults.backends.storytellers),
                                    env_list("MVGEN_TRANSCRIBERS", defaults.backends.transcribers)),
            stages=env_str("MVGEN_STAGES", defaults.stages),
            tls_cert_file=env_str("MVGEN_TLS_CERT_FILE", ""),
            tls_key_file=env_str("MVGEN_TLS_KEY_FILE", ""),
            max_jobs_per_client=env_int("MVGEN_CLIENT_MAX_JOBS", defaults.max_jobs_per_client),
            upload_bytes_per_hour=env_int("MVGEN_CLIENT_UPLOAD_BYTES_PER_HOUR", defaults.upload_bytes_per_hour),
            shared_cache=env_bool("MVGEN_SHARED_CACHE", defaults.shared_cache),
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
