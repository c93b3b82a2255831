"""The FastAPI application. `create_app` takes a ready service, or a function that builds one:
then the server answers at once (`/health`), loads the model and the index in the background,
and answers 503 `not_ready` on the routes that need them until they are loaded (`/ready`).
A request writes no temporary file."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.formparsers import MultiPartParser

from imagefinder import __version__
from imagefinder.api import duplicates, images, page, search
from imagefinder.api.batcher import MicroBatcher
from imagefinder.api.deps import Service
from imagefinder.api.errors import install_error_handlers
from imagefinder.api.http_methods import HeadAsGet, MethodTable
from imagefinder.api.limits import BodyLimit
from imagefinder.api.observability import Metrics, install_observability
from imagefinder.api.openapi import install_openapi
from imagefinder.api.schemas import Health, ModelInfo, Ready
from imagefinder.config import ApiSettings
from imagefinder.errors import ImageFinderError
from imagefinder.images import ImageLimits
from imagefinder.service import ImageFinder

# Headroom for the multipart envelope around the file itself.
_MULTIPART_OVERHEAD = 64 * 1024

ServiceFactory = Callable[[], ImageFinder]


def create_app(
    service: ImageFinder | ServiceFactory,
    settings: ApiSettings,
    limits: ImageLimits | None = None,
    follow: Callable[[], str] | None = None,
) -> FastAPI:
    """`follow` (with a factory): a function whose value changes when another index generation
    is switched in; the app then builds the new service in the background and swaps it in,
    serving the old one until then (see `GenerationFollower`)."""
    limits = service.limits if isinstance(service, ImageFinder) else (limits or ImageLimits())
    max_body = limits.max_bytes + _MULTIPART_OVERHEAD

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        follower = None
        if isinstance(service, ImageFinder):
            _ready(app, service)
        elif follow is not None:
            follower = GenerationFollower(app, service, follow)
            follower.start()
        else:
            threading.Thread(target=_load, args=(app, service), name="load", daemon=True).start()
        yield
        if follower is not None:
            follower.stop()
        for batcher in list(app.state.batchers.values()):
            batcher.close()

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
    app.state.batchers = {}  # id(service) -> its MicroBatcher
    app.state.duplicate_scans = duplicates.ScanCache()
    app.state.metrics = Metrics(lambda: app.state.service.count() if app.state.service else 0)
    install_error_handlers(app)
    # Starlette spools uploads over 1 MiB to a temporary file; keep uploads up to our own limit
    # in memory instead (the declared length is checked first, so memory stays bounded).
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, max_body)

    install_observability(app, app.state.metrics)
    # Refuse a body over the limit whether it declares its length or is chunked, before anything.
    batch_bytes = settings.max_batch_files * max_body
    app.add_middleware(
        BodyLimit,
        max_bytes=max_body,
        limit_for_message=limits.max_bytes,
        per_path={"/search/batch": (batch_bytes, settings.max_batch_files * limits.max_bytes)},
    )
    app.add_middleware(HeadAsGet)  # outermost: a HEAD runs as its GET through everything else
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
            mlflow=loaded.maintenance.provenance() if loaded else None,
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
    app.include_router(duplicates.router)
    app.include_router(page.router)
    app.mount("/static", page.static_files(), name="static")
    app.state.methods = MethodTable(
        [
            *app.routes,
            *search.router.routes,
            *images.router.routes,
            *duplicates.router.routes,
            *page.router.routes,
        ]
    )
    install_openapi(app, settings)
    return app


def _ready(app: FastAPI, service: ImageFinder) -> None:
    """Serve `service` from the next request on (its own micro-batcher with it: a query is
    embedded by the encoder of the service that searches it)."""
    settings: ApiSettings = app.state.settings
    if settings.micro_batch:
        app.state.batchers[id(service)] = MicroBatcher(
            service.embed_prepared,
            max_batch=16,
            max_wait_ms=settings.micro_batch_wait_ms,
            on_batch=app.state.metrics.encoder_batch.observe,
        )
    app.state.service = service


def _retire(app: FastAPI, service: ImageFinder) -> None:
    """Close a service that is no longer served, once the requests that took it have had time
    to finish."""
    batcher = app.state.batchers.pop(id(service), None)
    if batcher is not None:
        batcher.close()
    service.close()


class GenerationFollower:
    """Loads the service, then watches `token` and, when it changes (another index generation
    was switched in), builds the new service in the background and swaps it in. Requests keep
    being answered by the old service meanwhile and never fail because of the switch; the old
    one is closed RETIRE_AFTER_S later. A new generation that fails to load is logged, the old
    one kept, and the load tried again after RETRY_FIRST_S, doubling up to RETRY_MAX_S: a
    registry or a Milvus server that was briefly out of reach must not leave this server on a
    generation that later switches retire and remove."""

    POLL_S = 0.5
    RETIRE_AFTER_S = 30.0
    RETRY_FIRST_S = 5.0
    RETRY_MAX_S = 300.0

    def __init__(self, app: FastAPI, factory: ServiceFactory, token: Callable[[], str]) -> None:
        self._app = app
        self._factory = factory
        self._token = token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="generations", daemon=True)
        self._log = logging.getLogger("imagefinder.api")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        loaded = self._read_token()
        _load(self._app, self._factory)
        wait_s, retry_at = self.RETRY_FIRST_S, 0.0
        while not self._stop.wait(self.POLL_S):
            token = self._read_token()
            if token is None or token == loaded or time.monotonic() < retry_at:
                continue
            try:
                fresh = self._factory()
            except Exception as exc:  # noqa: BLE001
                self._log.error(
                    "the new index generation did not load (still serving the old one; trying again in "
                    "%.0f s): %s",
                    wait_s,
                    exc,
                )
                retry_at = time.monotonic() + wait_s
                wait_s = min(2 * wait_s, self.RETRY_MAX_S)
                continue
            loaded, wait_s, retry_at = token, self.RETRY_FIRST_S, 0.0
            old = self._app.state.service
            _ready(self._app, fresh)
            self._app.state.load_error = None
            self._log.info("now serving %s v%s", fresh.model.name, fresh.model.version)
            if old is not None:
                timer = threading.Timer(self.RETIRE_AFTER_S, _retire, args=(self._app, old))
                timer.daemon = True
                timer.start()

    def _read_token(self) -> str | None:
        try:
            return self._token()
        except Exception as exc:  # noqa: BLE001  (an unreadable pointer: keep serving, say why)
            self._log.error("cannot read the served index generation: %s", exc)
            return None


def _load(app: FastAPI, factory: ServiceFactory) -> None:
    try:
        _ready(app, factory())
    except Exception as exc:  # any failure must show in /ready, not leave it "loading" for ever
        reason = str(exc) if isinstance(exc, ImageFinderError) else f"{type(exc).__name__}: {exc}"
        app.state.load_error = f"cannot load: {reason}"
        logging.getLogger("imagefinder.api").error("%s; /ready will answer 503", app.state.load_error)
