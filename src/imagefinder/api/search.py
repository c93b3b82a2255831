"""POST /search: the query image in, the k most similar images out."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from imagefinder.api.deps import Service, Settings, read_limited
from imagefinder.api.errors import ApiError
from imagefinder.api.schemas import ModelInfo, Result, SearchResponse

router = APIRouter(tags=["search"])


@router.post(
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
    service: Service,
    settings: Settings,
    file: Annotated[UploadFile, File(description="The query image (JPEG, PNG, WebP, GIF, BMP, TIFF)")],
    k: Annotated[int | None, Query(ge=1, description="How many results (default 3)")] = None,
) -> SearchResponse:
    k = k or settings.default_k
    if k > settings.max_k:
        raise ApiError(422, "invalid_request", f"k must be at most {settings.max_k}")
    started = time.perf_counter()
    data = await read_limited(file.read, service.limits.max_bytes)
    results = await run_in_threadpool(service.search_bytes, data, k, file.filename or "<upload>")
    model = service.model
    return SearchResponse(
        model=ModelInfo(name=model.name, version=model.version),
        took_ms=round((time.perf_counter() - started) * 1000, 2),
        results=[Result(**r.to_dict()) for r in results],
    )
