"""The library page's routes: search, browse by tag and folder, one photo's description, thumbnails and photos.

Photos are asked for by their id in the database, never by path, and served only from inside the library's
photo folder (library/files.py). Database reads and the model's reranking run off the event loop, one at a
time (an SQLite connection serves one thread at once); the index may be writing meanwhile (WAL).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from captioner.errors import CaptionerError
from captioner.images import BadImageError
from captioner.library import Filters, Library
from captioner.library.browse import browse, details, tag_facets
from captioner.library.files import photo_file, thumbnail
from captioner.library.search import CANDIDATES

PAGE = 60  # photos per page of the grid


def add_library_routes(app: FastAPI, library: Library, static: Path, caption_photo, error) -> None:
    """`caption_photo(path)` captions a photo with attention (for the word hover); `error(status, message)`."""
    lock = threading.Lock()
    root, name = library.root, library.root.name  # read once: the connection serves one thread at a time

    async def locked(function, *args):
        def run():
            with lock:
                return function(*args)
        return await asyncio.to_thread(run)

    def filters_of(request: Request) -> Filters:
        query = request.query_params
        return Filters(query.get("folder") or None, query.get("tag") or None, query.get("after") or None,
                       query.get("before") or None)

    def photo_of(image_id: int) -> tuple[Path, str] | None:
        row = library.database.connection.execute(
            "SELECT path, sha256 FROM images WHERE id = ? AND removed_at IS NULL AND error IS NULL",
            (image_id,)).fetchone()
        if row is None:
            return None
        path = photo_file(root, row[0])
        return (path, row[1]) if path is not None else None

    @app.get("/library")
    async def library_page() -> Response:
        return FileResponse(static / "library.html", media_type="text/html")

    @app.get("/api/library")
    async def about() -> JSONResponse:
        counts = await locked(library.database.counts)
        facets = await locked(tag_facets, library.database)
        return JSONResponse({**counts, "tags": [{"tag": t, "count": n} for t, n in facets],
                             "name": name, "page": PAGE})

    @app.get("/api/library/images")
    async def images(request: Request, offset: int = 0) -> JSONResponse:
        try:
            where, values = filters_of(request).sql()
        except CaptionerError as problem:  # a date that is not YYYY-MM-DD
            return error(422, str(problem))
        total, rows = await locked(browse, library.database, where, values, max(0, offset), PAGE)
        return JSONResponse({"total": total, "offset": offset, "images": rows})

    @app.get("/api/search")
    async def search(request: Request, q: str = "", top_k: int = 20) -> JSONResponse:
        if not q.strip():
            return error(422, "q: say what the photo shows")
        try:
            filters = filters_of(request)
            results = await locked(library.search, q, max(1, min(top_k, 200)), CANDIDATES, filters)
        except ValueError as problem:
            return error(422, str(problem))
        except CaptionerError as problem:
            return error(422, str(problem))
        return JSONResponse({"query": q, "unknown_words": results.unknown_words, "candidates": results.candidates,
                             "results": [{"id": hit.id, "path": hit.path, "caption": hit.caption,
                                          "score": round(hit.score, 4), "reranked": hit.reranked}
                                         for hit in results.hits]})

    @app.get("/api/library/image/{image_id}")
    async def image(image_id: int) -> JSONResponse:
        found = await locked(details, library.database, image_id)
        if found is None:
            return error(404, "no such photo")
        return JSONResponse(found)

    @app.get("/api/library/thumbnail/{image_id}")
    async def thumbnail_of(image_id: int) -> Response:
        found = await locked(photo_of, image_id)
        if found is None:
            return error(404, "no such photo")
        try:
            path = await asyncio.to_thread(thumbnail, library.folder, *found)
        except (BadImageError, OSError) as problem:
            return error(404, f"the photo cannot be read: {problem}")
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    @app.get("/api/library/photo/{image_id}")
    async def photo(image_id: int) -> Response:
        found = await locked(photo_of, image_id)
        if found is None:
            return error(404, "no such photo")
        return FileResponse(found[0])

    @app.post("/api/library/image/{image_id}/caption")
    async def caption(image_id: int) -> JSONResponse:
        """The photo captioned again with attention, for the word hover (the database keeps no attention)."""
        found = await locked(photo_of, image_id)
        if found is None:
            return error(404, "no such photo")
        return await caption_photo(found[0])
