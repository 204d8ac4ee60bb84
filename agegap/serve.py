"""``agegap serve``: the trained model behind a web page and an HTTP API.

Uploads go through ``agegap predict``'s own steps, so the page, the API and the command agree.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from agegap.batching import MicroBatcher
from agegap.images import DECODE_THREADS, MAX_PIXELS
from agegap.model_identity import model_identity
from agegap.predict import FACE_DETECTED, Prepared, Source, input_size, prediction_rows, prepare
from agegap.report import prediction_dict
from agegap.scoring import PREDICT_BATCH, predict_probabilities
from agegap.serve_settings import MB, ServeSettings

# agegap.images' one-line reasons, mapped to the HTTP status each deserves.
_STATUS_BY_REASON = (
    ("not an image", 415),
    ("image too large", 413),
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RequestError(Exception):
    """A bad request, answered as ``{"error": ..., "file": ...}`` with ``status``."""

    def __init__(self, status: int, message: str, file: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.file = status, message, file

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message, "file": self.file}, status_code=self.status)


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is refused with 413 before it is
    all read, whether it declares its length or streams in chunks."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = JSONResponse(
            {"error": f"request body over {self.max_bytes / MB:g} MB", "file": None},
            status_code=413,
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await refusal(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except _BodyTooLarge:
            if not started:
                await refusal(scope, receive, send)


def _status_of(reason: str) -> int:
    for prefix, status in _STATUS_BY_REASON:
        if reason.startswith(prefix):
            return status
    return 422  # empty, truncated or otherwise undecodable


def _prepare_upload(name: str, data: bytes, size: tuple[int, int], detect: bool) -> Prepared:
    """``agegap predict``'s preparation of one uploaded file, from a private scratch copy.

    The copy lives and dies in this thread, so a request cancelled meanwhile leaves nothing.
    """
    with tempfile.TemporaryDirectory(prefix="agegap-serve-") as scratch:
        path = Path(scratch) / "upload"
        path.write_bytes(data)
        return prepare(Source(path, Path(name)), size, detect=detect, keep_image=True)


def _face_entry(row: Any) -> dict[str, Any]:
    entry = prediction_dict(row)
    del entry["file"], entry["error"]
    return {**entry, "face_found": row.face == FACE_DETECTED}


def _read_page() -> str:
    return resources.files("agegap").joinpath("serve_page.html").read_text(encoding="utf-8")


def create_app(model: Any, model_path: Path, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app serving ``model`` (already loaded), for uvicorn or any ASGI server."""
    settings = settings or ServeSettings()
    size = input_size(model)
    identity = model_identity(model_path)
    page = _read_page()

    class _Batched:
        """``model.predict`` without its per-call setup: the same compiled step, batch by
        batch, so :func:`predict_probabilities` gives the same numbers much sooner."""

        def predict(self, images: np.ndarray, batch_size: int, verbose: int = 0) -> np.ndarray:
            parts = [
                np.asarray(model.predict_on_batch(images[i : i + batch_size]))
                for i in range(0, len(images), batch_size)
            ]
            return np.concatenate(parts)

    batched = _Batched()
    batcher = MicroBatcher(
        lambda images, tta_flip: predict_probabilities(batched, images, tta_flip=tta_flip),  # type: ignore[arg-type]
        max_images=PREDICT_BATCH,
        max_wait_s=settings.batch_wait_s,
    )
    decoders = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="agegap-decode")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        warm = np.zeros((1, size[1], size[0], 3), np.uint8)
        await batcher.probabilities(warm, tta_flip=False)  # trace the graph before the first user
        try:
            yield
        finally:
            await batcher.stop()
            decoders.shutdown(wait=True)

    app = FastAPI(
        title="agegap",
        summary="Tell old from young faces with a versioned Keras model.",
        version=str(identity["id"]),
        lifespan=lifespan,
        docs_url=None,  # FastAPI's /docs and /redoc load their scripts from a CDN
        redoc_url=None,
    )
    app.state.batcher = batcher

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, error: RequestError) -> JSONResponse:
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        """Starlette's own refusals (too many files, unknown path) in the same shape."""
        return RequestError(error.status_code, str(error.detail)).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid_query(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return RequestError(422, f"{where}: {first.get('msg', 'invalid')}").response()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, which model answers, and how many model calls it has made."""
        return {"status": "ok", "model": identity["id"], "model_calls": batcher.calls}

    @app.get("/model")
    async def model_info() -> dict[str, Any]:
        """The model's identity: hashes, the params that trained it and its test metrics."""
        return {
            **identity,
            "input_size": list(size),
            "tta_flip_default": settings.tta_flip,
            "limits": {
                "max_upload_mb": settings.max_upload_bytes / MB,
                "max_files": settings.max_files,
                "max_pixels": MAX_PIXELS,
            },
        }

    @app.post(
        "/predict",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "image": {
                                    "type": "array",
                                    "items": {"type": "string", "format": "binary"},
                                }
                            },
                        }
                    }
                },
            }
        },
    )
    async def predict_images(
        request: Request, detect_faces: bool = True, tta_flip: bool | None = None
    ) -> dict[str, Any]:
        """Label every face of each uploaded image (multipart, any field name) as old or young."""
        flip = settings.tta_flip if tta_flip is None else tta_flip
        async with request.form(max_files=settings.max_files) as form:
            uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
            if not uploads:
                raise RequestError(
                    422, "no image in the request: send files as multipart/form-data"
                )
            named = []
            for index, upload in enumerate(uploads):
                name = upload.filename or f"upload {index + 1}"
                if upload.size is not None and upload.size > settings.max_upload_bytes:
                    raise RequestError(
                        413,
                        f"{name}: {upload.size / MB:.1f} MB is over the "
                        f"{settings.max_upload_bytes / MB:g} MB limit per image",
                        name,
                    )
                named.append((name, await upload.read()))
        prepared = await _prepare_all(named, detect_faces)
        for name, item in zip((n for n, _ in named), prepared, strict=True):
            if item.error:
                raise RequestError(_status_of(item.error), f"{name}: {item.error}", name)
        crops = np.stack([crop for item in prepared for crop in item.crops])
        p_young = await batcher.probabilities(crops, tta_flip=flip)
        images, position = [], 0
        for (name, _), item in zip(named, prepared, strict=True):
            count = len(item.crops)
            rows = prediction_rows(item, p_young[position : position + count])
            position += count
            width, height = item.image.size if item.image else (None, None)
            images.append(
                {
                    "file": name,
                    "width": width,
                    "height": height,
                    "faces": [_face_entry(row) for row in rows],
                }
            )
        return {
            "model": identity["id"],
            "detect_faces": detect_faces,
            "tta_flip": flip,
            "images": images,
        }

    async def _prepare_all(named: list[tuple[str, bytes]], detect: bool) -> list[Prepared]:
        loop = asyncio.get_running_loop()
        jobs = [
            loop.run_in_executor(decoders, _prepare_upload, name, data, size, detect)
            for name, data in named
        ]
        return list(await asyncio.gather(*jobs))

    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    return app


def run_server(
    model: Any,
    model_path: Path,
    *,
    host: str,
    port: int,
    settings: ServeSettings,
    log_level: str = "info",
) -> None:
    """Serve until interrupted; uvicorn prints the address, and at ``info`` one line per request."""
    import uvicorn

    app = create_app(model, model_path, settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
