from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imagefinder.calibration import DEFAULT_THRESHOLD, HIGHEST, LOWEST, copy_threshold
from imagefinder.encoders.base import l2_normalise
from imagefinder.encoders.onnx_runtime import OnnxEncoder
from imagefinder.images import ImageLimits
from imagefinder.sources import FolderSource
from imagefinder.stores.embedded import EmbeddedStore
from imagefinder.wiring import compose_service
from tests.test_real_model import edited_copy


def clustered(n: int, spread: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, 64))
    return l2_normalise(
        (centres[rng.integers(0, 10, n)] + spread * rng.normal(size=(n, 64))).astype(np.float32)
    )


def test_threshold_follows_how_alike_the_collection_is() -> None:
    tight = copy_threshold(clustered(500, 0.2))  # near-identical images: a higher bar
    loose = copy_threshold(clustered(500, 0.8))
    assert LOWEST <= loose < tight <= HIGHEST


def test_small_collections_use_the_measured_default() -> None:
    assert copy_threshold(clustered(5, 0.5)) == DEFAULT_THRESHOLD


def test_sampling_large_collections_stays_close() -> None:
    vectors = clustered(3000, 0.6)
    full = copy_threshold(vectors, sample=3000, reference=3000)
    assert copy_threshold(vectors, sample=500, reference=1500) == pytest.approx(full, abs=0.03)


def test_copies_are_flagged_and_other_photos_are_not(
    tmp_path: Path, real_encoder: OnnxEncoder, photos: Path
) -> None:
    service = compose_service(real_encoder, EmbeddedStore(tmp_path / "index"), ImageLimits())
    service.index(FolderSource(photos, 10**8))
    assert LOWEST <= service.copy_threshold <= HIGHEST
    copy = service.search_bytes(edited_copy(photos / "rocket.jpg", "crop"), k=3)
    assert copy[0].id == "rocket.jpg" and copy[0].is_copy and not any(r.is_copy for r in copy[1:])
    service.collection.remove(["rocket.jpg"])
    gone = service.search_bytes(edited_copy(photos / "rocket.jpg", "crop"), k=3)
    assert not any(r.is_copy for r in gone)
