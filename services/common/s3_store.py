"""The S3 implementation of ArtifactStore, through the `minio` SDK: MinIO in compose and
Kubernetes, or any S3-compatible endpoint by configuration.

Transient faults (connection refused, timeouts, 5xx) are retried with jittered exponential backoff
for MVGEN_S3_RETRY_SECONDS, each retry logged, then raised as TransientError so that callers answer
UNAVAILABLE and the job can be retried.

Every HTTP request the store sends is counted by operation (`request_counts`): the gateway reports
them as mvgen_store_requests_total. Presigning is no request and is not counted.
"""

from __future__ import annotations

import io
import logging
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import InvalidResponseError, S3Error, ServerError

from services.common.errors import StageFailedError, TransientError
from services.common.settings import StoreSettings
from services.common.store import ArtifactStore, check_key

log = logging.getLogger(__name__)
T = TypeVar("T")
NOT_FOUND = ("NoSuchKey", "NoSuchObject", "NoSuchBucket")
FIRST_DELAY, MAX_DELAY = 0.2, 5.0  # seconds before the first retry; the backoff doubles up to this


def backoff_delays(budget_seconds: float) -> tuple[float, ...]:
    """Pauses between tries: 0.2, 0.4, 0.8, ... up to 5 s each, adding up to `budget_seconds`."""
    delays: list[float] = []
    while sum(delays) < budget_seconds:
        delays.append(min(MAX_DELAY, FIRST_DELAY * 2 ** len(delays), budget_seconds - sum(delays)))
    return tuple(delays)


# The operations counted; the metric reports each of these even while it is 0.
OPERATIONS = ("get", "put", "copy", "head", "list", "delete")


def request_operation(method: str, url: str, headers: Mapping[str, str] | None = None) -> str:
    """What one HTTP request to the store does: get (an object's bytes), put (an object, a part of
    one, a multipart upload started or completed, a bucket made), copy (server-side), head (stat an
    object or a bucket), list, delete, location (the bucket's region, asked once when unknown)."""
    method = method.upper()
    query = parse_qs(urlparse(url).query, keep_blank_values=True)
    if method == "HEAD":
        return "head"
    if method == "DELETE":
        return "delete"
    if method == "GET":
        if "location" in query:
            return "location"
        if query.keys() & {"list-type", "prefix", "delimiter", "versions", "uploads", "marker"}:
            return "list"
        return "get"
    if method == "PUT":
        return "copy" if headers is not None and "x-amz-copy-source" in headers else "put"
    if method == "POST":  # multipart upload: start and complete
        return "put"
    return method.lower()


class RequestCounts:
    """Requests sent, by operation; incremented from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, operation: str) -> None:
        with self._lock:
            self._counts[operation] = self._counts.get(operation, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class _CountingPool(urllib3.PoolManager):
    """The store's HTTP pool: counts every request as it is sent, retries and failed tries included
    (the SDK makes several for one call: fget_object is a HEAD and a GET, copy_object a HEAD and a
    PUT, a large upload its parts)."""

    def __init__(self, counts: RequestCounts, **kwargs: Any):
        super().__init__(**kwargs)
        self.counts = counts

    def urlopen(self, method: str, url: str, redirect: bool = True,  # type: ignore[override]
                **kw: Any) -> urllib3.BaseHTTPResponse:
        self.counts.add(request_operation(method, url, kw.get("headers")))
        return super().urlopen(method, url, redirect=redirect, **kw)


class S3ArtifactStore(ArtifactStore):
    def __init__(self, settings: StoreSettings, retry_delays: tuple[float, ...] | None = None):
        """`retry_delays`: the pauses between tries; by default from `settings.retry_seconds`."""
        self.bucket = settings.bucket
        self.endpoint = settings.endpoint
        self.retry_delays = backoff_delays(settings.retry_seconds) if retry_delays is None else retry_delays
        # Short timeouts and no urllib3 retries: our own retry loop decides, and a dead store is seen quickly.
        self.requests = RequestCounts()
        http = _CountingPool(self.requests, timeout=urllib3.Timeout(connect=3.0, read=60.0), retries=False,
                             maxsize=16)
        self.client = _client(settings, settings.endpoint, http)
        # A presigned URL's signature covers its host: sign for the address clients use (e.g. a
        # public name), not the in-cluster one. Signing needs no network call.
        self.signer = _client(settings, settings.public_endpoint or settings.endpoint, http)

    def request_counts(self) -> dict[str, int]:
        """Requests sent to the store so far, by operation (see `request_operation`)."""
        return {operation: 0 for operation in OPERATIONS} | self.requests.snapshot()

    def ensure_bucket(self) -> None:
        if not self._retry(lambda: self.client.bucket_exists(self.bucket)):
            self._retry(lambda: self.client.make_bucket(self.bucket))

    def exists(self, key: str) -> bool:
        try:
            self._retry(lambda: self.client.stat_object(self.bucket, check_key(key)))
            return True
        except KeyError:
            return False

    def get_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            response = self.client.get_object(self.bucket, check_key(key))
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._retry(get)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._retry(lambda: self.client.put_object(self.bucket, check_key(key), io.BytesIO(data), len(data)))

    def put_file(self, key: str, path: str | Path) -> None:
        self._retry(lambda: self.client.fput_object(self.bucket, check_key(key), str(path)))

    def copy(self, source: str, target: str) -> None:
        # Server-side: the bytes never leave the store.
        self._retry(lambda: self.client.copy_object(self.bucket, check_key(target),
                                                    CopySource(self.bucket, check_key(source))))

    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="mvgen-s3-") as scratch:
            path = Path(scratch) / Path(key).name
            self._retry(lambda: self.client.fget_object(self.bucket, check_key(key), str(path)))
            yield path

    def list(self, prefix: str) -> list[str]:
        return sorted(self._retry(lambda: [o.object_name for o in self.client.list_objects(
            self.bucket, prefix=prefix, recursive=True)]))

    def presigned_get(self, key: str, expires: timedelta) -> str:
        return self.signer.presigned_get_object(self.bucket, check_key(key), expires=expires)

    def presigned_put(self, key: str, expires: timedelta) -> str:
        return self.signer.presigned_put_object(self.bucket, check_key(key), expires=expires)

    def _retry(self, call: Callable[[], T]) -> T:
        started = time.monotonic()
        for attempt, delay in enumerate((*self.retry_delays, None)):
            try:
                return call()
            except S3Error as exc:
                if exc.code in NOT_FOUND:
                    raise KeyError(exc.object_name or exc.code) from exc
                if not _transient_s3(exc):
                    raise StageFailedError(f"the object store refused: {exc.code}: {exc.message}") from exc
                failing, cause = "kept failing", f"{exc.code}: {exc.message}"
            except InvalidResponseError as exc:
                # A non-XML answer: a proxy's or an overloaded server's error page (moto under load
                # answers 500 with HTML). 5xx is worth another try; anything else is not.
                status = getattr(exc, "_code", 0) or 0
                if status < 500:
                    raise StageFailedError(f"the object store answered {status} with a page that is not S3's") from exc
                failing, cause = "kept failing", f"HTTP {status} with a non-S3 error page"
            except ServerError as exc:
                # A 5xx without an S3 error body (a HEAD has none): moto answered 500 to one of four
                # concurrent uploads of one song. Always a server's trouble: tried again.
                failing, cause = "kept failing", f"HTTP {exc.status_code} without an S3 error"
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                failing, cause = "is unreachable", _reason(exc)
            if delay is None:
                raise TransientError(f"the object store at {self.endpoint} {failing} after {attempt + 1} tries "
                                     f"over {time.monotonic() - started:.1f} s ({cause})") from None
            delay *= random.uniform(0.75, 1.0)  # jitter: many callers do not retry in lockstep
            log.warning("the object store at %s %s (%s); try %d failed, retrying in %.1f s", self.endpoint,
                        failing, cause, attempt + 1, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")


def _client(settings: StoreSettings, endpoint: str, http: urllib3.PoolManager) -> Minio:
    parsed = urlparse(endpoint if "://" in endpoint else f"//{endpoint}")
    secure = parsed.scheme == "https" if parsed.scheme else settings.secure
    return Minio(parsed.netloc, access_key=settings.access_key or None, secret_key=settings.secret_key or None,
                 secure=secure, region=settings.region, http_client=http)


def _reason(exc: Exception) -> str:
    """The root cause of a connection failure in a few words (urllib3 wraps it in URLs and pools)."""
    reason = getattr(exc, "reason", None) or exc
    text = str(getattr(reason, "reason", None) or reason)
    return text.rsplit(": ", 1)[-1][:200] or type(exc).__name__


def _transient_s3(exc: S3Error) -> bool:
    status = getattr(exc.response, "status", 0) if exc.response is not None else 0
    return status >= 500 or exc.code in ("SlowDown", "RequestTimeout", "InternalError")
