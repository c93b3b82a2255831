"""The HTTP API through FastAPI's test client, with the real encoder and real photos."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from imagefinder.api import create_app
from imagefinder.config import ApiSettings
from imagefinder.encoders.onnx_runtime import OnnxEncoder
from imagefinder.images import ImageLimits
from imagefinder.sources import FolderSource
from imagefinder.stores.embedded import EmbeddedStore
from imagefinder.wiring import compose_service
from tests.factories import encode, gradient, png_bomb

LIMITS = ImageLimits(max_pixels=20_000_000, max_bytes=3_000_000)


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, real_encoder: OnnxEncoder, photos: Path
) -> Iterator[TestClient]:
    store = EmbeddedStore(tmp_path_factory.mktemp("api-index"))
    service = compose_service(real_encoder, store, LIMITS)
    service.index(FolderSource(photos, LIMITS.max_bytes))
    with TestClient(create_app(service, ApiSettings(max_k=10))) as test_client:
        yield test_client
    service.close()


def assert_error(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code and body["error"]["message"]
    return body


def test_search_returns_k_results_sorted(client: TestClient, photos: Path) -> None:
    data = (photos / "chelsea.png").read_bytes()
    response = client.post("/search", params={"k": 3}, files={"file": ("cat.png", data, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "efficientnet-lite0", "version": "2-int8-2"}
    results = body["results"]
    assert len(results) == 3 and results[0]["id"] == "chelsea.png"
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert results[0]["uri"].endswith("chelsea.png") and body["took_ms"] > 0


def test_default_k_is_3(client: TestClient, photos: Path) -> None:
    response = client.post("/search", files={"file": ("a.jpg", (photos / "rocket.jpg").read_bytes())})
    assert len(response.json()["results"]) == 3


def test_health(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["images"] >= 12 and body["model"]["name"] == "efficientnet-lite0"


def test_missing_file_is_422(client: TestClient) -> None:
    assert_error(client.post("/search"), 422, "invalid_request")


@pytest.mark.parametrize("k", [0, 11, -1])
def test_bad_k_is_422(client: TestClient, k: int) -> None:
    response = client.post("/search", params={"k": k}, files={"file": ("a.jpg", encode(gradient(1)))})
    assert_error(response, 422, "invalid_request")


def test_not_an_image_is_415(client: TestClient) -> None:
    response = client.post("/search", files={"file": ("a.txt", b"just text", "text/plain")})
    assert_error(response, 415, "unsupported_image")


def test_corrupt_image_is_400(client: TestClient) -> None:
    data = encode(gradient(4, (300, 200)))[:300]
    assert_error(client.post("/search", files={"file": ("a.jpg", data)}), 400, "corrupt_image")


def test_decompression_bomb_is_413_with_the_limit(client: TestClient) -> None:
    body = assert_error(client.post("/search", files={"file": ("b.png", png_bomb())}), 413, "image_too_large")
    assert "20000000" in body["error"]["message"]


@pytest.mark.parametrize("size", [3_000_100, 3_200_000])
def test_oversized_upload_is_413(client: TestClient, size: int) -> None:
    # 3_000_100 passes the Content-Length check (which allows for the multipart envelope) and is
    # caught while reading the file; 3_200_000 is refused before the body is read.
    response = client.post("/search", files={"file": ("big.jpg", b"\xff\xd8" + b"0" * size)})
    body = assert_error(response, 413, "image_too_large")
    assert "3000000" in body["error"]["message"]


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/search"), 405, "method_not_allowed")


def test_openapi_documents_search(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/search" in spec["paths"] and "/health" in spec["paths"]


def test_the_openapi_document_describes_what_this_server_accepts(client: TestClient, photos: Path) -> None:
    """Image parts say their media types, the batch its limit, ids their rule; text queries are
    not offered by a model without a text tower, and a query gives exactly one string."""
    paths = client.get("/openapi.json").json()["paths"]
    search = paths["/search"]["post"]["requestBody"]["content"]
    assert "image/png" in search["multipart/form-data"]["encoding"]["file"]["contentType"]
    query = search["application/json"]["schema"]
    assert set(query["properties"]) == {"url", "id"} and query["additionalProperties"] is False
    assert query["oneOf"] == [{"required": ["url"]}, {"required": ["id"]}]
    assert all("text" not in example["value"] for example in search["application/json"]["examples"].values())
    added = paths["/images"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert added["properties"]["id"]["pattern"].startswith("^$|^(?!")

    batch = client.get("/openapi.json").json()["components"]["schemas"]["Body_search_batch_search_batch_post"]
    assert batch["properties"]["files"]["maxItems"] == ApiSettings().max_batch_files

    for body in ({}, {"id": "cat.png", "url": "http://x.org/a.png"}, {"id": None}, {"id": "cat.png", "k": 2}):
        assert_error(client.post("/search", json=body), 422, "invalid_request")
    assert client.post("/search", json={"id": photos.name + "/nope"}).status_code == 404


def test_a_large_upload_stays_in_memory(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Starlette spools uploads over 1 MiB to a temporary file by default; ours must not."""
    import tempfile

    import numpy as np
    from PIL import Image

    rolled: list[int] = []
    original = tempfile.SpooledTemporaryFile.rollover

    def spy(self: tempfile.SpooledTemporaryFile) -> None:  # type: ignore[type-arg]
        rolled.append(1)
        original(self)

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", spy)
    noise = np.random.default_rng(0).integers(0, 255, (1000, 1200, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG", quality=95)
    assert len(data) > 1024 * 1024
    response = client.post("/search", files={"file": ("big.jpg", data, "image/jpeg")})
    assert response.status_code == 200 and rolled == []


def test_a_chunked_upload_over_the_limit_is_413(client: TestClient) -> None:
    """No Content-Length (chunked transfer): the body is counted as it is read, and refused."""

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(64):
            yield b"0" * 65536  # 4 MiB in all, over the 3 MB limit

    response = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "image_too_large")
