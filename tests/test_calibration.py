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
    tight = copy_threshold(clustered(500, 1.5), whitened=False)  # images more alike: a higher bar
    loose = copy_threshold(clustered(500, 3.0), whitened=False)
    assert LOWEST <= loose < tight < DEFAULT_THRESHOLD


def test_a_raw_space_with_a_few_copies_is_not_calibrated_to_them() -> None:
    """One image in five with a near copy: the nearest-neighbour quantile is theirs (0.99); a raw
    space has no scale to bound it by, so the measured default caps it."""
    vectors = clustered(100, 3.0)
    copies = l2_normalise(
        vectors[:20] + 0.01 * np.random.default_rng(1).normal(size=(20, 64)).astype(np.float32)
    )
    threshold = copy_threshold(np.concatenate([vectors, copies]), whitened=False)
    assert threshold == DEFAULT_THRESHOLD and float((copies * vectors[:20]).sum(axis=1).min()) > threshold


def test_small_collections_use_the_measured_default() -> None:
    assert copy_threshold(clustered(5, 0.5), whitened=True) == DEFAULT_THRESHOLD


def test_sampling_large_collections_stays_close() -> None:
    vectors = clustered(3000, 0.6)
    full = copy_threshold(vectors, whitened=False, sample=3000, reference=3000)
    sampled = copy_threshold(vectors, whitened=False, sample=500, reference=1500)
    assert sampled == pytest.approx(full, abs=0.03)


def with_copies(originals: int, copies_each: int, noise: float, dim: int = 512, seed: int = 0) -> np.ndarray:
    """Unrelated images (random directions, as whitening leaves them) and near copies of some."""
    rng = np.random.default_rng(seed)
    base = l2_normalise(rng.normal(size=(originals, dim)).astype(np.float32))
    copied = np.repeat(base[: originals // 2], copies_each, axis=0)
    copies = l2_normalise((copied + noise * rng.normal(size=copied.shape)).astype(np.float32))
    return np.concatenate([base, copies])


def test_a_collection_full_of_copies_still_flags_them() -> None:
    """Most nearest neighbours are copies here: their 0.95-quantile is the copies' own score,
    which would flag almost none of them; the unrelated pairs' spread caps it."""
    vectors = with_copies(400, 3, noise=0.03)  # copies score about 0.83 with their original
    threshold = copy_threshold(vectors, whitened=True)
    copy_scores = np.einsum("ij,ij->i", vectors[400:], np.repeat(vectors[:200], 3, axis=0))
    nearest = np.sort(vectors @ vectors.T, axis=1)[:, -2]
    assert np.quantile(nearest, 0.95) > np.median(copy_scores)  # the quantile alone would miss half
    assert np.mean(copy_scores >= threshold) > 0.99
    unrelated = vectors[:400] @ vectors[:400].T
    assert (unrelated[np.triu_indices(400, 1)] < threshold).all()


def test_a_collection_without_copies_keeps_its_look_alikes_below_the_bar() -> None:
    vectors = with_copies(400, 0, noise=0.0)
    threshold = copy_threshold(vectors, whitened=True)
    scores = vectors @ vectors.T
    assert (scores[np.triu_indices(400, 1)] < threshold).all() and threshold < HIGHEST


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
