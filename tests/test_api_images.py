"""POST/GET/DELETE /images through the app, with the real encoder and a real local HTTP server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from imagefinder.api import create_app
from imagefinder.blobs import BlobStore
from imagefinder.config import ApiSettings
from imagefinder.encoders.onnx_runtime import OnnxEncoder
from imagefinder.fetch import FetchSettings, HttpFetcher
from imagefinder.images import ImageLimits, content_hash
from imagefinder.service import ImageFinder
from imagefinder.sources import FolderSource
from imagefinder.stores.embedded import EmbeddedStore
from imagefinder.wiring import compose_service
from tests.factories import encode, gradient
from tests.http_server import ImageServer

LIMITS = ImageLimits(max_pixels=20_000_000, max_bytes=3_000_000)
FRESH = encode(gradient(4242, (300, 200)))  # not in the collection


@pytest.fixture
def server(photos: Path) -> Iterator[ImageServer]:
    images = {p.name: p.read_bytes() for p in photos.iterdir()}
    images["fresh.jpg"] = FRESH
    with ImageServer(images) as running:
        yield running


def make_client(tmp_path: Path, encoder: OnnxEncoder, photos: Path, allow_private: bool) -> TestClient:
    fetcher = HttpFetcher(FetchSettings(max_bytes=LIMITS.max_bytes, allow_private=allow_private, retries=0))
    service = compose_service(
        encoder,
        EmbeddedStore(tmp_path / "index"),
        LIMITS,
        fetcher=fetcher,
        blobs=BlobStore(tmp_path / "files"),
    )
    service.index(FolderSource(photos, LIMITS.max_bytes))
    return TestClient(create_app(service, ApiSettings()))


@pytest.fixture
def client(tmp_path: Path, real_encoder: OnnxEncoder, photos: Path) -> Iterator[TestClient]:
    with make_client(tmp_path, real_encoder, photos, allow_private=True) as test_client:
        yield test_client


def search_ids(client: TestClient, data: bytes, k: int = 3) -> list[str]:
    response = client.post("/search", params={"k": k}, files={"file": ("q.jpg", data)})
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["results"]]


def test_upload_is_searchable_at_once_and_served_back(client: TestClient) -> None:
    data = encode(gradient(77, (320, 240)))
    response = client.post("/images", files={"file": ("new.jpg", data, "image/jpeg")})
    assert response.status_code == 201, response.text
    assert response.json() == {"id": content_hash(data), "created": True, "replaced": False}
    image_id = response.json()["id"]
    assert search_ids(client, data)[0] == image_id
    payload = client.get(f"/images/{image_id}").json()["payload"]
    assert payload["width"] == 320 and payload["hash"] == image_id and payload["collection"] == "api"
    original = client.get(f"/images/{image_id}/file")
    assert original.status_code == 200 and original.content == data


def test_upload_with_an_id_and_again(client: TestClient) -> None:
    data = encode(gradient(78))
    first = client.post("/images", files={"file": ("a.jpg", data)}, data={"id": "shop/item 1"})
    assert first.status_code == 201 and first.json()["id"] == "shop/item 1"
    again = client.post("/images", files={"file": ("a.jpg", data)}, data={"id": "shop/item 1"})
    assert again.status_code == 200 and again.json() == {
        "id": "shop/item 1",
        "created": False,
        "replaced": False,
    }
    other = client.post("/images", files={"file": ("a.jpg", data)}, data={"id": "another"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "duplicate_image"
    assert "shop/item 1" in other.json()["error"]["message"]
    assert client.get("/images/shop/item 1").json()["id"] == "shop/item 1"


def test_add_by_url_keeps_the_original(client: TestClient, server: ImageServer) -> None:
    url = server.url("/img/fresh.jpg")
    response = client.post("/images", json={"url": url, "id": "from-url"})
    assert response.status_code == 201, response.text
    assert client.get("/images/from-url").json()["payload"]["uri"] == url
    assert search_ids(client, FRESH)[0] == "from-url"
    # The original was kept, so it is served from disk rather than redirected.
    served = client.get("/images/from-url/file")
    assert served.status_code == 200 and served.content == FRESH
    # The same URL's bytes under another id: refused, naming the id that has them.
    again = client.post("/images", json={"url": url, "id": "copy"})
    assert again.status_code == 409 and "from-url" in again.json()["error"]["message"]


def test_folder_image_file_is_served_and_url_only_is_redirected(client: TestClient, photos: Path) -> None:
    served = client.get("/images/chelsea.png/file")
    assert served.status_code == 200 and served.content == (photos / "chelsea.png").read_bytes()
    service: ImageFinder = client.app.state.service  # type: ignore[attr-defined]
    vector = service.store.get_vector("chelsea.png")
    service.store.upsert(["remote"], vector[None], [{"uri": "https://example.org/cat.png", "hash": "x"}])
    redirect = client.get("/images/remote/file", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == "https://example.org/cat.png"


def test_delete_removes_from_search(client: TestClient, photos: Path) -> None:
    data = (photos / "coffee.png").read_bytes()
    assert search_ids(client, data)[0] == "coffee.png"
    assert client.delete("/images/coffee.png").status_code == 204
    assert "coffee.png" not in search_ids(client, data, k=20)
    gone = client.delete("/images/coffee.png")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_id"
    assert client.get("/images/coffee.png").status_code == 404
    assert client.get("/images/coffee.png/file").status_code == 404


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": {"id": "x"}}, 422, "invalid_request"),
        ({"json": {"url": 5}}, 422, "invalid_request"),
        ({"content": b"raw", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"files": {"other": ("a.jpg", b"x")}}, 422, "invalid_request"),
        ({"files": {"file": ("a.txt", b"plain text")}}, 415, "unsupported_image"),
        ({"files": {"file": ("a.jpg", encode(gradient(1)))}, "data": {"id": "bad\x01id"}}, 422, "invalid_id"),
    ],
)
def test_bad_adds_get_the_error_shape(client: TestClient, kwargs: dict, status: int, code: str) -> None:
    response = client.post("/images", **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_unreachable_url_is_reported(client: TestClient, server: ImageServer) -> None:
    response = client.post("/images", json={"url": server.url("/missing")})
    assert response.status_code == 422 and response.json()["error"]["code"] == "fetch_failed"
    assert "HTTP 404" in response.json()["error"]["message"]


def test_private_urls_are_refused_by_default(
    tmp_path: Path, real_encoder: OnnxEncoder, photos: Path, server: ImageServer
) -> None:
    with make_client(tmp_path, real_encoder, photos, allow_private=False) as guarded:
        response = guarded.post("/images", json={"url": server.url("/img/fresh.jpg")})
    assert response.status_code == 422 and "non-public address" in response.json()["error"]["message"]
    assert server.hits["/img/fresh.jpg"] == 0


def test_re_adding_an_id_with_other_bytes_replaces_it(client: TestClient) -> None:
    first = client.post("/images", files={"file": ("a.jpg", encode(gradient(91)))}, data={"id": "item"})
    assert first.status_code == 201
    second = client.post("/images", files={"file": ("a.jpg", encode(gradient(92)))}, data={"id": "item"})
    assert second.status_code == 200
    assert second.json() == {"id": "item", "created": False, "replaced": True}
    assert search_ids(client, encode(gradient(92)))[0] == "item"
