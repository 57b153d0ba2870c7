"""The web server's API with FastAPI's TestClient, every error answer included."""

from __future__ import annotations

import io
import json
import struct
import threading
import zlib
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from captioner.api import Captioner  # noqa: E402
from captioner.cli.command import main  # noqa: E402
from captioner.serve.app import create_app  # noqa: E402
from tests.conftest import TINY_DECODING  # noqa: E402


@pytest.fixture(scope="module")
def evaluation(tiny_checkpoint: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("review") / "eval"
    assert main(["evaluate", "--model_path", str(tiny_checkpoint), "--strategy", "greedy", "--max_images", "6",
                 "--output_dir", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def client(tiny_checkpoint: Path, evaluation: Path):
    app = create_app(Captioner.load(tiny_checkpoint, device="cpu"), evaluation, max_upload_mb=0.05)
    with TestClient(app) as test_client:
        yield test_client


def png_bytes(size=(64, 48), mode="RGB", color=(20, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims enormous dimensions: a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_health_and_model(client) -> None:
    assert client.get("/api/health").json()["status"] == "ok"
    model = client.get("/api/model").json()
    assert model["decoder"] == "attention" and model["attention"] and model["grid"] == [4, 4] and model["review"]
    assert model["recommended_decoding"] == TINY_DECODING  # the page starts from it


def test_a_model_without_a_recommended_decoding_says_none(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import torch

    saved = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    del saved["train_config"]["decoding"]
    torch.save(saved, tmp_path / "plain.pt")
    captioner = Captioner.load(tmp_path / "plain.pt", device="cpu")
    assert captioner.recommended_decoding == {}
    with TestClient(create_app(captioner, None)) as plain:
        assert plain.get("/api/model").json()["recommended_decoding"] is None  # the page keeps its own defaults


def test_caption_an_upload(client) -> None:
    response = client.post("/api/caption", files={"file": ("photo.png", png_bytes(), "image/png")},
                           data={"beam_size": "3"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer["captions"]) == 3 and answer["captions"][0]["text"]
    best = answer["captions"][0]
    assert len(best["attention"]) == len(best["tokens"]) + 1 and len(best["attention"][0]) == 4
    assert answer["image"] == {"width": 64, "height": 48}
    greedy = client.post("/api/caption?strategy=greedy", files={"file": ("photo.png", png_bytes(), "image/png")})
    assert greedy.json()["settings"]["strategy"] == "greedy" and len(greedy.json()["captions"]) == 1
    gray = client.post("/api/caption", files={"file": ("gray.png", png_bytes(mode="L", color=90), "image/png")})
    assert gray.status_code == 200


def test_caption_averaged_with_the_mirror_image(client, tiny_checkpoint: Path) -> None:
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    image.paste((30, 30, 200), (40, 0, 64, 48))  # not its own mirror image
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    expected = Captioner.load(tiny_checkpoint, device="cpu").caption(image, beam_size=3, num_captions=3,
                                                                  flip_average=True)[0]
    response = client.post("/api/caption", files={"file": ("lopsided.png", buffer.getvalue(), "image/png")},
                           data={"beam_size": "3", "flip_average": "true"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["settings"]["flip_average"] is True
    assert [(c["text"], c["score"]) for c in answer["captions"]] == [(c.text, c.score) for c in expected.captions]
    plain = client.post("/api/caption?flip_average=off", files={"file": ("p.png", buffer.getvalue(), "image/png")})
    assert plain.json()["settings"]["flip_average"] is False
    assert [c["score"] for c in plain.json()["captions"]] != [c["score"] for c in answer["captions"]]
    wrong = client.post("/api/caption?flip_average=maybe", files={"file": ("p.png", buffer.getvalue(), "image/png")})
    assert wrong.status_code == 422 and "flip_average" in wrong.json()["error"]


def test_caption_with_a_length_penalty(client, tiny_checkpoint: Path) -> None:
    upload = {"file": ("photo.png", png_bytes(), "image/png")}
    ranked = client.post("/api/caption", files=upload, data={"length_penalty": "1", "no_repeat_ngram": "2"}).json()
    assert ranked["settings"]["length_penalty"] == 1 and ranked["settings"]["no_repeat_ngram"] == 2
    expected = Captioner.load(tiny_checkpoint, device="cpu").caption(
        Image.open(io.BytesIO(png_bytes())), num_captions=3, length_penalty=1, no_repeat_ngram=2)[0]
    assert [(c["text"], c["score"]) for c in ranked["captions"]] == [(c.text, c.score) for c in expected.captions]
    plain = client.post("/api/caption", files={"file": ("photo.png", png_bytes(), "image/png")}).json()
    assert [c["score"] for c in plain["captions"]] != [c["score"] for c in ranked["captions"]]
    refused = client.post("/api/caption?length_penalty=-1", files={"file": ("photo.png", png_bytes(), "image/png")})
    assert refused.status_code == 422 and "length_penalty" in refused.json()["error"]


@pytest.mark.parametrize("upload, status, message", [
    (("notes.txt", b"hello, not a photo", "text/plain"), 415, "not an image type"),
    (("fake.jpg", b"hello, not a photo", "image/jpeg"), 415, "not an image"),
    (("bomb.png", huge_png_header(20000, 20000), "image/png"), 400, "decompression bomb"),
    (("cut.png", png_bytes()[:60], "image/png"), 400, "cannot be decoded"),
    (("empty.png", b"", "image/png"), 400, "empty"),
])
def test_bad_uploads_get_clear_json_errors(client, upload, status, message) -> None:
    response = client.post("/api/caption", files={"file": upload})
    assert response.status_code == status and message in response.json()["error"]
    assert client.get("/api/health").status_code == 200  # and the server keeps serving


def test_over_the_size_limit_is_413_with_or_without_a_length(client) -> None:
    big = png_bytes(size=(600, 600), color=None) + bytes(80_000)
    response = client.post("/api/caption", files={"file": ("big.png", big, "image/png")})
    assert response.status_code == 413 and "limit" in response.json()["error"]

    def chunks():  # a well-formed multipart body sent without a Content-Length (chunked)
        yield (b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
               b"Content-Type: image/png\r\n\r\n") + png_bytes()
        for _ in range(20):
            yield bytes(10_000)
        yield b"\r\n--x--\r\n"
    streamed = client.post("/api/caption", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert streamed.status_code == 413
    assert client.get("/api/health").status_code == 200


def test_missing_field_and_bad_options(client) -> None:
    assert client.post("/api/caption", data={"beam_size": "3"}).status_code == 422
    response = client.post("/api/caption", files={"file": ("p.png", png_bytes(), "image/png")}, data={"beam_size": "x"})
    assert response.status_code == 422 and "error" in response.json()
    assert client.post("/api/caption?strategy=psychic", files={"file": ("p.png", png_bytes(), "image/png")}).status_code == 422
    for options, message in (({"num_captions": "50", "beam_size": "20"}, "num_captions at most 10"),
                             ({"strategy": "greedy", "num_captions": "3"}, "greedy decoding writes one caption"),
                             ({"strategy": "sample", "temperature": "nan"}, "must be finite"),
                             ({"length_penalty": "inf"}, "must be finite"),
                             ({"strategy": "sample", "temperature": "1e-45"}, "temperature 1e-45: must be at least 0.01")):
        refused = client.post("/api/caption", files={"file": ("p.png", png_bytes(), "image/png")}, data=options)
        assert refused.status_code == 422 and message in refused.json()["error"], refused.json()


def test_no_file_system_access_from_requests(client) -> None:
    for path in ("/static/../../etc/passwd", "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/static/..%2fapp.py",
                 "/api/review/image/-1", "/api/review/image/999", "/etc/passwd"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "root:" not in response.text
    assert client.get("/static/style.css").status_code == 200


def test_review_rate_reload_and_export(client, evaluation: Path, capsys) -> None:
    review = client.get("/api/review").json()
    assert len(review["items"]) == 6 and review["aspects"] == ["fluency", "relevance"]
    first = review["items"][0]
    assert client.get(f"/api/review/image/{first['index']}").headers["content-type"].startswith("image/")
    answer = client.post("/api/review/rate", json={"image_id": first["image_id"], "aspect": "fluency", "score": 4})
    assert answer.status_code == 200 and answer.json()["ratings"] == {"fluency": 4}
    assert client.post("/api/review/rate", json={"image_id": first["image_id"], "aspect": "fluency", "score": 9}).status_code == 422
    for score in (4.9, True, "4", 1e400):  # 1e400 reaches the server as Infinity
        refused = client.post("/api/review/rate", content=json.dumps(
            {"image_id": first["image_id"], "aspect": "fluency", "score": score}), headers={"content-type": "application/json"})
        assert refused.status_code == 422, score
    assert client.post("/api/review/rate", json={"image_id": "nope.jpg", "aspect": "fluency", "score": 3}).status_code == 404
    assert client.get("/api/review").json()["ratings"][first["image_id"]] == {"fluency": 4}  # kept on reload

    def rate(aspect: str, image_id: str) -> None:  # two "tabs" at once, on other aspects and images
        for score in (1, 2, 3, 5):
            client.post("/api/review/rate", json={"image_id": image_id, "aspect": aspect, "score": score})
    threads = [threading.Thread(target=rate, args=(aspect, item["image_id"]))
               for aspect in ("fluency", "relevance") for item in review["items"][1:4]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ratings = client.get("/api/review/ratings").json()["ratings"]
    assert all(ratings[item["image_id"]] == {"fluency": 5, "relevance": 5} for item in review["items"][1:4])
    assert main(["review", "export", "--eval_dir", str(evaluation), "--format", "json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["summary"]["fluency"]["count"] == 4 and exported["summary"]["relevance"]["count"] == 3
    assert main(["review", "export", "--eval_dir", str(evaluation)]) == 0
    csv_text = capsys.readouterr().out
    assert csv_text.splitlines()[0] == "image_id,caption,fluency,relevance" and "mean," in csv_text


def test_serve_names_the_port_it_got_and_refuses_one_in_use(tiny_checkpoint: Path, capsys) -> None:
    import socket
    import subprocess
    import sys

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--model_path", str(tiny_checkpoint), "--port", str(port)]) == 2
        assert f"cannot serve on 127.0.0.1:{port}:" in capsys.readouterr().err
    server = subprocess.Popen([sys.executable, "-m", "captioner", "serve", "--model_path", str(tiny_checkpoint),
                               "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
    finally:
        server.kill()
        server.wait()
    assert line.startswith("captioner: serving on http://127.0.0.1:") and ":0/" not in line
    assert "review" not in line  # no --eval_dir, no review page
