"""The FastAPI application. `create_app` receives a ready service; the model and the index are
loaded before the first request, and a request writes no temporary file."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import FastAPI, File, Query, Request, UploadFile
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartParser

from imagefinder import __version__
from imagefinder.api.errors import ApiError, error_response, install_error_handlers
from imagefinder.config import ApiSettings
from imagefinder.service import ImageFinder

# Headroom for the multipart envelope around the file itself.
_MULTIPART_OVERHEAD = 64 * 1024


class ModelInfo(BaseModel):
    name: str
    version: str


class Result(BaseModel):
    id: str = Field(examples=["photos/cat.jpg"])
    score: float = Field(description="Cosine similarity, -1..1; higher is more similar.")
    uri: str = Field(description="Where the indexed image was read from.")


class SearchResponse(BaseModel):
    model: ModelInfo
    took_ms: float
    results: list[Result] = Field(description="Best first; equal scores in id order.")


class Health(BaseModel):
    status: str
    version: str
    model: ModelInfo
    images: int


def create_app(service: ImageFinder, settings: ApiSettings) -> FastAPI:
    app = FastAPI(
        title="ImageFinder",
        version=__version__,
        description="Reverse image search: POST an image, get the most similar images of the collection.",
    )
    install_error_handlers(app)
    max_bytes = service.limits.max_bytes
    # Starlette spools uploads over 1 MiB to a temporary file; keep uploads up to our own limit
    # in memory instead (the limit is checked before reading, so memory stays bounded).
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, max_bytes + _MULTIPART_OVERHEAD)
    model = ModelInfo(name=service.model.name, version=service.model.version)

    @app.get("/health", response_model=Health, summary="Liveness, model and index size")
    def health() -> Health:
        return Health(status="ok", version=__version__, model=model, images=service.count())

    @app.post(
        "/search",
        response_model=SearchResponse,
        summary="Find the k images most similar to an uploaded image",
        responses={
            400: {"description": "The file is not a readable image"},
            413: {"description": "The file or its pixel count exceeds a limit"},
            415: {"description": "The file is not an image format we accept"},
            422: {"description": "Missing file or invalid parameter"},
        },
    )
    async def search(
        request: Request,
        file: Annotated[UploadFile, File(description="The query image (JPEG, PNG, WebP, GIF, BMP, TIFF)")],
        k: Annotated[int, Query(ge=1, description="How many results to return")] = settings.default_k,
    ) -> SearchResponse:
        if k > settings.max_k:
            raise ApiError(422, "invalid_request", f"k must be at most {settings.max_k}")
        started = time.perf_counter()
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ApiError(413, "image_too_large", f"upload exceeds the limit of {max_bytes} bytes")
        results = await run_in_threadpool(service.search_bytes, data, k, file.filename or "<upload>")
        return SearchResponse(
            model=model,
            took_ms=round((time.perf_counter() - started) * 1000, 2),
            results=[Result(**r.to_dict()) for r in results],
        )

    @app.middleware("http")
    async def refuse_oversized_bodies(request: Request, call_next):  # type: ignore[no-untyped-def]
        # Refuse by the declared length before the body is read at all.
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_bytes + _MULTIPART_OVERHEAD:
            message = f"request body exceeds the limit of {max_bytes} bytes"
            return error_response(413, "image_too_large", message)
        return await call_next(request)

    return app
