"""The S3 artifact store against a real S3-compatible server (moto's server mode stands in for MinIO)."""

from __future__ import annotations

import http.server
import socket
import threading
import urllib.request
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from services.common.errors import InvalidInputError, StageFailedError, TransientError
from services.common.s3_store import S3ArtifactStore
from services.common.settings import StoreSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_for(endpoint: str) -> StoreSettings:
    return StoreSettings(kind="s3", root="", endpoint=endpoint, bucket="mvgen-test", access_key="test-access",
                         secret_key="test-secret", region="us-east-1", secure=False)


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def store(s3_endpoint):
    store = S3ArtifactStore(settings_for(s3_endpoint))
    store.ensure_bucket()
    return store


def test_bytes_files_listing_and_copies(store, tmp_path):
    store.put_bytes("jobs/a/segments.json", b'{"x": 1}')
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 70_000)
    store.put_file("jobs/a/clips/0000.mp4", tmp_path / "clip.mp4")
    with store.writing("jobs/a/final.mp4") as out:
        out.write_bytes(b"final")
    store.copy("jobs/a/clips/0000.mp4", "jobs/b/clips/0000.mp4")

    assert store.get_bytes("jobs/a/segments.json") == b'{"x": 1}'
    assert store.exists("jobs/a/final.mp4") and not store.exists("jobs/a/labels.json")
    assert store.list("jobs/a/") == ["jobs/a/clips/0000.mp4", "jobs/a/final.mp4", "jobs/a/segments.json"]
    with store.local_path("jobs/b/clips/0000.mp4") as path:
        assert Path(path).read_bytes() == b"\x00" * 70_000
    with pytest.raises(KeyError):
        store.get_bytes("jobs/a/missing.json")


def test_a_failed_write_stores_nothing(store):
    with pytest.raises(RuntimeError), store.writing("jobs/c/final.mp4") as out:
        out.write_bytes(b"half a video")
        raise RuntimeError("the encoder died")
    assert not store.exists("jobs/c/final.mp4")


def test_presigned_urls_work_over_plain_http(store):
    put_url = store.presigned_put("songs/uploads/x", expires=timedelta(minutes=5))
    request = urllib.request.Request(put_url, data=b"song bytes", method="PUT",
                                     headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    get_url = store.presigned_get("songs/uploads/x", expires=timedelta(minutes=5))
    with urllib.request.urlopen(get_url, timeout=10) as response:
        assert response.read() == b"song bytes"


def test_every_request_sent_is_counted_by_operation(store, tmp_path):
    """What the gateway reports as mvgen_store_requests_total: each HTTP request, as the SDK sends
    them (a download and a copy stat the object first); presigning sends none."""
    before = store.request_counts()
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 1000)
    store.put_bytes("jobs/n/a.json", b"{}")  # put
    store.put_file("jobs/n/clip.mp4", tmp_path / "clip.mp4")  # put
    assert store.get_bytes("jobs/n/a.json") == b"{}"  # get
    assert store.exists("jobs/n/a.json")  # head
    store.copy("jobs/n/a.json", "jobs/n/b.json")  # head, copy
    assert store.list("jobs/n/") == ["jobs/n/a.json", "jobs/n/b.json", "jobs/n/clip.mp4"]  # list
    with store.local_path("jobs/n/b.json"):  # head, get
        pass
    store.presigned_get("jobs/n/a.json", expires=timedelta(minutes=5))  # none
    after = store.request_counts()
    assert {operation: after[operation] - before[operation] for operation in after} == {
        "put": 2, "get": 2, "head": 3, "copy": 1, "list": 1, "delete": 0}


def test_keys_that_escape_are_refused(store):
    for key in ("../etc/passwd", "/abs", "a/../../b", ""):
        with pytest.raises(InvalidInputError):
            store.put_bytes(key, b"x")


def test_an_unreachable_store_is_retried_then_reported_as_transient():
    store = S3ArtifactStore(settings_for(f"127.0.0.1:{free_port()}"), retry_delays=(0.05, 0.1))
    with pytest.raises(TransientError, match="unreachable after 3 tries"):
        store.get_bytes("jobs/a/manifest.json")


def test_a_server_error_without_s3_xml_is_retried_when_it_is_a_5xx_and_refused_otherwise():
    """A proxy or an overloaded server answers with an HTML page, not S3's XML (moto does under
    load), or a HEAD's 5xx with no body at all: a 5xx is retried like any server error, a 4xx page fails at once."""
    status = {"code": 500}
    seen = []

    class ErrorPage(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            seen.append(self.path)
            body = b"<!doctype html><title>Internal Server Error</title>"
            self.send_response(status["code"])
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self):  # noqa: N802 — a HEAD's error has no body, so no S3 error to read either
            seen.append(self.path)
            self.send_response(status["code"])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ErrorPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store = S3ArtifactStore(settings_for(f"127.0.0.1:{server.server_address[1]}"), retry_delays=(0.05, 0.1))
    try:
        with pytest.raises(TransientError, match="kept failing after 3 tries .*HTTP 500 with a non-S3 error page"):
            store.get_bytes("jobs/a/manifest.json")
        assert len(seen) == 3
        with pytest.raises(TransientError, match="kept failing after 3 tries .*HTTP 500 without an S3 error"):
            store.exists("jobs/a/manifest.json")
        assert len(seen) == 6
        status["code"] = 403
        with pytest.raises(StageFailedError, match="answered 403"):
            store.get_bytes("jobs/a/manifest.json")
        assert len(seen) == 7
        assert store.request_counts()["get"] == 4  # every try is a request
    finally:
        server.shutdown()
        server.server_close()


def test_presigned_urls_name_the_public_endpoint(s3_endpoint):
    settings = replace(settings_for(s3_endpoint), public_endpoint="https://media.example.org")
    url = S3ArtifactStore(settings).presigned_get("jobs/a/final.mp4", expires=timedelta(minutes=5))
    assert url.startswith("https://media.example.org/mvgen-test/jobs/a/final.mp4?")
