"""Download against a real HTTP server on 127.0.0.1 that serves archives built in the test."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from captioner.data.download import Archive, download_archives, extract_zip, fetch
from captioner.errors import CaptionerError


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support, so resuming a download can be tested."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            self.server.range_requests.append(start)
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@dataclass
class Server:
    url: str
    served: Path
    range_starts: list[int]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    served = tmp_path / "served"
    served.mkdir()
    handler = lambda *a, **k: RangeHandler(*a, directory=str(served), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.range_requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", served, httpd.range_requests)
    httpd.shutdown()
    httpd.server_close()


def make_zip(path: Path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_checks_and_extracts(server, tmp_path: Path) -> None:
    url, served = server.url, server.served
    md5 = make_zip(served / "text.zip", {"Flickr8k.token.txt": b"a.jpg#0\tA dog .\n", "Images/a.txt": b"x"})
    target = tmp_path / "data"
    download_archives([Archive(f"{url}/text.zip", md5)], target)
    assert (target / "Flickr8k.token.txt").read_bytes() == b"a.jpg#0\tA dog .\n"
    assert (target / "downloads" / "text.zip").is_file()
    (served / "text.zip").unlink()
    download_archives([Archive(f"{url}/text.zip", md5)], target)  # already there: nothing fetched again


def test_partial_download_resumes(server, tmp_path: Path) -> None:
    url, served = server.url, server.served
    md5 = make_zip(served / "big.zip", {"f.bin": bytes(range(256)) * 400})
    data = (served / "big.zip").read_bytes()
    destination = tmp_path / "downloads" / "big.zip"
    destination.parent.mkdir()
    destination.with_name("big.zip.part").write_bytes(data[:1000])
    fetch(Archive(f"{url}/big.zip", md5), destination)
    assert destination.read_bytes() == data
    assert server.range_starts == [1000]


def test_corrupt_download_is_deleted_with_a_clear_error(server, tmp_path: Path) -> None:
    url, served = server.url, server.served
    make_zip(served / "text.zip", {"a.txt": b"hello"})
    destination = tmp_path / "text.zip"
    with pytest.raises(CaptionerError, match="corrupt"):
        fetch(Archive(f"{url}/text.zip", "0" * 32), destination)
    assert not destination.exists() and not destination.with_name("text.zip.part").exists()


def test_member_escaping_the_target_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    make_zip(archive, {"ok.txt": b"fine", "../escaped.txt": b"evil"})
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(CaptionerError, match="outside"):
        extract_zip(archive, target)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (target / "ok.txt").exists()  # nothing extracted from a refused archive


def test_not_a_zip_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(CaptionerError, match="not a valid zip"):
        extract_zip(tmp_path / "bad.zip", tmp_path)


def test_offline_fails_fast_saying_what_to_put_where(tmp_path: Path) -> None:
    from captioner.cli.command import main

    closed_port = "http://127.0.0.1:9"
    assert main(["data", "download", "flickr8k", "--data_dir", str(tmp_path), "--base_url", closed_port]) == 2


def test_offline_message(tmp_path: Path) -> None:
    from captioner.data.download import download_dataset

    with pytest.raises(CaptionerError, match=r"cannot reach .*Flickr8k_text.zip.*put Flickr8k_text.zip"):
        download_dataset("flickr8k", tmp_path, base_url="http://127.0.0.1:9")
    with pytest.raises(CaptionerError, match="cannot be downloaded automatically"):
        download_dataset("flickr30k", tmp_path)


def test_a_dataset_already_in_place_is_not_downloaded(tmp_path: Path, capsys) -> None:
    from captioner.cli.command import main
    from tests.data.test_formats import flickr_folder

    folder = flickr_folder(tmp_path / "flickr8k", b"a.jpg#0\tA dog runs .\n", ["a.jpg"], {})
    assert main(["data", "download", "flickr8k", "--data_dir", str(folder), "--base_url", "http://127.0.0.1:9"]) == 0
    assert "flickr8k is already in" in capsys.readouterr().out and not (folder / "downloads").exists()
