"""HTTP as generic clients meet it (issue: the API as real clients meet it): HEAD and Allow,
links that cannot alias another image, one id rule, and request metrics a client cannot grow.
Against a real `imagefinder serve` (uvicorn), as curl and monitors talk to it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imagefinder.ids import id_problem
from tests.factories import encode, gradient
from tests.live import live_server


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, photos: Path, model_cache: Path) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("http"), photos, model_cache) as url:
        yield url


def test_head_answers_like_get_without_a_body(base: str) -> None:
    for path in ("/health", "/ready", "/metrics", "/images", "/"):
        got, head = httpx.get(base + path), httpx.head(base + path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]


def test_405_names_the_allowed_methods(base: str) -> None:
    refused = httpx.put(base + "/health")
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
    assert refused.json()["error"]["code"] == "method_not_allowed"
    # A path served by a GET route and a DELETE route: both, and HEAD.
    image_id = httpx.get(base + "/images").json()["images"][0]["id"]
    assert httpx.put(f"{base}/images/{image_id}").headers["allow"] == "DELETE, GET, HEAD"
    # The file of an image is its own resource, though the DELETE route's {id:path} matches it.
    assert httpx.options(f"{base}/images/{image_id}/file").headers["allow"] == "GET, HEAD"
    assert httpx.patch(base + "/search").headers["allow"] == "POST"
    assert httpx.post(base + "/static/app.js").headers["allow"] == "GET, HEAD"  # static files: their own


def test_a_result_link_leads_to_its_own_image_only(base: str) -> None:
    """Ids may hold "/"; a link escapes it, so no client can collapse it into another id's link."""
    first, second = encode(gradient(71, (90, 60))), encode(gradient(72, (90, 60)))
    for image_id, data in (("trip/a.jpg", first), ("trip/b.jpg", second)):
        added = httpx.post(f"{base}/images", data={"id": image_id}, files={"file": ("x.jpg", data)})
        assert added.status_code == 201, added.text
    found = httpx.post(f"{base}/search", params={"k": 1}, files={"file": ("q.jpg", first)}).json()
    link = found["results"][0]["file_url"]
    assert link == "/images/trip%2Fa.jpg/file"
    assert httpx.get(base + link).content == first
    record = httpx.get(base + "/images/trip%2Fb.jpg")
    assert record.status_code == 200 and record.json()["id"] == "trip/b.jpg"


@pytest.mark.parametrize(
    "image_id",
    [
        "a/../b",
        "./a",
        "a/./b",
        "..",
        "photo/file",
        "x/thumbnail",
        "a\u200bb",
        "evil\u202egpj.exe",
        "a\ufffdb",
    ],
)
def test_ids_that_urls_or_terminals_would_misread_are_refused_everywhere(base: str, image_id: str) -> None:
    assert id_problem(image_id) is not None  # the one rule folder, CSV and API ids go through
    data = encode(gradient(abs(hash(image_id)) % 1000, (40, 30)))
    refused = httpx.post(f"{base}/images", data={"id": image_id}, files={"file": ("x.jpg", data)})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_id"


def test_an_id_field_that_is_not_utf8_is_refused_not_read_as_latin1(base: str) -> None:
    """The bytes of "café" in Latin-1: in a URL path they become U+FFFD (refused); in a form
    field they must not quietly become the id "café"."""
    boundary = "imagefinderboundary"
    data = encode(gradient(77, (40, 30)))
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="id"\r\n\r\n'.encode()
        + b"caf\xe9"
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'.encode()
        + b"Content-Type: image/jpeg\r\n\r\n"
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    refused = httpx.post(f"{base}/images", content=body, headers=headers)
    assert refused.status_code == 400 and "not valid UTF-8" in refused.json()["error"]["message"]
    assert httpx.get(f"{base}/images/caf%C3%A9").status_code == 404
    # The same id in UTF-8 is an id like any other.
    utf8 = httpx.post(f"{base}/images", data={"id": "café"}, files={"file": ("x.jpg", data)})
    assert utf8.status_code == 201 and httpx.get(f"{base}/images/caf%C3%A9").json()["id"] == "café"
    two = httpx.post(f"{base}/images", data={"id": ["a1", "a2"]}, files={"file": ("x.jpg", data)})
    assert two.status_code == 422 and "got 2" in two.json()["error"]["message"]


def test_ids_that_only_look_unusual_are_kept() -> None:
    for image_id in ("a..b", "file", "thumbnail", "trip/file.jpg", "x/.hidden", "été/photo 1.jpg"):
        assert id_problem(image_id) is None, image_id


def test_made_up_methods_do_not_grow_the_metrics(base: str) -> None:
    def series() -> int:
        text = httpx.get(base + "/metrics").text
        return len([line for line in text.splitlines() if line.startswith("imagefinder_request")])

    httpx.request("BREW", base + "/health")
    before = series()
    for n in range(30):
        httpx.request(f"MADEUP{n}", base + "/health")
    text = httpx.get(base + "/metrics").text
    assert series() == before
    assert not re.search(r'method="MADEUP', text) and 'method="other"' in text


def _noise_png(seed: int, side: int = 200) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_batch_may_carry_several_images_each_within_the_limit(tmp_path: Path) -> None:
    """The request as a whole may hold up to max_batch_files images of the single-image limit."""
    from fastapi.testclient import TestClient

    from imagefinder.api import create_app
    from imagefinder.config import ApiSettings
    from imagefinder.images import ImageLimits
    from imagefinder.stores.embedded import EmbeddedStore
    from imagefinder.wiring import compose_service
    from tests.factories import FakeEncoder

    images = [_noise_png(seed) for seed in range(3)]
    limit = max(len(data) for data in images) + 1000
    service = compose_service(FakeEncoder(), EmbeddedStore(tmp_path), ImageLimits(max_bytes=limit))
    service.collection.add_bytes(images[0], "seed.png")
    with TestClient(create_app(service, ApiSettings())) as client:
        files = [("files", (f"q{n}.png", data)) for n, data in enumerate(images)]
        answered = client.post("/search/batch", files=files)
        assert answered.status_code == 200, answered.text
        assert [q["error"] for q in answered.json()["queries"]] == [None, None, None]
        too_big = client.post("/search/batch", files=[("files", ("big.png", _noise_png(9, 400)))])
        assert too_big.json()["queries"][0]["error"]["code"] == "image_too_large"
        # One query per /search: two file parts are refused, not one of them silently taken.
        small = [encode(gradient(seed, (40, 30))) for seed in (1, 2)]
        two = client.post("/search", files=[("file", ("a.jpg", small[0])), ("file", ("b.jpg", small[1]))])
        assert two.status_code == 422 and "got 2" in two.json()["error"]["message"]


def test_delete_removes_the_kept_original_and_its_thumbnail(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from imagefinder.api import create_app
    from imagefinder.blobs import BlobStore
    from imagefinder.config import ApiSettings
    from imagefinder.images import ImageLimits
    from imagefinder.stores.embedded import EmbeddedStore
    from imagefinder.wiring import compose_service
    from tests.factories import FakeEncoder

    service = compose_service(
        FakeEncoder(),
        EmbeddedStore(tmp_path / "index"),
        ImageLimits(),
        blobs=BlobStore(tmp_path / "files"),
        thumbnails=tmp_path / "thumbnails",
    )
    with TestClient(create_app(service, ApiSettings())) as client:
        for image_id, seed in (("gone.jpg", 5), ("kept.jpg", 6)):
            data = encode(gradient(seed, (300, 200)))
            assert (
                client.post("/images", data={"id": image_id}, files={"file": ("x.jpg", data)}).status_code
                == 201
            )
            assert client.get(f"/images/{image_id}/thumbnail").status_code == 200
        files = sorted(p for p in (tmp_path / "files").rglob("*.jpg"))
        thumbnails = sorted((tmp_path / "thumbnails").rglob("*.jpg"))
        assert len(files) == len(thumbnails) == 2
        assert client.delete("/images/gone.jpg").status_code == 204
        assert len([p for p in files if p.exists()]) == len([p for p in thumbnails if p.exists()]) == 1
        assert client.get("/images/kept.jpg/file").status_code == 200


def test_partial_blobs_of_a_killed_write_are_swept_when_the_store_opens(tmp_path: Path) -> None:
    import os
    import time

    from imagefinder.blobs import STALE_PARTIAL_S, BlobStore

    BlobStore(tmp_path).put(encode(gradient(1)), "ab" * 32)
    stale, fresh = tmp_path / ".partial" / "old.tmp", tmp_path / ".partial" / "new.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"half an image")
    old = time.time() - STALE_PARTIAL_S - 60
    os.utime(stale, (old, old))
    BlobStore(tmp_path)
    assert not stale.exists() and fresh.exists()  # a fresh one may be another process's write
    assert len(list(tmp_path.rglob("*.jpg"))) == 1


def test_the_error_table_the_docs_and_the_openapi_document_agree(tmp_path: Path) -> None:
    """Every code the documentation (docs/api.md) lists is in the handlers' table with the same
    status, every code of the table is documented and appears in the OpenAPI document, and each route's error
    responses use the one error shape (not FastAPI's default 422 body)."""
    from imagefinder.api import create_app
    from imagefinder.api.errors import ANY_ROUTE, CODES
    from imagefinder.config import ApiSettings
    from imagefinder.images import ImageLimits
    from imagefinder.stores.embedded import EmbeddedStore
    from imagefinder.wiring import compose_service
    from tests.factories import FakeEncoder

    readme = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    documented = {
        code: int(status) for status, code in re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", readme, re.M)
    }
    assert documented == {code: status for code, (status, _) in CODES.items()}

    service = compose_service(FakeEncoder(), EmbeddedStore(tmp_path), ImageLimits())
    document = create_app(service, ApiSettings()).openapi()
    seen: set[str] = set()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if not status.startswith(("4", "5")) or path == "/ready":
                    continue
                codes = response.get("x-error-codes")
                assert codes, f"{method} {path} {status}: no error codes listed"
                assert all(CODES[code][0] == int(status) for code in codes), (method, path, status)
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
                seen.update(codes)
    assert seen | set(ANY_ROUTE) == set(CODES)
    k = next(p for p in document["paths"]["/search"]["post"]["parameters"] if p["name"] == "k")
    assert {"type": "integer", "minimum": 1, "maximum": ApiSettings().max_k}.items() <= next(
        option for option in k["schema"]["anyOf"] if option.get("type") == "integer"
    ).items()
