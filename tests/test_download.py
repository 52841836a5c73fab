"""Downloads from a local HTTP server (127.0.0.1) and file:// URLs: resume, verification, errors."""

import hashlib
import http.server
import threading
import time
from collections import namedtuple
from typing import ClassVar

import pytest

from cocoseg.data import download as download_module
from cocoseg.data.download import DownloadError, download

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /data.bin with Range support; can cut transfers short or stall."""

    cut_first = 0  # requests to cut short after half the bytes
    stall = 0.0
    requests: ClassVar[list] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        cls = type(self)
        cls.requests.append(self.headers.get("Range"))
        if self.path != "/data.bin":
            self.send_error(404, "Not Found")
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            if start >= len(PAYLOAD):  # nothing at or after that byte (RFC 9110, 15.5.17)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cls.stall:
            time.sleep(cls.stall)
        if cls.cut_first > 0:
            cls.cut_first -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    Handler.cut_first, Handler.stall, Handler.requests = 0, 0.0, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    Handler.cut_first = 1
    dest = download(f"{server}/data.bin", tmp_path / "data.bin", backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert Handler.requests == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert not (tmp_path / "data.bin.part").exists()


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:1000])
    download(f"{server}/data.bin", tmp_path / "data.bin", backoff=0)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    assert Handler.requests == ["bytes=1000-"]


def test_a_complete_partial_file_answered_416_is_kept(server, tmp_path):
    """An earlier run got every byte and stopped before the rename: the server has nothing more to send."""
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    download(f"{server}/data.bin", tmp_path / "data.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), backoff=0)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    assert Handler.requests == [f"bytes={len(PAYLOAD)}-"]


def test_a_partial_file_longer_than_the_servers_is_restarted(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD + b"stale tail")
    download(f"{server}/data.bin", tmp_path / "data.bin", backoff=0)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    assert Handler.requests == [f"bytes={len(PAYLOAD) + 10}-", None]


def test_a_complete_partial_file_with_the_wrong_sha256_is_deleted(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[::-1])
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download(f"{server}/data.bin", tmp_path / "data.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), backoff=0)
    assert not (tmp_path / "data.bin.part").exists() and not (tmp_path / "data.bin").exists()


def test_sha256_is_checked(server, tmp_path):
    good = hashlib.sha256(PAYLOAD).hexdigest()
    download(f"{server}/data.bin", tmp_path / "ok.bin", sha256=good)
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download(f"{server}/data.bin", tmp_path / "bad.bin", sha256="0" * 64)
    assert not (tmp_path / "bad.bin").exists()
    assert not (tmp_path / "bad.bin.part").exists()


def test_404_fails_at_once_with_the_url(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404 .*/missing.zip: check the URL"):
        download(f"{server}/missing.zip", tmp_path / "missing.zip", backoff=0)
    assert Handler.requests == [None]
    assert not (tmp_path / "missing.zip").exists()


def test_never_a_partial_file_under_the_final_name(server, tmp_path):
    Handler.cut_first = 10
    with pytest.raises(DownloadError, match="giving up .* after 3 attempts.*Rerun to resume"):
        download(f"{server}/data.bin", tmp_path / "data.bin", retries=2, backoff=0)
    assert not (tmp_path / "data.bin").exists()
    assert 0 < (tmp_path / "data.bin.part").stat().st_size < len(PAYLOAD)
    Handler.cut_first = 0
    download(f"{server}/data.bin", tmp_path / "data.bin", backoff=0)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_timeouts_are_retried_then_reported(server, tmp_path):
    Handler.stall = 1.0
    with pytest.raises(DownloadError, match="giving up"):
        download(f"{server}/data.bin", tmp_path / "slow.bin", retries=1, backoff=0, timeout=0.2)
    assert len(Handler.requests) == 2
    assert not (tmp_path / "slow.bin").exists()


def test_full_disk_is_reported_before_downloading(server, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(download_module.shutil, "disk_usage", lambda _: usage(10, 10, 1000))
    with pytest.raises(DownloadError, match="not enough disk space"):
        download(f"{server}/data.bin", tmp_path / "data.bin", backoff=0)
    assert not (tmp_path / "data.bin").exists()


def test_file_urls_use_the_same_path(tmp_path):
    source = tmp_path / "source.zip"
    source.write_bytes(PAYLOAD)
    (tmp_path / "copy.zip.part").write_bytes(b"stale")  # file:// ignores Range: restart cleanly
    download(source.as_uri(), tmp_path / "copy.zip")
    assert (tmp_path / "copy.zip").read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="does not exist"):
        download((tmp_path / "absent.zip").as_uri(), tmp_path / "absent.zip")
