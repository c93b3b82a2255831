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
    assert httpx.patch(base + "/search").headers["allow"] == "POST"


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
    ["a/../b", "./a", "a/./b", "..", "photo/file", "x/thumbnail", "a\u200bb", "evil\u202egpj.exe"],
)
def test_ids_that_urls_or_terminals_would_misread_are_refused_everywhere(base: str, image_id: str) -> None:
    assert id_problem(image_id) is not None  # the one rule folder, CSV and API ids go through
    data = encode(gradient(abs(hash(image_id)) % 1000, (40, 30)))
    refused = httpx.post(f"{base}/images", data={"id": image_id}, files={"file": ("x.jpg", data)})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_id"


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
