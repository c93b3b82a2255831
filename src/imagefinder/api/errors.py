"""The API's one error shape, `{"error": {"code", "message"}}`, and the map from ImageFinder's
error types to HTTP status codes. The only place status codes are chosen."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from imagefinder.errors import (
    CorruptImageError,
    DuplicateImageError,
    EncoderMismatchError,
    FetchError,
    ImageFinderError,
    ImageTooLargeError,
    InvalidFilterError,
    InvalidIdError,
    StoreError,
    StoreUnavailableError,
    TextSearchUnsupportedError,
    UnknownIdError,
    UnsupportedImageError,
)

# Most specific first: the first matching class decides.
_STATUS: list[tuple[type[ImageFinderError], int, str]] = [
    (ImageTooLargeError, 413, "image_too_large"),
    (UnsupportedImageError, 415, "unsupported_image"),
    (CorruptImageError, 400, "corrupt_image"),
    (UnknownIdError, 404, "unknown_id"),
    (EncoderMismatchError, 409, "encoder_mismatch"),
    (DuplicateImageError, 409, "duplicate_image"),
    (InvalidIdError, 422, "invalid_id"),
    (InvalidFilterError, 422, "invalid_filter"),
    (StoreUnavailableError, 503, "store_unavailable"),
    (StoreError, 502, "store_error"),
    (FetchError, 422, "fetch_failed"),
    (TextSearchUnsupportedError, 422, "text_search_unsupported"),
]


class ApiError(Exception):
    """An error raised by a route itself (bad parameter, missing part), with its status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def status_and_code(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, ApiError):
        return exc.status, exc.code
    for error_type, status, code in _STATUS:
        if isinstance(exc, error_type):
            return status, code
    return 400, "bad_request"


def error_body(exc: Exception) -> dict[str, str]:
    """The `{"code", "message"}` part, for places that report an error without failing (batch)."""
    message = exc.message if isinstance(exc, ApiError) else str(exc)
    return {"code": status_and_code(exc)[1], "message": message}


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def allowed_methods(request: Request) -> list[str]:
    """The methods some route answers at this request's path, asked of the router itself (a
    FULL match per method), so included routers and mounts count too."""
    methods = {
        method
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.routes
        )
    }
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def error_response(status: int, code: str, message: str) -> JSONResponse:
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
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug, not the client's fault: logged with its traceback, answered in the same shape.
        logging.getLogger("imagefinder.api").exception("unexpected error")
        return error_response(500, "internal_error", "an unexpected error occurred; it was logged")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        response = error_response(exc.status_code, code, str(exc.detail))
        if exc.status_code == 405:
            # Every method of every route at this path (a path can have a GET and a DELETE
            # route), with HEAD wherever GET is (`http_methods.HeadAsGet`).
            response.headers["Allow"] = ", ".join(allowed_methods(request))
        return response
