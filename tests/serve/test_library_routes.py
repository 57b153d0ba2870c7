"""The library page's API: search, browse, one photo, thumbnails; ids only, never a file outside the photos."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from captioner.api import Captioner  # noqa: E402
from captioner.library import Library  # noqa: E402
from captioner.serve.app import create_app  # noqa: E402
from tests.library.helpers import collection, run_index  # noqa: E402


@pytest.fixture(scope="module")
def served(tiny_checkpoint: Path, tmp_path_factory):
    photos = collection(tiny_checkpoint, tmp_path_factory.mktemp("served") / "photos", count=6)
    secret = photos.parent / "secret.png"
    secret.write_bytes((photos / "a/photo01.png").read_bytes())
    run_index(tiny_checkpoint, photos)
    captioner = Captioner.load(tiny_checkpoint, device="cpu")
    library = Library(photos / ".captioner", captioner.model)
    with TestClient(create_app(captioner, library=library)) as client:
        yield client, photos, secret


def test_search_browse_and_one_photo(served) -> None:
    client, photos, _ = served
    about = client.get("/api/library").json()
    assert about["images"] == 6 and about["name"] == "photos"
    page = client.get("/api/library/images").json()
    assert page["total"] == 6 and [p["path"] for p in page["images"]] == sorted(p["path"] for p in page["images"])
    found = client.get("/api/search", params={"q": "a red circle", "top_k": 3}).json()
    assert len(found["results"]) == 3 and all(hit["reranked"] for hit in found["results"])
    first = found["results"][0]
    photo = client.get(f"/api/library/image/{first['id']}").json()
    assert photo["captions"][0]["text"] == first["caption"] and len(photo["tags"]) == 10
    assert client.get(f"/api/library/photo/{first['id']}").content == (photos / first["path"]).read_bytes()
    thumb = client.get(f"/api/library/thumbnail/{first['id']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    hover = client.post(f"/api/library/image/{first['id']}/caption").json()
    assert hover["captions"][0]["attention"] and hover["grid"]
    if about["tags"]:
        tag = about["tags"][0]
        tagged = client.get("/api/library/images", params={"tag": tag["tag"]}).json()
        assert tagged["total"] == tag["count"]


def test_bad_requests_get_clear_answers(served) -> None:
    client, _, _ = served
    assert client.get("/api/search").status_code == 422
    answer = client.get("/api/search", params={"q": "a dog", "after": "yesterday"})
    assert answer.status_code == 422 and "YYYY-MM-DD" in answer.text
    answer = client.get("/api/library/images", params={"before": "2020-13-01"})
    assert answer.status_code == 422 and "before 2020-13-01" in answer.text
    assert client.get("/api/library/image/999").status_code == 404
    assert client.get("/api/library/photo/not-a-number").status_code == 422
    assert client.get("/api/library/photo/..%2F..%2Fsecret.png").status_code in (404, 422)


@pytest.mark.parametrize("stored", ["../secret.png", "/etc/passwd", "a/out"])
def test_photos_outside_the_library_are_never_served(served, stored: str) -> None:
    """Even a database row pointing outside (edited by hand, or a symlink that now points out) serves nothing."""
    client, photos, secret = served
    if stored == "a/out":
        os.symlink(secret, photos / "a" / "out")
    connection = sqlite3.connect(photos / ".captioner/library.sqlite")
    image_id = connection.execute("SELECT id FROM images ORDER BY id LIMIT 1").fetchone()[0]
    original = connection.execute("SELECT path FROM images WHERE id = ?", (image_id,)).fetchone()[0]
    connection.execute("UPDATE images SET path = ? WHERE id = ?", (stored, image_id))
    connection.commit()
    try:
        assert client.get(f"/api/library/photo/{image_id}").status_code == 404
        assert client.get(f"/api/library/thumbnail/{image_id}").status_code == 404
    finally:
        connection.execute("UPDATE images SET path = ? WHERE id = ?", (original, image_id))
        connection.commit()
        connection.close()
        if stored == "a/out":
            os.remove(photos / "a" / "out")
