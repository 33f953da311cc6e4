"""Typed settings read from environment variables: one object per service, nothing hard-wired.

Every endpoint, bucket, credential and backend choice comes from here, so the same image runs
under docker-compose, Kubernetes or `make dev-up` with different environments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidInputError

# prompts/ holds what a person edits without touching code; images and pods mount it at MVGEN_PROMPTS_DIR.
PROMPTS_DIR = Path(os.environ.get("MVGEN_PROMPTS_DIR") or Path(__file__).resolve().parents[2] / "prompts")


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default).strip() or default


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise InvalidInputError(f"{name} must be an integer, not {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise InvalidInputError(f"{name} must be a number, not {raw!r}") from None


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise InvalidInputError(f"{name} must be true or false, not {raw!r}")


def env_list(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(name, "")
    items = tuple(x.strip() for x in raw.split(",") if x.strip())
    return items or default


@dataclass(frozen=True)
class StoreSettings:
    kind: str  # MVGEN_STORE: "local" (a folder) or "s3" (MinIO or any S3 endpoint)
    root: str  # MVGEN_STORE_ROOT: the folder of the local store
    endpoint: str  # MVGEN_S3_ENDPOINT: host:port, or a URL whose scheme says whether TLS is used
    bucket: str  # MVGEN_S3_BUCKET
    access_key: str  # MVGEN_S3_ACCESS_KEY (a secret: from the environment or a mounted secret only)
    secret_key: str  # MVGEN_S3_SECRET_KEY
    region: str  # MVGEN_S3_REGION
    secure: bool  # MVGEN_S3_SECURE: TLS to the endpoint when no scheme is given
    public_endpoint: str = ""  # MVGEN_S3_PUBLIC_ENDPOINT: the store as clients reach it, for presigned URLs
    retry_seconds: float = 60.0  # MVGEN_S3_RETRY_SECONDS: how long one operation retries an unreachable store

    @classmethod
    def from_env(cls) -> StoreSettings:
        return cls(
            kind=env_str("MVGEN_STORE", "local"),
            root=env_str("MVGEN_STORE_ROOT", "./mvgen-store"),
            endpoint=env_str("MVGEN_S3_ENDPOINT", "localhost:9000"),
            public_endpoint=env_str("MVGEN_S3_PUBLIC_ENDPOINT", env_str("MVGEN_S3_ENDPOINT", "localhost:9000")),
            bucket=env_str("MVGEN_S3_BUCKET", "mvgen"),
            access_key=os.environ.get("MVGEN_S3_ACCESS_KEY", ""),
            secret_key=os.environ.get("MVGEN_S3_SECRET_KEY", ""),
            region=env_str("MVGEN_S3_REGION", "us-east-1"),
            secure=env_bool("MVGEN_S3_SECURE", False),
            retry_seconds=env_float("MVGEN_S3_RETRY_SECONDS", 60.0),
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
                 default_max_concurrent: int = 4) -> ServiceSettings:
        return cls(
            host=env_str("MVGEN_HOST", "0.0.0.0"),
            port=env_int("MVGEN_PORT", default_port),
            backends=env_list("MVGEN_BACKENDS", default_backends),
            max_concurrent=env_int("MVGEN_MAX_CONCURRENT", default_max_concurrent),
            grace_seconds=env_float("MVGEN_GRACE_SECONDS", 30.0),
            store=StoreSettings.from_env(),
        )
