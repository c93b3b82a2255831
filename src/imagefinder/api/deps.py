"""Dependencies shared by the routers: the service (or 503 while it loads), the settings, the
micro-batcher and API-key checks."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Annotated

import numpy as np
from fastapi import Depends, Request
from numpy.typing import NDArray
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from imagefinder.api.errors import ApiError
from imagefinder.config import ApiSettings
from imagefinder.service import ImageFinder


def _service(request: Request) -> ImageFinder:
    service: ImageFinder | None = request.app.state.service
    if service is None:
        reason = request.app.state.load_error or "the model and the index are still loading"
        raise ApiError("not_ready", reason)
    return service


def _settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


Service = Annotated[ImageFinder, Depends(_service)]
Settings = Annotated[ApiSettings, Depends(_settings)]


def _key_matches(request: Request, settings: ApiSettings) -> bool:
    given = request.headers.get("x-api-key", "")
    if not given and request.headers.get("authorization", "").lower().startswith("bearer "):
        given = request.headers["authorization"][7:].strip()
    # Compare with every key, in constant time, so timing reveals neither key nor which matched.
    matches = [hmac.compare_digest(given.encode(), key.encode()) for key in settings.api_keys]
    return bool(given) and any(matches)


def require_write_key(request: Request, settings: Settings) -> None:
    if settings.api_keys and not _key_matches(request, settings):
        raise ApiError("unauthorized", "this operation needs a valid API key in the X-API-Key header")


def require_read_key(request: Request, settings: Settings) -> None:
    if settings.keys_for_reads:
        require_write_key(request, settings)


WriteAccess = Depends(require_write_key)
ReadAccess = Depends(require_read_key)


async def embed_prepared(
    request: Request, service: ImageFinder, prepared: NDArray[np.float32]
) -> NDArray[np.float32]:
    """One query's vector: through the micro-batcher when it is on, else directly."""
    batcher = request.app.state.batchers.get(id(service))
    if batcher is not None:
        vector: NDArray[np.float32] = await batcher.embed(prepared)
        return vector
    request.app.state.metrics.encoder_batch.observe(1)
    return (await run_in_threadpool(service.embed_prepared, [prepared]))[0]


async def read_limited(upload_read: Callable[[int], Awaitable[bytes]], max_bytes: int) -> bytes:
    """Read at most max_bytes + 1 of an upload, so an oversized one is detected, not buffered."""
    data = await upload_read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError("image_too_large", f"upload exceeds the limit of {max_bytes} bytes")
    return data


class _Utf8FormParser(MultiPartParser):
    """Starlette's multipart parser, except that a text part that is not valid UTF-8 is refused:
    Starlette would decode it as Latin-1, so the same bytes would be one id in a form and another
    (holding U+FFFD, which the id rule refuses) in a URL."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                bytes(part.data).decode("utf-8")
            except UnicodeDecodeError:
                raise MultiPartException(f"the form field {part.field_name!r} is not valid UTF-8") from None
        super().on_part_end()


async def read_form_file(request: Request, max_bytes: int) -> tuple[bytes, str, list[tuple[str, str]]]:
    """The multipart part named `file` (at most `max_bytes`), its file name, and the form's text
    fields as (name, value) in order."""
    try:
        async with aclosing(request.stream()) as stream:
            form = await _Utf8FormParser(request.headers, stream).parse()
    except MultiPartException as exc:
        raise ApiError("bad_request", exc.message) from None
    try:
        parts = form.getlist("file")
        if len(parts) > 1:
            # One query per request: taking one of several parts would answer a question not asked.
            raise ApiError("invalid_request", f"file: one part named 'file' expected, got {len(parts)}")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError("invalid_request", "file: a multipart part named 'file' is required")
        data = await read_limited(upload.read, max_bytes)
        fields = [(name, value) for name, value in form.multi_items() if isinstance(value, str)]
        return data, upload.filename or "<upload>", fields
    finally:
        await form.close()
