"""POST /search (one query: an upload, a URL, or an id in the collection) and POST /search/batch."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from imagefinder.api.deps import ReadAccess, Service, Settings, embed_prepared, read_form_file, read_limited
from imagefinder.api.errors import ApiError, describe_validation, documented, error_body
from imagefinder.api.images import image_url
from imagefinder.api.schemas import (
    BatchItem,
    BatchResponse,
    ModelInfo,
    Result,
    SearchQuery,
    SearchResponse,
    WhereCondition,
    image_part,
    multipart_or_json_body,
)
from imagefinder.errors import ImageFinderError
from imagefinder.service import ImageFinder, QueryViews, SearchResult
from imagefinder.stores.base import parse_where

router = APIRouter(tags=["search"], dependencies=[ReadAccess])

_QUERY = (
    "bad_request",
    "unauthorized",
    "corrupt_image",
    "image_too_large",
    "unsupported_image",
    "invalid_request",
    "invalid_filter",
    "not_ready",
    "store_unavailable",
    "store_error",
)
_ERRORS = documented(
    *_QUERY, "unknown_id", "unsupported_media_type", "fetch_failed", "text_search_unsupported"
)
# Each file's own refusal is an entry of the 200 answer; these refuse the request as a whole.
_BATCH_ERRORS = documented(
    "bad_request",
    "unauthorized",
    "image_too_large",
    "invalid_request",
    "invalid_filter",
    "not_ready",
    "store_unavailable",
    "store_error",
)


_WHERE_HELP = (
    "Only images whose payload field has this value, as field=value (repeat for several fields, "
    "all must match), e.g. where=source=holidays. Values compare as text; numbers and booleans "
    "as JSON (2020, true)."
)

_VIEWS_HELP = (
    "single: one encoder run. adaptive: when no result is a copy and the image looks framed, "
    "pasted or turned (a gate learned on the collection decides), search again with 7 more views "
    "of it (turned, four corners, centre), which finds pasted, screenshotted and rotated copies at "
    "8 encoder runs. thorough: that second search whenever no result is a copy. Default: the "
    "server's IMAGEFINDER_QUERY_VIEWS. Image queries only."
)
Views = Annotated[QueryViews | None, Query(description=_VIEWS_HELP)]

_SEARCH_BODY = multipart_or_json_body(
    {"file": image_part("The query image (JPEG, PNG, WebP, GIF, BMP or TIFF).")},
    ["file"],
    SearchQuery,
    examples={
        "by url": {"value": {"url": "https://example.org/cat.jpg"}},
        "more like this": {"value": {"id": "photos/cat.jpg"}},
        "by text (CLIP-family models)": {"value": {"text": "red bicycle"}},
    },
)


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Find the k images most similar to a query image: an upload, a URL, or an indexed id",
    openapi_extra=_SEARCH_BODY,
    responses=_ERRORS,
)
async def search(
    request: Request,
    service: Service,
    settings: Settings,
    k: Annotated[int | None, Query(ge=1, description="How many results (default 3)")] = None,
    min_score: Annotated[
        float | None, Query(ge=-1, le=1, description="Leave out results scoring below this")
    ] = None,
    exclude_self: Annotated[bool, Query(description="For an id query, leave the image itself out")] = True,
    where: Annotated[list[WhereCondition] | None, Query(description=_WHERE_HELP)] = None,
    views: Views = None,
) -> SearchResponse:
    k = _check_k(k, settings.default_k, settings.max_k)
    fields = parse_where(where or [])
    started = time.perf_counter()
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        data, filename, _ = await read_form_file(request, service.limits.max_bytes)
        results = await _search_bytes(request, service, data, filename, k, min_score, fields, views)
    elif content_type.startswith("application/json"):
        try:
            query = SearchQuery.model_validate_json(await request.body())
        except ValidationError as exc:
            raise ApiError("invalid_request", describe_validation(exc)) from None
        if query.id is not None:
            results = await run_in_threadpool(service.search_id, query.id, k, min_score, exclude_self, fields)
        elif query.text is not None:
            results = await run_in_threadpool(service.search_text, query.text, k, min_score, fields)
        else:
            data = await run_in_threadpool(service.collection.fetch_url, str(query.url))
            results = await _search_bytes(request, service, data, str(query.url), k, min_score, fields, views)
    elif not content_type:
        raise ApiError(
            "invalid_request",
            "missing query: send multipart/form-data with a file, or application/json with a url or an id",
        )
    else:
        raise ApiError(
            "unsupported_media_type",
            "send multipart/form-data with a file, or application/json with a url or an id",
        )
    return SearchResponse(
        model=_model(service),
        took_ms=round((time.perf_counter() - started) * 1000, 2),
        # Off the event loop: on Milvus, reading the search space may ask the server.
        copy_threshold=await run_in_threadpool(lambda: service.copy_threshold),
        results=[_to_result(r) for r in results],
    )


@router.post(
    "/search/batch",
    response_model=BatchResponse,
    summary="Search with several uploaded images at once (multipart `files`)",
    responses=_BATCH_ERRORS,
)
async def search_batch(
    request: Request,
    service: Service,
    settings: Settings,
    files: Annotated[list[UploadFile], File(description="The query images", min_length=1)],
    k: Annotated[int | None, Query(ge=1)] = None,
    min_score: Annotated[float | None, Query(ge=-1, le=1)] = None,
    where: Annotated[list[WhereCondition] | None, Query(description=_WHERE_HELP)] = None,
    views: Views = None,
) -> BatchResponse:
    """Each image gets its own results or its own error; one bad image does not fail the rest."""
    k = _check_k(k, settings.default_k, settings.max_k)
    fields = parse_where(where or [])
    if len(files) > settings.max_batch_files:
        raise ApiError("invalid_request", f"at most {settings.max_batch_files} files per batch")
    started = time.perf_counter()
    items: list[BatchItem] = []
    prepared = []
    for upload in files:
        name = upload.filename or "<upload>"
        try:
            data = await read_limited(upload.read, service.limits.max_bytes)
            prepared.append((len(items), await run_in_threadpool(service.prepare, data, name)))
            items.append(BatchItem(filename=name))
        except (ImageFinderError, ApiError) as exc:
            items.append(BatchItem(filename=name, error=error_body(exc)))
    if prepared:
        vectors = await run_in_threadpool(service.embed_prepared, [query.pixels for _, query in prepared])
        request.app.state.metrics.encoder_batch.observe(len(prepared))
        for (position, query), vector in zip(prepared, vectors, strict=True):
            hits = await run_in_threadpool(
                service.search_prepared, query, vector, k, min_score, fields, views, _observe(request)
            )
            items[position].results = [_to_result(r) for r in hits]
    return BatchResponse(
        model=_model(service), took_ms=round((time.perf_counter() - started) * 1000, 2), queries=items
    )


async def _search_bytes(
    request: Request,
    service: ImageFinder,
    data: bytes,
    source: str,
    k: int,
    min_score: float | None,
    fields: dict[str, str] | None,
    views: QueryViews | None,
) -> list[SearchResult]:
    query = await run_in_threadpool(service.prepare, data, source)
    vector = await embed_prepared(request, service, query.pixels)
    return await run_in_threadpool(
        service.search_prepared, query, vector, k, min_score, fields, views, _observe(request)
    )


def _observe(request: Request) -> Callable[[int], None]:
    """Where the second query pass reports its encoder batch (the first is the batcher's)."""
    return request.app.state.metrics.encoder_batch.observe  # type: ignore[no-any-return]


def _check_k(k: int | None, default: int, largest: int) -> int:
    k = k or default
    if k > largest:
        raise ApiError("invalid_request", f"k must be at most {largest}")
    return k


def _model(service: ImageFinder) -> ModelInfo:
    return ModelInfo(name=service.model.name, version=service.model.version)


def _to_result(result: SearchResult) -> Result:
    return Result(
        **result.to_dict(),
        file_url=image_url(result.id, "file"),
        thumbnail_url=image_url(result.id, "thumbnail"),
    )
