from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from imagefinder.encoders.base import EncoderInfo, l2_normalise
from imagefinder.images import ImageLimits
from imagefinder.search_space import SearchSpace
from imagefinder.sources import FolderSource
from imagefinder.stores.embedded import EmbeddedStore
from imagefinder.whitening import MIN_IMAGES, fit_whitening
from imagefinder.wiring import compose_service
from tests.factories import FakeEncoder, encode, gradient

INFO = EncoderInfo("test-encoder", "1", 16, "none")


def collection(n: int, seed: int = 0) -> np.ndarray:
    """Vectors sharing one strong common direction, as a collection's vectors do."""
    rng = np.random.default_rng(seed)
    common = np.zeros(16, dtype=np.float32)
    common[0] = 5.0
    return l2_normalise((common + rng.normal(size=(n, 16))).astype(np.float32))


def collection_of(n: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    return l2_normalise(
        (np.eye(1, dim, 0, dtype=np.float32) * 5 + rng.normal(size=(n, dim))).astype(np.float32)
    )


def test_fit_whitening_equalises_the_spread() -> None:
    vectors = collection(400)
    # Full, unregularised whitening: unit variance in every direction.
    fitted = fit_whitening(vectors, power=1.0, regularisation=0.0)
    assert fitted is not None
    mean, projection = fitted
    assert projection.shape == (16, 16)
    variances = ((vectors - mean) @ projection).var(axis=0, ddof=1)
    assert np.allclose(variances, 1.0, atol=1e-3)


def test_regularisation_amplifies_the_weak_directions_less() -> None:
    vectors = collection(400)
    centred = (vectors - vectors.mean(axis=0)).astype(np.float64)
    values = np.sort(np.linalg.eigvalsh(centred.T @ centred / 399))[::-1]
    spreads = []
    for regularisation in (0.0, 0.5, 2.0):
        fitted = fit_whitening(vectors, power=0.5, regularisation=regularisation)
        assert fitted is not None
        mean, projection = fitted
        variances = ((vectors - mean) @ projection).var(axis=0, ddof=1)
        # Each direction's variance lambda becomes lambda / (lambda + r * mean(lambda))^power.
        expected = values / (values + regularisation * values.mean()) ** 0.5
        assert np.allclose(variances, expected, rtol=1e-3)
        spreads.append(np.ptp(np.log(variances)))
    # The larger the floor, the less the weakest direction is raised towards the strongest.
    assert spreads[0] < spreads[1] < spreads[2]
    # The floor is a fraction of the mean of the *kept* eigenvalues (the strongest ones).
    mean, projection = fit_whitening(vectors, power=0.5, max_dims=4, regularisation=1.0)  # type: ignore[misc]
    variances = ((vectors - mean) @ projection).var(axis=0, ddof=1)
    kept = values[:4]
    assert np.allclose(variances, kept / (kept + kept.mean()) ** 0.5, rtol=1e-3)


def test_identical_vectors_give_no_direction_and_no_warning() -> None:
    same = np.tile(collection(1), (MIN_IMAGES, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted = fit_whitening(same)
    assert fitted is not None and fitted[1].shape == (16, 0)


def test_small_collections_and_power_zero_are_left_raw() -> None:
    assert fit_whitening(collection(MIN_IMAGES - 1)) is None
    assert fit_whitening(collection(200), power=0.0) is None
    mean, projection = fit_whitening(collection(MIN_IMAGES))  # type: ignore[misc]
    assert projection.shape[1] <= MIN_IMAGES - 1


def test_the_store_searches_through_its_projection_and_keeps_it(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    store.bind_encoder(INFO)
    vectors = collection(120)
    store.upsert([f"i{n:03d}" for n in range(120)], vectors, [{}] * 120)
    store.set_search_space(SearchSpace().fitted(fit_whitening(vectors), 120, "test"))
    assert store.search(vectors[7], k=1)[0].id == "i007"
    assert store.search(vectors[7], k=1)[0].score == pytest.approx(1.0, abs=1e-5)
    raw = store.vectors()
    searched = store.search_space.project(raw)
    assert raw.shape == searched.shape == (120, 16) and not np.allclose(raw, searched, atol=1e-3)
    # A vector added after the fit is projected too; a deleted one disappears.
    extra = collection(1, seed=9)
    store.upsert(["late"], extra, [{}])
    assert store.search(extra[0], k=1)[0].id == "late"
    store.delete(["i007"])
    assert store.search(vectors[7], k=1)[0].id != "i007"
    expected = [(h.id, round(h.score, 5)) for h in store.search(vectors[3], k=5)]
    store.close()
    reopened = EmbeddedStore(tmp_path)
    assert [(h.id, round(h.score, 5)) for h in reopened.search(vectors[3], k=5)] == expected
    reopened.delete(reopened.ids())
    reopened.bind_encoder(EncoderInfo("other", "2", 8, ""))  # an empty store may change encoder
    emptied = EmbeddedStore(tmp_path)
    assert emptied.vectors().shape == (0, 8)
    assert emptied.search_space.projection is None  # and the old projection is gone


def test_the_service_refits_after_each_index_run(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in range(MIN_IMAGES + 10):
        (folder / f"p{n:03d}.jpg").write_bytes(encode(gradient(n, (64, 48))))
    store = EmbeddedStore(tmp_path / "index")
    service = compose_service(FakeEncoder(), store, ImageLimits(), whitening=0.25)
    service.index(FolderSource(folder, 10**7))
    assert store.search_space.dim(FakeEncoder.info.dim) < FakeEncoder.info.dim  # whitened space
    assert 0.3 <= service.copy_threshold <= 0.95
    for path in sorted(folder.iterdir())[:5]:
        assert service.search_bytes(path.read_bytes(), k=1)[0].id == path.name
    off = compose_service(FakeEncoder(), EmbeddedStore(tmp_path / "raw"), ImageLimits(), whitening=0.0)
    off.index(FolderSource(folder, 10**7))
    assert off.store.search_space.dim(FakeEncoder.info.dim) == FakeEncoder.info.dim


def test_a_large_collection_refits_on_drift_or_a_new_setting_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past REFIT_ALWAYS_UP_TO, an index run refits only when the collection has grown by a
    quarter or the whitening settings (or the way of fitting) changed since the last fit."""
    import imagefinder.maintenance

    monkeypatch.setattr(imagefinder.maintenance, "REFIT_ALWAYS_UP_TO", 10)
    store = EmbeddedStore(tmp_path / "index")
    store.bind_encoder(FakeEncoder.info)
    store.upsert([f"i{n:03d}" for n in range(100)], collection_of(100, FakeEncoder.info.dim), [{}] * 100)
    compose_service(FakeEncoder(), store, ImageLimits(), whitening=0.25).maintenance.refit()
    fitted = store.search_space.project(store.vectors())
    compose_service(FakeEncoder(), store, ImageLimits(), whitening=0.25).maintenance.refit()  # same: kept
    assert np.array_equal(store.search_space.project(store.vectors()), fitted)
    compose_service(
        FakeEncoder(), store, ImageLimits(), whitening=0.5
    ).maintenance.refit()  # new power: refitted
    assert not np.allclose(store.search_space.project(store.vectors()), fitted, atol=1e-3)
    assert store.search_space.fitted_with == "power=0.5 dims=256 regularisation=0.5"
