"""The API's one error shape, `{"error": {"code", "message"}}`, and the map from ImageFinder's
error types to HTTP status codes. The only place status codes are chosen."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagefinder.api.schemas import ErrorResponse
from imagefinder.errors import (
    CorruptImageError,
    DuplicateImageError,
    EncoderMismatchError,
    FetchError,
    ImageFinderError,
    ImageTooLargeError,
    InvalidFilterError,
    InvalidIdError,
    InvalidScanError,
    StoreError,
    StoreUnavailableError,
    TextSearchUnsupportedError,
    UnknownIdError,
    UnsupportedImageError,
)

# Every error code the API answers with (besides `http_error`, any other refusal of the HTTP
# layer, which carries that refusal's own status): its status and what it means. The handlers take the
# status from here, and the OpenAPI document lists each route's codes from here (`documented`).
CODES: dict[str, tuple[int, str]] = {
    "bad_request": (400, "the request cannot be parsed (a malformed multipart body)"),
    "corrupt_image": (400, "the file is not a readable image"),
    "unauthorized": (401, "this operation needs a valid API key"),
    "unknown_id": (404, "no indexed image has this id, or its original is gone"),
    "not_found": (404, "no such route"),
    "method_not_allowed": (405, "the route does not answer this method; Allow lists those it does"),
    "duplicate_image": (409, "the same bytes are indexed under another id"),
    "encoder_mismatch": (409, "the index was built by another encoder"),
    "image_too_large": (413, "the body, the file or its pixel count exceeds a limit (named)"),
    "unsupported_image": (415, "not an image format ImageFinder accepts"),
    "unsupported_media_type": (415, "the body is neither multipart/form-data nor JSON"),
    "invalid_request": (422, "a missing or invalid parameter, field or part"),
    "invalid_id": (422, "an id that URLs, logs or terminals would misread"),
    "invalid_filter": (422, "a where= filter outside the filter grammar"),
    "fetch_failed": (422, "the URL could not be downloaded, or points at a non-public address"),
    "text_search_unsupported": (422, "a text query to a model that has no text tower"),
    "internal_error": (500, "a bug: logged with its traceback"),
    "store_error": (502, "the vector store refused the request"),
    "not_ready": (503, "the model and the index are still loading"),
    "store_unavailable": (503, "the vector store cannot be reached"),
}
# Answered by the HTTP layer on any path rather than by a route.
ANY_ROUTE = ("not_found", "method_not_allowed", "internal_error")

# Most specific first: the first matching class decides.
_CODE_OF: list[tuple[type[ImageFinderError], str]] = [
    (ImageTooLargeError, "image_too_large"),
    (UnsupportedImageError, "unsupported_image"),
    (CorruptImageError, "corrupt_image"),
    (UnknownIdError, "unknown_id"),
    (EncoderMismatchError, "encoder_mismatch"),
    (DuplicateImageError, "duplicate_image"),
    (InvalidIdError, "invalid_id"),
    (InvalidFilterError, "invalid_filter"),
    (InvalidScanError, "invalid_request"),
    (StoreUnavailableError, "store_unavailable"),
    (StoreError, "store_error"),
    (FetchError, "fetch_failed"),
    (TextSearchUnsupportedError, "text_search_unsupported"),
]


class ApiError(Exception):
    """An error raised by a route itself (bad parameter, missing part); its status is its code's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.status = CODES[code][0]
        self.code = code
        self.message = message


def status_and_code(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, ApiError):
        return exc.status, exc.code
    for error_type, code in _CODE_OF:
        if isinstance(exc, error_type):
            return CODES[code][0], code
    return CODES["bad_request"][0], "bad_request"


def documented(*codes: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route that can answer these codes (and those of every
    route): one entry per status, in the one error shape, naming its codes."""
    by_status: dict[int, list[str]] = {}
    for code in (*codes, *ANY_ROUTE):
        if code not in ("not_found", "method_not_allowed"):  # not the route's own answers
            by_status.setdefault(CODES[code][0], []).append(code)
    return {
        status: {
            "model": ErrorResponse,
            "description": "; ".join(f"`{code}`: {CODES[code][1]}" for code in listed),
            "x-error-codes": listed,
        }
        for status, listed in sorted(by_status.items())
    }


def error_body(exc: Exception) -> dict[str, str]:
    """The `{"code", "message"}` part, for places that report an error without failing (batch)."""
    message = exc.message if isinstance(exc, ApiError) else str(exc)
    return {"code": status_and_code(exc)[1], "message": message}


def describe_validation(exc: ValidationError | RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def error_response(status: int, code: str, message: str) -> JSONResponse:
    """The one error shape. `status` is CODES[code]'s, except for `http_error` (any other
    refusal of the HTTP layer, with its own status)."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(ImageFinderError)
    async def _domain_error(_: Request, exc: ImageFinderError) -> JSONResponse:
        status, code = status_and_code(exc)
        return error_response(status, code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # A where= condition outside the grammar, caught by the parameter's declared pattern, is
        # the same refusal as one the store's filter check makes.
        filters = all(tuple(error.get("loc", ()))[:2] == ("query", "where") for error in exc.errors())
        code = "invalid_filter" if filters else "invalid_request"
        return error_response(CODES[code][0], code, describe_validation(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug, not the client's fault: logged with its traceback, answered in the same shape.
        logging.getLogger("imagefinder.api").exception("unexpected error")
        return error_response(
            CODES["internal_error"][0], "internal_error", "an unexpected error occurred; it was logged"
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        response = error_response(exc.status_code, code, str(exc.detail))
        if exc.status_code == 405:
            # Every method of every route at this path (a path can have a GET and a DELETE
            # route), with HEAD wherever GET is (`http_methods.HeadAsGet`).
            # The resource's methods, with HEAD wherever GET is (`http_methods`); a mount (the
            # static files) says its own.
            own = (exc.headers or {}).get("Allow", "")
            response.headers["Allow"] = request.app.state.methods.allowed(request.scope["path"]) or own
        return response
