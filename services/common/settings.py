"""Typed settings read from environment variables: one object per service, nothing hard-wired.
Every variable is declared in envs.py (type, default, stage) and read through it.

Every endpoint, bucket, credential and backend choice comes from here, so the same image runs
under docker-compose, Kubernetes or `make dev-up` with different environments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common import envs

# prompts/ holds what a person edits without touching code; images and pods mount it at MVGEN_PROMPTS_DIR.
PROMPTS_DIR = Path(envs.get("MVGEN_PROMPTS_DIR", default=str(Path(__file__).resolve().parents[2] / "prompts")))


@dataclass(frozen=True)
class StoreSettings:
    kind: str  # MVGEN_STORE: "local" (a folder) or "s3" (MinIO or any S3 endpoint)
    root: str  # MVGEN_STORE_ROOT: the folder of the local store
    endpoint: str  # MVGEN_S3_ENDPOINT: host:port, or a URL whose scheme says whether TLS is used
    bucket: str  # MVGEN_S3_BUCKET
    access_key: str  # MVGEN_S3_ACCESS_KEY (from the environment or a mounted secret only)
    secret_key: str  # MVGEN_S3_SECRET_KEY (a secret)
    region: str  # MVGEN_S3_REGION
    secure: bool  # MVGEN_S3_SECURE: TLS to the endpoint when no scheme is given
    public_endpoint: str = ""  # MVGEN_S3_PUBLIC_ENDPOINT: the store as clients reach it, for presigned URLs
    # MVGEN_S3_RETRY_SECONDS: how long one operation retries an unreachable store
    retry_seconds: float = envs.default("MVGEN_S3_RETRY_SECONDS")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StoreSettings:
        def get(name: str) -> Any:
            return envs.get(name, environ)

        endpoint = get("MVGEN_S3_ENDPOINT")
        return cls(
            kind=get("MVGEN_STORE"),
            root=get("MVGEN_STORE_ROOT"),
            endpoint=endpoint,
            public_endpoint=envs.get("MVGEN_S3_PUBLIC_ENDPOINT", environ, default=endpoint),
            bucket=get("MVGEN_S3_BUCKET"),
            access_key=get("MVGEN_S3_ACCESS_KEY"),
            secret_key=get("MVGEN_S3_SECRET_KEY"),
            region=get("MVGEN_S3_REGION"),
            secure=get("MVGEN_S3_SECURE"),
            retry_seconds=get("MVGEN_S3_RETRY_SECONDS"),
        )


@dataclass(frozen=True)
class ServiceSettings:
    """What every stage service reads at start."""

    host: str  # MVGEN_HOST
    port: int  # MVGEN_PORT
    backends: tuple[str, ...]  # MVGEN_BACKENDS: comma-separated backends to load, e.g. "descriptors,clap"
    max_concurrent: int  # MVGEN_MAX_CONCURRENT: calls served at once; more are answered RESOURCE_EXHAUSTED
    grace_seconds: float  # MVGEN_GRACE_SECONDS: on SIGTERM, how long in-flight calls may finish
    store: StoreSettings

    @classmethod
    def from_env(cls, *, default_port: int, default_backends: tuple[str, ...],
                 default_max_concurrent: int = 4, environ: Mapping[str, str] | None = None) -> ServiceSettings:
        return cls(
            host=envs.get("MVGEN_HOST", environ),
            port=envs.get("MVGEN_PORT", environ, default=default_port),
            backends=envs.get("MVGEN_BACKENDS", environ, default=default_backends),
            max_concurrent=envs.get("MVGEN_MAX_CONCURRENT", environ, default=default_max_concurrent),
            grace_seconds=envs.get("MVGEN_GRACE_SECONDS", environ),
            store=StoreSettings.from_env(environ),
        )
