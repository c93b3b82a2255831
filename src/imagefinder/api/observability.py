"""Request ids, one structured log line per request, and Prometheus metrics.

Metrics live in a registry of the app's own (not the process-global one), so several apps in one
process (the tests) do not collide. Headers are never logged: they may carry API keys."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

access_log = logging.getLogger("imagefinder.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Metrics:
    def __init__(self, index_size: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "imagefinder_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "imagefinder_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.encoder_batch = Histogram(
            "imagefinder_encoder_batch_size",
            "Images per encoder call while serving",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=self.registry,
        )
        size = Gauge("imagefinder_index_images", "Images in the index", registry=self.registry)
        size.set_function(index_size)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


# (HEAD arrives here as GET: `http_methods.HeadAsGet` runs outside.)
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def install_observability(app: FastAPI, metrics: Metrics) -> None:
    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        incoming = request.headers.get("x-request-id", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex[:16]
        request.state.request_id = request_id
        started = time.perf_counter()
        response = await call_next(request)
        elapsed = time.perf_counter() - started
        route = getattr(request.scope.get("route"), "path", "unmatched")
        # Clients choose the method: a label per made-up method would grow the series unboundedly.
        method = request.method if request.method in KNOWN_METHODS else "other"
        metrics.requests.labels(method, route, str(response.status_code)).inc()
        metrics.latency.labels(method, route).observe(elapsed)
        response.headers["X-Request-ID"] = request_id
        # Safe defaults for every answer: no MIME sniffing, no referrer leaks, no framing.
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        access_log.info(
            json.dumps(
                {
                    "request_id": request_id,
                    "method": request.method,
                    "route": route,
                    "status": response.status_code,
                    "ms": round(elapsed * 1000, 2),
                }
            )
        )
        return response
