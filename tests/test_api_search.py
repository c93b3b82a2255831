"""POST /search by URL and by id, batch search, auth, readiness, metrics, request ids, CORS, and the
error shape on every route. Real encoder, real photos, a real local HTTP server for URLs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from imagefinder.api import create_app
from imagefinder.blobs import BlobStore
from imagefinder.config import ApiSettings
from imagefinder.encoders.onnx_runtime import OnnxEncoder
from imagefinder.errors import EncoderMismatchError
from imagefinder.fetch import FetchSettings, HttpFetcher
from imagefinder.images import ImageLimits
from imagefinder.service import ImageFinder
from imagefinder.sources import FolderSource
from imagefinder.stores.embedded import EmbeddedStore
from imagefinder.wiring import compose_service
from tests.factories import encode, gradient, png_bomb
from tests.http_server import ImageServer

LIMITS = ImageLimits(max_pixels=20_000_000, max_bytes=3_000_000)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, real_encoder: OnnxEncoder, photos: Path) -> ImageFinder:
    root = tmp_path_factory.mktemp("api-search")
    fetcher = HttpFetcher(FetchSettings(max_bytes=LIMITS.max_bytes, retries=0))
    built = compose_service(
        real_encoder, EmbeddedStore(root / "index"), LIMITS, fetcher=fetcher, blobs=BlobStore(root / "files")
    )
    built.index(FolderSource(photos, LIMITS.max_bytes))
    return built


def client_for(service: ImageFinder, **settings: object) -> TestClient:
    return TestClient(create_app(service, ApiSettings(**settings)))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(service: ImageFinder) -> Iterator[TestClient]:
    with client_for(service, max_k=10) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def server(photos: Path) -> Iterator[ImageServer]:
    with ImageServer({p.name: p.read_bytes() for p in photos.iterdir()}) as running:
        yield running


def test_search_by_url(client: TestClient, server: ImageServer) -> None:
    response = client.post("/search", json={"url": server.url("/img/rocket.jpg")}, params={"k": 2})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results][:1] == ["rocket.jpg"] and len(results) == 2
    assert results[0]["file_url"] == "/images/rocket.jpg/file"


def test_search_by_id_excludes_itself_unless_asked(client: TestClient) -> None:
    more = client.post("/search", json={"id": "motorcycle_left.png"}, params={"k": 3}).json()["results"]
    assert "motorcycle_left.png" not in [r["id"] for r in more] and len(more) == 3
    assert more[0]["id"] == "motorcycle_right.png"  # the other camera of the same scene
    with_self = client.post(
        "/search", json={"id": "motorcycle_left.png"}, params={"k": 3, "exclude_self": "false"}
    ).json()["results"]
    assert with_self[0]["id"] == "motorcycle_left.png" and with_self[0]["score"] == pytest.approx(
        1.0, abs=1e-5
    )


def test_min_score_drops_weak_results(client: TestClient, photos: Path) -> None:
    data = (photos / "chelsea.png").read_bytes()
    response = client.post("/search", params={"k": 10, "min_score": 0.9}, files={"file": ("c.png", data)})
    assert [r["id"] for r in response.json()["results"]] == ["chelsea.png"]


def test_batch_search_reports_each_file(client: TestClient, photos: Path) -> None:
    files = [
        ("files", ("coffee.png", (photos / "coffee.png").read_bytes())),
        ("files", ("bad.jpg", b"not an image")),
        ("files", ("rocket.jpg", (photos / "rocket.jpg").read_bytes())),
    ]
    response = client.post("/search/batch", params={"k": 1}, files=files)
    assert response.status_code == 200, response.text
    queries = response.json()["queries"]
    assert [q["filename"] for q in queries] == ["coffee.png", "bad.jpg", "rocket.jpg"]
    assert queries[0]["results"][0]["id"] == "coffee.png" and queries[2]["results"][0]["id"] == "rocket.jpg"
    assert queries[1]["error"]["code"] == "unsupported_image" and queries[1]["results"] == []


def test_batch_has_a_size_limit(service: ImageFinder) -> None:
    with client_for(service, max_batch_files=2) as small:
        files = [("files", (f"{i}.jpg", encode(gradient(i)))) for i in range(3)]
        response = small.post("/search/batch", files=files)
    assert response.status_code == 422 and "at most 2 files" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"id": "no-such-image"}, 404, "unknown_id"),
        ({"url": "http://127.0.0.1:9/a.jpg", "id": "x"}, 422, "invalid_request"),
        ({}, 422, "invalid_request"),
    ],
)
def test_search_json_errors(client: TestClient, body: dict, status: int, code: str) -> None:
    response = client.post("/search", json=body)
    assert response.status_code == status and response.json()["error"]["code"] == code


def test_unreachable_url_is_a_clear_422(client: TestClient, server: ImageServer) -> None:
    response = client.post("/search", json={"url": server.url("/missing")})
    assert response.status_code == 422 and "HTTP 404" in response.json()["error"]["message"]


def test_writes_need_a_key_when_keys_are_set(service: ImageFinder) -> None:
    data = encode(gradient(555))
    with client_for(service, api_keys=["s3cret", "other"]) as guarded:
        denied = guarded.post("/images", files={"file": ("a.jpg", data)})
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
        wrong = guarded.post("/images", files={"file": ("a.jpg", data)}, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401
        assert guarded.delete("/images/anything").status_code == 401
        ok = guarded.post("/images", files={"file": ("a.jpg", data)}, headers={"X-API-Key": "other"})
        assert ok.status_code == 201
        bearer = guarded.delete(f"/images/{ok.json()['id']}", headers={"Authorization": "Bearer s3cret"})
        assert bearer.status_code == 204
        # Reads stay open by default.
        assert guarded.post("/search", json={"id": "coffee.png"}).status_code == 200


def test_reads_can_need_a_key_too(service: ImageFinder) -> None:
    with client_for(service, api_keys=["k"], keys_for_reads=True) as guarded:
        assert guarded.post("/search", json={"id": "coffee.png"}).status_code == 401
        assert guarded.get("/images/coffee.png").status_code == 401
        assert (
            guarded.post("/search", json={"id": "coffee.png"}, headers={"X-API-Key": "k"}).status_code == 200
        )
        assert guarded.get("/health").status_code == 200  # liveness needs no key


def test_not_ready_until_loaded(service: ImageFinder) -> None:
    release = threading.Event()

    def slow_factory() -> ImageFinder:
        release.wait(30)
        return service

    with TestClient(create_app(slow_factory, ApiSettings(), LIMITS)) as loading:
        assert loading.get("/health").json()["model"] is None
        assert loading.get("/ready").status_code == 503
        busy = loading.post("/search", json={"id": "coffee.png"})
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "not_ready"
        release.set()
        for _ in range(100):
            if loading.get("/ready").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert loading.get("/ready").json()["ready"] is True
        assert loading.post("/search", json={"id": "coffee.png"}).status_code == 200


def test_a_failed_load_is_reported_by_ready() -> None:
    def broken() -> ImageFinder:
        raise EncoderMismatchError("the index was built with another encoder")

    with TestClient(create_app(broken, ApiSettings(), LIMITS)) as failing:
        for _ in range(100):
            if "another encoder" in (failing.get("/ready").json().get("detail") or ""):
                break
            threading.Event().wait(0.05)
        ready = failing.get("/ready")
        assert ready.status_code == 503 and "another encoder" in ready.json()["detail"]
        assert "another encoder" in failing.post("/search", json={"id": "x"}).json()["error"]["message"]


def test_metrics_count_requests_and_batches(client: TestClient, photos: Path) -> None:
    client.post("/search", files={"file": ("c.png", (photos / "coffee.png").read_bytes())})
    text = client.get("/metrics").text
    assert 'imagefinder_requests_total{method="POST",route="/search",status="200"}' in text
    assert "imagefinder_request_seconds_bucket" in text
    assert "imagefinder_encoder_batch_size_count" in text
    assert "imagefinder_index_images" in text


def test_the_second_query_pass_counts_in_the_encoder_batch_metric(client: TestClient) -> None:
    """A query that is no copy of anything gets 7 more views, one encoder batch of 7."""

    def batches() -> tuple[float, float]:
        lines = client.get("/metrics").text.splitlines()
        value = {line.split()[0]: float(line.split()[-1]) for line in lines if not line.startswith("#")}
        return value["imagefinder_encoder_batch_size_count"], value["imagefinder_encoder_batch_size_sum"]

    before = batches()
    stranger = encode(gradient(11, (300, 220)), "PNG")
    answer = client.post("/search?views=adaptive", files={"file": ("g.png", stranger)})
    assert answer.status_code == 200 and not any(r["is_copy"] for r in answer.json()["results"])
    after = batches()
    assert (after[0] - before[0], after[1] - before[1]) == (2, 8)


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = client.get("/health", headers={"X-Request-ID": "bad id\nwith newline"}).headers["x-request-id"]
    assert len(made) == 16 and "\n" not in made


def test_cors_only_when_configured(service: ImageFinder, client: TestClient) -> None:
    origin = {"Origin": "https://app.example"}
    assert "access-control-allow-origin" not in client.get("/health", headers=origin).headers
    with client_for(service, cors_origins=["https://app.example"]) as cors:
        allowed = cors.get("/health", headers=origin)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"


def test_every_route_answers_errors_in_one_shape(client: TestClient) -> None:
    """Walk every route of the app and provoke an error on each."""
    probes = {
        ("POST", "/search"): {"files": {"file": ("b.png", png_bomb())}},
        ("POST", "/search/batch"): {"params": {"k": 0}, "files": {"files": ("a.jpg", b"x")}},
        ("POST", "/images"): {"content": b"x", "headers": {"content-type": "text/plain"}},
        ("GET", "/images/{image_id}"): {"url": "/images/none/such"},
        ("GET", "/images/{image_id}/file"): {"url": "/images/none/file"},
        ("GET", "/images/{image_id}/thumbnail"): {"url": "/images/none/thumbnail"},
        ("GET", "/images"): {"params": {"limit": 0}},
        ("GET", "/duplicates"): {"params": {"threshold": 2}},
        ("DELETE", "/images/{image_id}"): {"url": "/images/none"},
        ("GET", "/health"): {"method": "PUT"},
        ("GET", "/ready"): {"method": "DELETE"},
        ("GET", "/metrics"): {"method": "POST"},
    }
    spec = client.get("/openapi.json").json()["paths"]
    routes = {(method.upper(), path) for path, methods in spec.items() for method in methods}
    assert routes == set(probes), "a route was added: give it a probe here"
    for (method, path), probe in probes.items():
        probe = dict(probe)
        url = probe.pop("url", path)
        response = client.request(probe.pop("method", method), url, **probe)
        assert 400 <= response.status_code < 500, (method, path, response.status_code)
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, (method, path, body)


def test_any_load_failure_shows_in_ready() -> None:
    def broken() -> ImageFinder:
        raise PermissionError("cannot open the index folder")

    with TestClient(create_app(broken, ApiSettings(), LIMITS)) as failing:
        for _ in range(100):
            if failing.get("/ready").json().get("detail") != "loading":
                break
            threading.Event().wait(0.05)
        assert "PermissionError: cannot open the index folder" in failing.get("/ready").json()["detail"]


def test_where_filters_the_results(client: TestClient, service: ImageFinder) -> None:
    rocket = service.store.get("rocket.jpg")
    assert rocket is not None
    query = {"id": next(i for i, _ in service.store.page(0, 10) if i != "rocket.jpg")}
    everything = client.post("/search", json=query, params={"k": 10})
    assert len(everything.json()["results"]) > 1
    only = client.post("/search", json=query, params={"k": 10, "where": f"uri={rocket['uri']}"})
    assert only.status_code == 200, only.text
    assert [r["id"] for r in only.json()["results"]] == ["rocket.jpg"]
    both = client.post(
        "/search", json=query, params=[("k", "10"), ("where", f"uri={rocket['uri']}"), ("where", "width=1")]
    )
    assert both.json()["results"] == []
    width = client.post("/search", json=query, params={"k": 10, "where": f"width={rocket['width']}"})
    assert "rocket.jpg" in [r["id"] for r in width.json()["results"]]
    bad = client.post("/search", json=query, params={"where": "no-equals-sign"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_filter"
