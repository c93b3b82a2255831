"""The collection's images: add (upload or URL), read metadata, fetch the original, delete.

Ids may contain slashes (folder ids are relative paths), so routes take the id as a path."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from imagefinder.api.deps import ReadAccess, Service, WriteAccess, read_form_file
from imagefinder.api.errors import ApiError, describe_validation, documented
from imagefinder.api.schemas import (
    Added,
    AddUrl,
    ImagePage,
    ImageRecord,
    ImageSummary,
    ModelInfo,
    id_part,
    image_part,
    multipart_or_json_body,
)

# What every route over the index may answer while it loads or its store is away.
_STORE = ("not_ready", "store_unavailable", "store_error")
# What an uploaded or downloaded image may be refused for.
_UPLOAD = (
    "bad_request",
    "corrupt_image",
    "image_too_large",
    "unsupported_image",
    "unsupported_media_type",
    "invalid_request",
    "fetch_failed",
    *_STORE,
)

router = APIRouter(prefix="/images", tags=["images"])

_ADD_BODY = multipart_or_json_body(
    {
        "file": image_part("The image (JPEG, PNG, WebP, GIF, BMP or TIFF)."),
        "id": id_part(),
    },
    ["file"],
    AddUrl,
)


@router.post(
    "",
    response_model=Added,
    status_code=201,
    summary="Add one image: a multipart upload (`file`, optional `id`) or JSON {url, id}",
    openapi_extra=_ADD_BODY,
    dependencies=[WriteAccess],
    responses={
        200: {"description": "Already indexed under this id"},
        **documented(*_UPLOAD, "unauthorized", "duplicate_image", "encoder_mismatch", "invalid_id"),
    },
)
async def add_image(request: Request, response: Response, service: Service) -> Added:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        data, _, fields = await read_form_file(request, service.limits.max_bytes)
        ids = [value for name, value in fields if name == "id"]
        if len(ids) > 1:
            raise ApiError("invalid_request", f"id: one part named 'id' expected, got {len(ids)}")
        image_id = ids[0] if ids and ids[0] else None  # empty: the content hash, as when left out
        result = await run_in_threadpool(service.collection.add_bytes, data, image_id)
    elif content_type.startswith("application/json"):
        try:
            body = AddUrl.model_validate_json(await request.body())
        except ValidationError as exc:
            raise ApiError("invalid_request", describe_validation(exc)) from None
        result = await run_in_threadpool(service.collection.add_url, body.url, body.id)
    elif not content_type:
        raise ApiError(
            "invalid_request",
            "missing image: send multipart/form-data with a file, or application/json with a url",
        )
    else:
        raise ApiError(
            "unsupported_media_type",
            "send multipart/form-data with a file, or application/json with a url",
        )
    request.app.state.duplicate_scans.clear()
    if not result.created:
        response.status_code = 200
    return Added(id=result.id, created=result.created, replaced=result.replaced)


@router.get(
    "",
    response_model=ImagePage,
    summary="Browse the collection: a page of images in id order",
    dependencies=[ReadAccess],
    responses=documented("unauthorized", "invalid_request", *_STORE),
)
def list_images(
    service: Service,
    # Bounded: SQLite integers are 64-bit (the schemathesis fuzz found offset=2**63 -> 500).
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 48,
) -> ImagePage:
    images = [
        ImageSummary(
            id=image_id,
            uri=str(payload.get("uri", "")),
            width=payload.get("width"),
            height=payload.get("height"),
            thumbnail_url=image_url(image_id, "thumbnail"),
            file_url=image_url(image_id, "file"),
        )
        for image_id, payload in service.collection.browse(offset, limit)
    ]
    model = ModelInfo(name=service.model.name, version=service.model.version)
    return ImagePage(total=service.count(), offset=offset, limit=limit, model=model, images=images)


@router.get(
    "/{image_id:path}/thumbnail",
    summary="A small JPEG of the image (long side 256 px), cached",
    responses=documented(
        "unauthorized", "unknown_id", "invalid_request", "corrupt_image", "image_too_large", *_STORE
    ),
    response_class=Response,
    dependencies=[ReadAccess],
)
def image_thumbnail(image_id: str, service: Service) -> Response:
    path = service.collection.thumbnail(image_id)
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})


@router.get(
    "/{image_id:path}/file",
    summary="The original image (or a redirect to its URL)",
    responses=documented("unauthorized", "unknown_id", "invalid_request", *_STORE),
    response_class=Response,
    dependencies=[ReadAccess],
)
def image_file(image_id: str, service: Service) -> Response:
    location = service.collection.file_location(image_id)
    if location.path is not None:
        return FileResponse(location.path)
    return RedirectResponse(str(location.url), status_code=307)


@router.get(
    "/{image_id:path}",
    response_model=ImageRecord,
    summary="Metadata of one image",
    dependencies=[ReadAccess],
    responses=documented("unauthorized", "unknown_id", "invalid_request", *_STORE),
)
def get_image(image_id: str, service: Service) -> ImageRecord:
    return ImageRecord(id=image_id, payload=dict(service.collection.get(image_id)))


@router.delete(
    "/{image_id:path}",
    status_code=204,
    summary="Remove one image from the index",
    responses=documented("unauthorized", "unknown_id", "invalid_request", *_STORE),
    response_class=Response,
    dependencies=[WriteAccess],
)
def delete_image(image_id: str, request: Request, service: Service) -> Response:
    service.collection.delete(image_id)
    request.app.state.duplicate_scans.clear()
    return Response(status_code=204)


def image_url(image_id: str, what: str) -> str:
    """This API's link to an image's `file` or `thumbnail`."""
    # Every character escaped, "/" too: a link is one path segment that no client normalises.
    return f"/images/{quote(image_id, safe='')}/{what}"
