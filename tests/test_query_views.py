"""The adaptive second search pass (imagefinder.views): when it runs, what it searches with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from imagefinder.images import ImageLimits
from imagefinder.service import ImageFinder, QueryViews
from imagefinder.stores.embedded import EmbeddedStore
from imagefinder.views import REGION_PENALTY, ROTATION_PENALTY, VIEW_SOURCE_SIDE, extra_views, view_source
from imagefinder.wiring import compose_service
from tests.factories import FakeEncoder, encode, gradient


# Queries are sent as PNG: JPEG would be decoded in draft mode down to the fake encoder's 8-px
# input, too small for regions.
def service_with(tmp_path: Path, mode: QueryViews) -> tuple[ImageFinder, FakeEncoder]:
    encoder = FakeEncoder()
    service = compose_service(
        encoder, EmbeddedStore(tmp_path / mode), ImageLimits(), query_views=mode, whitening=0
    )
    for seed in range(30):
        service.collection.add_bytes(encode(gradient(seed)), f"g{seed}.jpg")
    service.maintenance.calibrate()
    return service, encoder


def test_extra_views_are_two_turns_and_five_half_size_regions() -> None:
    image = Image.new("RGB", (200, 100))
    views = extra_views(image)
    assert [penalty for _, penalty in views] == [ROTATION_PENALTY] * 2 + [REGION_PENALTY] * 5
    assert [view.size for view, _ in views] == [(100, 200)] * 2 + [(100, 50)] * 5


def test_tiny_images_get_the_turned_views_only() -> None:
    # A 1-pixel-wide query once reached the encoder as an empty region (found by the API fuzz).
    for size in ((1, 1), (1, 500), (31, 200)):
        assert [penalty for _, penalty in extra_views(Image.new("RGB", size))] == [ROTATION_PENALTY] * 2


def test_a_query_that_finds_its_copy_runs_the_encoder_once(tmp_path: Path) -> None:
    service, encoder = service_with(tmp_path, "adaptive")
    encoder.calls.clear()
    top = service.search_bytes(encode(gradient(7)), k=3)[0]
    assert (top.id, top.is_copy) == ("g7.jpg", True)
    assert encoder.calls == [1]


def test_a_query_without_a_copy_is_searched_again_with_seven_more_views(tmp_path: Path) -> None:
    service, encoder = service_with(tmp_path, "adaptive")
    # Uniform noise looks like none of the gradients: no result reaches the copy threshold.
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8))
    encoder.calls.clear()
    results = service.search_bytes(encode(noise, "PNG"), k=3)
    assert encoder.calls == [1, 7]
    assert len(results) == 3 and not any(r.is_copy for r in results)
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)


def test_a_pasted_copy_is_found_by_a_region_view(tmp_path: Path) -> None:
    service, encoder = service_with(tmp_path, "adaptive")
    # g7 pasted as the top-left quarter of a grey canvas: the whole canvas is not a copy of it,
    # the top-left region is.
    canvas = Image.new("RGB", (192, 160), (128, 128, 128))
    canvas.paste(gradient(7), (0, 0))
    single, _ = service_with(tmp_path / "single", "single")
    plain = single.search_bytes(encode(canvas, "PNG"), k=1)[0]
    assert not plain.is_copy
    top = service.search_bytes(encode(canvas, "PNG"), k=1)[0]
    assert (top.id, top.is_copy) == ("g7.jpg", True)
    # Found through the top-left region, which is g7 itself: its cosine (about 1, the stored g7
    # went through JPEG) less the region penalty, far above what the whole canvas scored.
    assert 1 - REGION_PENALTY - 0.02 < top.score <= 1 - REGION_PENALTY + 1e-6
    assert top.score > plain.score + 0.3


def test_single_mode_never_runs_a_second_pass(tmp_path: Path) -> None:
    service, encoder = service_with(tmp_path, "single")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8))
    encoder.calls.clear()
    service.search_bytes(encode(noise, "PNG"), k=3)
    assert encoder.calls == [1]


def test_the_api_and_the_cli_choose_the_views_per_request(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from imagefinder.api import create_app
    from imagefinder.config import ApiSettings

    service, encoder = service_with(tmp_path, "adaptive")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8))
    upload = {"file": ("q.png", encode(noise, "PNG"))}
    with TestClient(create_app(service, ApiSettings())) as client:  # type: ignore[arg-type]
        for views, runs in (("single", [1]), ("adaptive", [1, 7]), (None, [1, 7])):
            encoder.calls.clear()
            params = {"k": 3} | ({"views": views} if views else {})
            assert client.post("/search", params=params, files=upload).status_code == 200
            assert encoder.calls == runs, views
        encoder.calls.clear()
        answer = client.post("/search/batch", params={"views": "single"}, files=[("files", upload["file"])])
        assert answer.status_code == 200 and encoder.calls == [1]
        refused = client.post("/search", params={"views": "all"}, files=upload)
        assert refused.status_code == 422


def test_nothing_to_find_runs_no_second_pass(tmp_path: Path) -> None:
    encoder = FakeEncoder()
    empty = compose_service(encoder, EmbeddedStore(tmp_path / "empty"), ImageLimits(), whitening=0)
    assert empty.search_bytes(encode(gradient(1), "PNG"), k=3) == []
    assert encoder.calls == [1]
    service, encoder = service_with(tmp_path, "adaptive")
    encoder.calls.clear()
    assert service.search_bytes(encode(gradient(1), "PNG"), k=3, where={"source": "nowhere"}) == []
    assert encoder.calls == [1]


def test_a_large_query_is_kept_small_for_its_second_pass() -> None:
    large = Image.new("RGB", (4000, 3000))
    assert view_source(large).size == (683, VIEW_SOURCE_SIDE)
    small = Image.new("RGB", (400, 300))
    assert view_source(small) is small
