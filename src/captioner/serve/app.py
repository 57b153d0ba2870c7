"""`captioner serve`: the caption page, the review page, and their JSON API (FastAPI).

Every error is JSON, `{"error": "..."}`, with the status that says what went wrong; after any of them the
server goes on serving. Requests never name files: uploaded images arrive as bytes, and review images are
asked for by their index in the evaluation.
"""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from captioner.api import Captioner
from captioner.decoding.settings import DecodeSettings
from captioner.options import specs
from captioner.images import BadImageError, open_rgb
from captioner.library import Library
from captioner.serve.batcher import CaptionBatcher
from captioner.serve.library_routes import add_library_routes
from captioner.evaluation.ratings import ASPECTS, RatingStore, summary
from captioner.evaluation.folder import Evaluation

STATIC = Path(__file__).parent / "static"
STATUS_OF_IMAGE_ERROR = {"not_image": 415, "too_large": 400, "undecodable": 400, "missing": 400}
ACCEPTED_TYPES = ("image/", "application/octet-stream")  # browsers send some photos (HEIC, RAW) as octet-stream
TRUTH = {"true": True, "1": True, "on": True, "false": False, "0": False, "off": False}  # form and query spellings
FIELDS = [spec for spec in specs(DecodeSettings) if spec.cli]  # the decoding options a request may set
LIMITS = {"beam_size": 20, "num_captions": 10, "max_length": 60}  # what one request may ask of the shared model


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def settings_from_fields(fields: dict[str, str]) -> DecodeSettings:
    """DecodeSettings from a request's form and query fields, one per decoding option (strings, as sent). By
    default the page gets every beam (up to 10) as alternatives."""
    options: dict[str, object] = {}
    for spec in FIELDS:
        text = fields.get(spec.name)
        if text is None or text == "":
            continue
        if spec.kind is bool:
            if text.lower() not in TRUTH:
                raise ValueError(f"{spec.name}: {text!r} is not one of {', '.join(TRUTH)}")
            options[spec.name] = TRUTH[text.lower()]
        elif spec.kind in (int, float):
            try:
                options[spec.name] = spec.kind(text)
            except ValueError:
                raise ValueError(f"{spec.name}: not a number") from None
        else:
            options[spec.name] = text
    strategy = options.get("strategy", DecodeSettings.strategy)
    if "num_captions" not in options:
        options["num_captions"] = min(options.get("beam_size", 3), 10) if strategy == "beam" else 1
    if any(options.get(name, 0) > limit for name, limit in LIMITS.items()):
        raise ValueError("beam_size is at most {beam_size}, num_captions at most {num_captions} and max_length at "
                         "most {max_length}".format(**LIMITS))
    return DecodeSettings(**options)


class BodyLimit:
    """413 for request bodies over the limit: refused from Content-Length before reading, and counted while
    streaming when the client sends no length (or lies about it)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_large = error(413, f"the upload is over the {self.max_bytes / 2**20:.3g} MB limit")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large(scope, receive, send)
        seen, started, exceeded = 0, False, False

        async def counting_receive():
            nonlocal seen, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message):
            nonlocal started
            if exceeded:
                return  # whatever the app answers to a body cut short is replaced by the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await too_large(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(captioner: Captioner, eval_dir: Path | None = None, max_upload_mb: float = 10,
               max_batch: int = 16, library: Library | None = None) -> FastAPI:
    """`library`, opened with the captioner's model, adds the library page (/library) and its API."""
    batcher = CaptionBatcher(captioner, max_batch=max_batch)
    evaluation = Evaluation.load(eval_dir) if eval_dir is not None else None
    ratings = RatingStore(evaluation.folder) if evaluation is not None else None
    static_files = {p.name: p for p in STATIC.iterdir() if p.is_file()}  # the only files the app ever serves

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="captioner", lifespan=lifespan, docs_url="/api/docs", redoc_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}" for e in exc.errors())
        return error(422, problems or "invalid request")

    @app.get("/", response_class=HTMLResponse)
    async def caption_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/review", response_class=HTMLResponse)
    async def review_page() -> Response:
        return FileResponse(STATIC / "review.html", media_type="text/html")

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in static_files:
            return error(404, "no such file")
        return FileResponse(static_files[name])

    @app.get("/api/health")
    async def health() -> dict:
        return {"status": "ok", "batches": batcher.batches_run, "images": batcher.images_captioned}

    @app.get("/api/model")
    async def model_info() -> dict:
        model, config = captioner.model, captioner.model.decoder.config
        return {"decoder": config.decoder, "encoder": model.encoder_name, "image_size": captioner.image_size,
                "grid": list(captioner.grid), "attention": captioner.uses_attention, "vocabulary": len(model.vocab),
                "hidden_size": config.hidden_size, "source": model.source.name,
                "trained_on": model.train_config.get("dataset_type"), "max_upload_mb": max_upload_mb,
                "review": evaluation is not None, "recommended_decoding": captioner.recommended_decoding or None,
                "tags": captioner.can_tag, "library": library is not None}

    @app.post("/api/caption")
    async def caption(request: Request, file: UploadFile = File(...)) -> JSONResponse:
        started = time.perf_counter()
        form = await request.form()  # already read for `file`: the same parsed form
        fields = {**request.query_params, **{key: value for key, value in form.items() if isinstance(value, str)}}
        try:
            settings = settings_from_fields(fields)
        except (ValueError, TypeError) as problem:
            return error(422, str(problem))
        content_type = (file.content_type or "").lower()
        if content_type and not content_type.startswith(ACCEPTED_TYPES):
            return error(415, f"{file.filename or 'the upload'}: {content_type} is not an image type")
        data = await file.read()
        if not data:
            return error(400, "the uploaded file is empty")
        try:
            image = open_rgb(data, name=file.filename or "upload")
        except BadImageError as problem:
            return error(STATUS_OF_IMAGE_ERROR.get(problem.kind, 400), str(problem))
        return await captioned(file.filename or "upload", image, settings, started)

    async def captioned(name: str, image, settings: DecodeSettings, started: float) -> JSONResponse:
        result = await batcher.caption(name, image, settings)
        if result.error:
            return error(400, result.error)
        return JSONResponse({
            "captions": [{"text": c.text, "score": c.score, "tokens": c.tokens,
                          "attention": c.attention.tolist() if c.attention is not None else None}
                         for c in result.captions],
            "tags": [{"tag": tag, "probability": probability} for tag, probability in result.tags],
            "grid": list(captioner.grid) if captioner.uses_attention else None,
            "image": {"width": image.width, "height": image.height},
            "settings": {spec.name: getattr(settings, spec.name) for spec in FIELDS},
            "seconds": round(time.perf_counter() - started, 3),
        })

    if library is not None:
        async def caption_photo(path: Path) -> JSONResponse:
            started = time.perf_counter()
            try:
                image = open_rgb(path, name=path.name)
            except BadImageError as problem:
                return error(404, str(problem))
            settings = DecodeSettings(**{**captioner.recommended_decoding, "num_captions": 1})
            return await captioned(path.name, image, settings, started)

        add_library_routes(app, library, STATIC, caption_photo, error)

    @app.get("/api/review")
    async def review() -> JSONResponse:
        if evaluation is None:
            return error(404, "no evaluation loaded; start the server with --eval_dir RUN_OR_EVAL_DIR")
        return JSONResponse({"about": evaluation.about, "folder": evaluation.folder.name, "items": evaluation.items,
                             "ratings": ratings.all(), "aspects": list(ASPECTS)})

    @app.get("/api/review/image/{index}")
    async def review_image(index: int) -> Response:
        if evaluation is None or not 0 <= index < len(evaluation.paths):
            return error(404, "no such image")
        path = evaluation.paths[index]
        if not path.is_file():
            return error(404, f"{evaluation.items[index]['image_id']} is no longer at {path}")
        return FileResponse(path)

    @app.post("/api/review/rate")
    async def rate(request: Request) -> JSONResponse:
        if evaluation is None:
            return error(404, "no evaluation loaded")
        try:
            body = json.loads(await request.body())
            image_id, aspect, score = body["image_id"], body["aspect"], body.get("score")
            if image_id not in {item["image_id"] for item in evaluation.items}:
                return error(404, f"{image_id!r} is not in this evaluation")
            ratings.rate(str(image_id), str(aspect), score)
        except (ValueError, KeyError, TypeError) as problem:
            return error(422, f"a rating is {{image_id, aspect, score 1-5}}: {problem}")
        all_ratings = ratings.all()
        return JSONResponse({"image_id": image_id, "ratings": all_ratings.get(image_id, {}),
                             "summary": summary(all_ratings)})

    @app.get("/api/review/ratings")
    async def all_ratings() -> JSONResponse:
        if evaluation is None:
            return error(404, "no evaluation loaded")
        current = ratings.all()
        return JSONResponse({"ratings": current, "summary": summary(current)})

    return BodyLimit(app, int(max_upload_mb * 2**20))
