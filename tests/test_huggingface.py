"""Hugging Face models end to end, offline, on tiny random ViT, CLIP and DINOv2 models that the
test builds and saves with `save_pretrained`: load, ONNX export parity with torch, index and
search, CLIP text search (service, API, CLI), refusal of a mismatched index, offline Hub ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from imagefinder.api import create_app  # noqa: E402
from imagefinder.config import ApiSettings  # noqa: E402
from imagefinder.encoders import build_encoder  # noqa: E402
from imagefinder.encoders.base import embed_images  # noqa: E402
from imagefinder.errors import EncoderMismatchError, ModelUnavailableError, TextSearchUnsupportedError  # noqa: E402
from imagefinder.images import ImageLimits  # noqa: E402
from imagefinder.sources import FolderSource  # noqa: E402
from imagefinder.stores.embedded import EmbeddedStore  # noqa: E402
from imagefinder.wiring import compose_service
from tests.factories import FakeEncoder  # noqa: E402
from tests.hf_models import build_tiny_models  # noqa: E402

DIMS = {"vit": 32, "clip": 24, "dinov2": 64}


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    """Nothing in this module may reach the Hub."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    if before is None:
        del os.environ["HF_HUB_OFFLINE"]
    else:
        os.environ["HF_HUB_OFFLINE"] = before


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_tiny_models(tmp_path_factory.mktemp("hf-models"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf-cache")


@pytest.mark.parametrize("family", ["vit", "clip", "dinov2"])
def test_each_family_loads_exports_to_onnx_and_matches_torch(
    family: str, tiny: dict[str, Path], cache: Path, photos: Path
) -> None:
    import torch

    encoder = build_encoder(f"hf:{tiny[family]}", cache)
    assert encoder.runtime == "onnx" and encoder.info.dim == DIMS[family]  # type: ignore[attr-defined]
    assert encoder.info.name == f"hf:{tiny[family]}"
    assert list(cache.glob(f"hf-*{encoder.info.version}.onnx"))
    images = [Image.open(p).convert("RGB") for p in sorted(photos.iterdir())[:5]]
    vectors = embed_images(encoder, images)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    pixels = np.stack([encoder.preprocess(image) for image in images])
    with torch.no_grad():
        reference = encoder.torch_reference(torch.from_numpy(pixels)).numpy()  # type: ignore[attr-defined]
    assert float(np.abs(vectors - reference).max()) < 1e-4


def test_a_model_that_does_not_export_runs_in_torch(
    tiny: dict[str, Path], cache: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imagefinder.encoders.huggingface as hf

    exported = build_encoder(f"hf:{tiny['vit']}", cache)
    monkeypatch.setattr(hf, "_export", lambda *args: None)
    in_torch = build_encoder(f"hf:{tiny['vit']}", cache)
    assert in_torch.runtime == "torch" and in_torch.info == exported.info  # type: ignore[attr-defined]
    images = [Image.open(p).convert("RGB") for p in sorted(photos.iterdir())[:3]]
    assert np.allclose(embed_images(in_torch, images), embed_images(exported, images), atol=1e-4)


def test_index_and_search_with_a_hub_model(
    tmp_path: Path, tiny: dict[str, Path], cache: Path, photos: Path
) -> None:
    service = compose_service(
        build_encoder(f"hf:{tiny['dinov2']}", cache),
        EmbeddedStore(tmp_path),
        ImageLimits(),
        query_views="single",
    )
    assert service.index(FolderSource(photos, 10**8)).indexed == len(list(photos.iterdir()))
    for path in sorted(photos.iterdir())[:6]:
        assert service.search_bytes(path.read_bytes(), k=1)[0].id == path.name


def test_clip_searches_by_text(tmp_path: Path, tiny: dict[str, Path], cache: Path, photos: Path) -> None:
    service = compose_service(
        build_encoder(f"hf:{tiny['clip']}", cache), EmbeddedStore(tmp_path), ImageLimits()
    )
    service.index(FolderSource(photos, 10**8))
    assert service.supports_text
    results = service.search_text("a red bicycle", k=4)
    assert len(results) == 4 and [r.score for r in results] == sorted(
        (r.score for r in results), reverse=True
    )
    assert not any(r.is_copy for r in results)
    with TestClient(create_app(service, ApiSettings())) as client:
        assert client.get("/health").json()["text_search"] is True
        # The OpenAPI document offers text queries for this model (not for image-only ones).
        body = client.get("/openapi.json").json()["paths"]["/search"]["post"]["requestBody"]
        assert "text" in body["content"]["application/json"]["schema"]["properties"]
        response = client.post("/search", json={"text": "a cat"}, params={"k": 2})
        assert response.status_code == 200 and len(response.json()["results"]) == 2


def test_text_search_needs_a_clip_family_model(tmp_path: Path) -> None:
    service = compose_service(FakeEncoder(), EmbeddedStore(tmp_path), ImageLimits())
    with pytest.raises(TextSearchUnsupportedError, match="CLIP-family"):
        service.search_text("a cat", k=3)
    with TestClient(create_app(service, ApiSettings())) as client:
        response = client.post("/search", json={"text": "a cat"})
        assert response.status_code == 422 and response.json()["error"]["code"] == "text_search_unsupported"


def test_an_index_refuses_another_model(
    tmp_path: Path, tiny: dict[str, Path], cache: Path, photos: Path
) -> None:
    vit = build_encoder(f"hf:{tiny['vit']}", cache)
    compose_service(vit, EmbeddedStore(tmp_path), ImageLimits()).index(FolderSource(photos, 10**8))
    with pytest.raises(
        EncoderMismatchError, match=r"built with encoder hf:.*vit.*cannot be searched.*dinov2"
    ):
        compose_service(build_encoder(f"hf:{tiny['dinov2']}", cache), EmbeddedStore(tmp_path), ImageLimits())


def test_a_hub_id_fails_at_once_and_clearly_when_offline(cache: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="google/vit-base-patch16-224-in21k.*HF_HUB_OFFLINE"):
        build_encoder("hf:google/vit-base-patch16-224-in21k", cache)
    assert time.monotonic() - started < 5


def test_cli_with_a_hub_model_and_text(
    tmp_path: Path, tiny: dict[str, Path], cache: Path, photos: Path
) -> None:
    env = {**os.environ, "IMAGEFINDER_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "imagefinder", "--model", f"hf:{tiny['clip']}"]
    for args in (["index", str(photos), "--quiet"], ["search", "--text", "a rocket", "-k", "2", "--json"]):
        done = subprocess.run([*cli, *args], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["results"]) == 2
    listing = subprocess.run(
        [sys.executable, "-m", "imagefinder", "models"], capture_output=True, text=True, env=env
    )
    assert "efficientnet-lite0" in listing.stdout and "hf:google/vit-base-patch16-224-in21k" in listing.stdout
