"""Dependencies shared by the routers: the service and the API settings, from app state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from imagefinder.api.errors import ApiError
from imagefinder.config import ApiSettings
from imagefinder.service import ImageFinder


def _service(request: Request) -> ImageFinder:
    service: ImageFinder = request.app.state.service
    return service


def _settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


Service = Annotated[ImageFinder, Depends(_service)]
Settings = Annotated[ApiSettings, Depends(_settings)]


async def read_limited(upload_read: Callable[[int], Awaitable[bytes]], max_bytes: int) -> bytes:
    """Read at most max_bytes + 1 of an upload, so an oversized one is detected, not buffered."""
    data = await upload_read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, "image_too_large", f"upload exceeds the limit of {max_bytes} bytes")
    return data
