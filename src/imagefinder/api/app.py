"""The FastAPI application. `create_app` takes a ready service, or a function that builds one:
then the server answers at once (`/health`), loads the model and the index in the background,
and answers 503 `not_ready` on the routes that need them until they are loaded (`/ready`).
A request writes no temporary file."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.formparsers import MultiPartParser

from imagefinder import __version__
from imagefinder.api import images, page, search
from imagefinder.api.batcher import MicroBatcher
from imagefinder.api.deps import Service
from imagefinder.api.errors import install_error_handlers
from imagefinder.api.limits import BodyLimit
from imagefinder.api.observability import Metrics, install_observability
from imagefinder.api.schemas import Health, ModelInfo, Ready
from imagefinder.config import ApiSettings
from imagefinder.errors import ImageFinderError
from imagefinder.images import ImageLimits
from imagefinder.service import ImageFinder

# Headroom for the multipart envelope around the file itself.
_MULTIPART_OVERHEAD = 64 * 1024

ServiceFactory = Callable[[], ImageFinder]


def create_app(
    service: ImageFinder | ServiceFactory, settings: ApiSettings, limits: ImageLimits | None = None
) -> FastAPI:
    limits = service.limits if isinstance(service, ImageFinder) else (limits or ImageLimits())
    max_body = limits.max_bytes + _MULTIPART_OVERHEAD

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if isinstance(service, ImageFinder):
            _ready(app, service)
        else:
            threading.Thread(target=_load, args=(app, service), name="load", daemon=True).start()
        yield
        if app.state.batcher is not None:
            app.state.batcher.close()

    app = FastAPI(
        title="ImageFinder",
        version=__version__,
        description="Reverse image search: send an image, get the most similar images of the "
        "collection with their cosine scores. Errors have one shape: "
        '`{"error": {"code": ..., "message": ...}}`.',
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = None
    app.state.load_error = None
    app.state.batcher = None
    app.state.metrics = Metrics(lambda: app.state.service.count() if app.state.service else 0)
    install_error_handlers(app)
    # Starlette spools uploads over 1 MiB to a temporary file; keep uploads up to our own limit
    # in memory instead (the declared length is checked first, so memory stays bounded).
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, max_body)

    install_observability(app, app.state.metrics)
    # Outermost: refuse a body over the limit whether it declares its length or is chunked.
    app.add_middleware(BodyLimit, max_bytes=max_body, limit_for_message=limits.max_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization", "X-Request-ID"],
        )

    @app.get("/health", response_model=Health, summary="Liveness: the process answers", tags=["service"])
    def health(request: Request) -> Health:
        loaded: ImageFinder | None = request.app.state.service
        model = ModelInfo(name=loaded.model.name, version=loaded.model.version) if loaded else None
        return Health(
            status="ok",
            version=__version__,
            model=model,
            images=loaded.count() if loaded else None,
            text_search=bool(loaded and loaded.supports_text),
            index=loaded.store.index_stats() if loaded else None,
            mlflow=loaded.provenance() if loaded else None,
        )

    @app.get(
        "/ready",
        response_model=Ready,
        summary="Readiness: the model and the index are loaded (503 until then)",
        tags=["service"],
        responses={503: {"model": Ready}},
    )
    def ready(request: Request) -> Response:
        loaded: ImageFinder | None = request.app.state.service
        if loaded is None:
            body = Ready(ready=False, detail=request.app.state.load_error or "loading")
            return JSONResponse(body.model_dump(), status_code=503)
        model = ModelInfo(name=loaded.model.name, version=loaded.model.version)
        return JSONResponse(Ready(ready=True, images=loaded.count(), model=model).model_dump())

    @app.get("/metrics", summary="Prometheus metrics", tags=["service"], response_class=Response)
    def metrics(_: Service) -> Response:
        return app.state.metrics.render()

    app.include_router(search.router)
    app.include_router(images.router)
    app.include_router(page.router)
    app.mount("/static", page.static_files(), name="static")
    return app


def _ready(app: FastAPI, service: ImageFinder) -> None:
    settings: ApiSettings = app.state.settings
    if settings.micro_batch:
        app.state.batcher = MicroBatcher(
            service.embed_prepared,
            max_batch=16,
            max_wait_ms=settings.micro_batch_wait_ms,
            on_batch=app.state.metrics.encoder_batch.observe,
        )
    app.state.service = service


def _load(app: FastAPI, factory: ServiceFactory) -> None:
    try:
        _ready(app, factory())
    except Exception as exc:  # any failure must show in /ready, not leave it "loading" for ever
        reason = str(exc) if isinstance(exc, ImageFinderError) else f"{type(exc).__name__}: {exc}"
        app.state.load_error = f"cannot load: {reason}"
        logging.getLogger("imagefinder.api").error("%s; /ready will answer 503", app.state.load_error)
