"""The real server (uvicorn, in its own process) under hostile clients: malformed multipart, a body that
stops half way, a slow client, 100 uploads at once, paths outside the app. It answers each and keeps
serving, and its memory after the burst returns near where it started."""

from __future__ import annotations

import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from captioner.serve.background import running_server

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path):
    with running_server(tiny_checkpoint, "--max_upload_mb", "1") as running:
        yield running.url, running.port, running.process


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 160, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def raw(port: int, request: bytes, pause: float = 0.0, close_early: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        if pause:
            for byte in request:
                connection.sendall(bytes([byte]))
                time.sleep(pause)
        else:
            connection.sendall(request)
        if close_early:
            return b""
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def healthy(url: str) -> bool:
    return httpx.get(f"{url}/api/health", timeout=10).status_code == 200


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_malformed_multipart_is_400(server) -> None:
    url, _, _ = server
    response = httpx.post(f"{url}/api/caption", content=b"--zz\r\nnonsense\r\n\r\n",
                          headers={"content-type": "multipart/form-data; boundary=zz"})
    assert response.status_code in (400, 422) and "error" in response.json()
    response = httpx.post(f"{url}/api/caption", content=b"just text", headers={"content-type": "text/plain"})
    assert response.status_code in (400, 422)
    assert healthy(url)


def test_a_body_that_stops_half_way_and_a_slow_client(server) -> None:
    url, port, _ = server
    head = (b"POST /api/caption HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n")
    raw(port, head + png()[:200], close_early=True)  # the client goes away mid-upload
    assert healthy(url)
    body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"
            + png() + b"\r\n--b--\r\n")
    slow_request = (b"POST /api/caption?strategy=greedy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: " + str(len(body)).encode()
                    + b"\r\n\r\n" + body)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(raw, port, slow_request, 0.002)  # a few seconds, one byte at a time
        time.sleep(0.3)
        started = time.monotonic()
        assert healthy(url)  # others are served meanwhile
        assert time.monotonic() - started < 5
        answer = slow.result(timeout=120)
    assert answer.startswith(b"HTTP/1.1 200") and b'"captions"' in answer


def test_paths_outside_the_app(server) -> None:
    url, port, _ = server
    for path in (b"/../../etc/passwd", b"/static/../../../../etc/passwd", b"/static/%2e%2e/%2e%2e/etc/passwd",
                 b"/api/review/image/0"):
        answer = raw(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.split(b"\r\n", 1)[0].split()[1] in (b"400", b"404"), (path, answer[:80])
        assert b"root:" not in answer
    assert healthy(url)


def test_a_hundred_uploads_at_once_and_memory_returns(server) -> None:
    url, _, process = server
    data = png()

    def upload(number: int) -> int:
        with httpx.Client(timeout=120) as client:
            return client.post(f"{url}/api/caption", files={"file": (f"{number}.png", data, "image/png")},
                               data={"beam_size": "2"}).status_code

    with ThreadPoolExecutor(100) as pool:  # warm-up burst: allocator pools and caches reach their size
        assert set(pool.map(upload, range(100))) == {200}
    time.sleep(1)
    before = rss_kb(process.pid)
    with ThreadPoolExecutor(100) as pool:
        codes = list(pool.map(upload, range(100)))
    assert codes.count(200) == 100
    time.sleep(1)
    after = rss_kb(process.pid)
    assert after < before * 1.25 + 50_000, (before, after)  # no growth burst after burst
    assert healthy(url)
