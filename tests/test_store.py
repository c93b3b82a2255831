from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from imagefinder.encoders.base import EncoderInfo, l2_normalise
from imagefinder.errors import EncoderMismatchError, StoreVersionError
from imagefinder.stores.embedded import EmbeddedStore

INFO = EncoderInfo("test-encoder", "1", 4, "none")


def vec(*values: float) -> np.ndarray:
    return l2_normalise(np.array([values], dtype=np.float32))


def open_bound(path: Path) -> EmbeddedStore:
    store = EmbeddedStore(path)
    store.bind_encoder(INFO)
    return store


def test_search_returns_best_first_with_cosine_scores(tmp_path: Path) -> None:
    store = open_bound(tmp_path)
    vectors = np.vstack([vec(1, 0, 0, 0), vec(1, 1, 0, 0), vec(0, 0, 1, 0)])
    store.upsert(["a", "b", "c"], vectors, [{"uri": "a.jpg"}, {"uri": "b.jpg"}, {"uri": "c.jpg"}])
    hits = store.search(vec(1, 0.1, 0, 0)[0], k=2)
    assert [h.id for h in hits] == ["a", "b"]
    assert hits[0].score == pytest.approx(float(vec(1, 0.1, 0, 0)[0] @ vectors[0]), abs=1e-6)
    assert hits[0].score > hits[1].score
    assert hits[0].payload["uri"] == "a.jpg"


def test_k_larger_than_collection_returns_all(tmp_path: Path) -> None:
    store = open_bound(tmp_path)
    store.upsert(["a", "b"], np.vstack([vec(1, 0, 0, 0), vec(0, 1, 0, 0)]), [{}, {}])
    assert len(store.search(vec(1, 0, 0, 0)[0], k=10)) == 2
    assert EmbeddedStore(tmp_path / "empty").search(vec(1, 0, 0, 0)[0], k=3) == []


def test_equal_scores_come_in_id_order(tmp_path: Path) -> None:
    store = open_bound(tmp_path)
    same = np.repeat(vec(0, 1, 0, 0), 4, axis=0)
    store.upsert(["d", "b", "c", "a"], same, [{}] * 4)
    assert [h.id for h in store.search(vec(0, 1, 0, 0)[0], k=3)] == ["a", "b", "c"]


def test_upsert_replaces_and_delete_removes(tmp_path: Path) -> None:
    store = open_bound(tmp_path)
    store.upsert(
        ["a", "b", "c"], np.vstack([vec(1, 0, 0, 0), vec(0, 1, 0, 0), vec(0, 0, 1, 0)]), [{"v": 1}, {}, {}]
    )
    store.upsert(["a"], vec(0, 0, 0, 1), [{"v": 2}])
    assert store.count() == 3
    assert store.search(vec(0, 0, 0, 1)[0], k=1)[0].id == "a"
    assert store.get("a") == {"v": 2}
    assert store.delete(["a", "missing", "a"]) == 1
    assert store.count() == 2 and store.get("a") is None
    assert {h.id for h in store.search(vec(0, 0, 0, 1)[0], k=5)} == {"b", "c"}
    # The row moved into the deleted slot must still be found under its own id.
    assert np.allclose(store.get_vector("c"), vec(0, 0, 1, 0)[0])


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    store = open_bound(tmp_path)
    rng = np.random.default_rng(0)
    vectors = l2_normalise(rng.normal(size=(100, 4)).astype(np.float32))
    store.upsert([f"id{i}" for i in range(100)], vectors, [{"i": i} for i in range(100)])
    store.delete(["id5"])
    before = [(h.id, round(h.score, 6)) for h in store.search(vectors[7], k=5)]
    store.close()
    again = EmbeddedStore(tmp_path)
    assert again.encoder_info == INFO
    assert again.count() == 99 and again.get("id5") is None
    assert [(h.id, round(h.score, 6)) for h in again.search(vectors[7], k=5)] == before


def test_refuses_another_encoder_once_it_has_vectors(tmp_path: Path) -> None:
    store = open_bound(tmp_path)
    store.upsert(["a"], vec(1, 0, 0, 0), [{}])
    store.close()
    reopened = EmbeddedStore(tmp_path)
    with pytest.raises(EncoderMismatchError, match="test-encoder v1.*other v2"):
        reopened.bind_encoder(EncoderInfo("other", "2", 8, ""))
    reopened.bind_encoder(INFO)  # the same encoder is fine


def test_empty_store_can_be_rebound(tmp_path: Path) -> None:
    store = open_bound(tmp_path)
    other = EncoderInfo("other", "2", 8, "")
    store.bind_encoder(other)
    assert store.encoder_info == other


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    EmbeddedStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "images.sqlite") as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreVersionError, match="schema version 99"):
        EmbeddedStore(tmp_path)


def test_rejects_wrong_dimension_and_duplicate_ids(tmp_path: Path) -> None:
    store = open_bound(tmp_path)
    with pytest.raises(ValueError, match="8-d"):
        store.upsert(["a"], np.ones((1, 8), dtype=np.float32), [{}])
    with pytest.raises(ValueError, match="duplicate"):
        store.upsert(["a", "a"], np.vstack([vec(1, 0, 0, 0)] * 2), [{}, {}])
    assert store.count() == 0


def test_a_second_process_sees_writes_of_the_first(tmp_path: Path) -> None:
    """A server's store and the CLI's store on the same folder: reads, deletes and vector
    lookups of one see what the other committed."""
    writer = open_bound(tmp_path)
    reader = EmbeddedStore(tmp_path)
    writer.upsert(["a", "b"], np.vstack([vec(1, 0, 0, 0), vec(0, 1, 0, 0)]), [{}, {}])
    assert reader.get_vector("a") is not None
    assert reader.count() == 2 and sorted(reader.ids()) == ["a", "b"]
    writer.upsert(["c"], vec(0, 0, 1, 0), [{}])
    assert reader.delete(["c"]) == 1
    assert writer.search(vec(0, 0, 1, 0)[0], k=1)[0].id != "c"
    assert writer.count() == 2
