"""The FastAPI application. `create_app` receives a ready service; the model and the index are
loaded before the first request, and a request writes no temporary file."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from starlette.formparsers import MultiPartParser

from imagefinder import __version__
from imagefinder.api import images, search
from imagefinder.api.deps import Service
from imagefinder.api.errors import error_response, install_error_handlers
from imagefinder.api.schemas import Health, ModelInfo
from imagefinder.config import ApiSettings
from imagefinder.service import ImageFinder

# Headroom for the multipart envelope around the file itself.
_MULTIPART_OVERHEAD = 64 * 1024


def create_app(service: ImageFinder, settings: ApiSettings) -> FastAPI:
    app = FastAPI(
        title="ImageFinder",
        version=__version__,
        description="Reverse image search: POST an image, get the most similar images of the collection.",
    )
    app.state.service = service
    app.state.settings = settings
    install_error_handlers(app)
    max_body = service.limits.max_bytes + _MULTIPART_OVERHEAD
    # Starlette spools uploads over 1 MiB to a temporary file; keep uploads up to our own limit
    # in memory instead (the declared length is checked first, so memory stays bounded).
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, max_body)

    @app.middleware("http")
    async def refuse_oversized_bodies(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_body:
            message = f"request body exceeds the limit of {service.limits.max_bytes} bytes"
            return error_response(413, "image_too_large", message)
        return await call_next(request)

    @app.get("/health", response_model=Health, summary="Liveness, model and index size", tags=["service"])
    def health(service: Service) -> Health:
        model = ModelInfo(name=service.model.name, version=service.model.version)
        return Health(status="ok", version=__version__, model=model, images=service.count())

    app.include_router(search.router)
    app.include_router(images.router)
    return app
