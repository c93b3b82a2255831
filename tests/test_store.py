"""The store contract: every test here without `embedded_only` runs against the embedded store
and against a real Milvus server (started once per session by the `milvus_server` fixture)."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagefinder.encoders.base import EncoderInfo, l2_normalise
from imagefinder.errors import (
    EncoderMismatchError,
    InvalidFilterError,
    SearchSpaceChangedError,
    StoreUnavailableError,
    StoreVersionError,
)
from imagefinder.search_space import SearchSpace
from imagefinder.stores.embedded import EmbeddedStore
from imagefinder.view_gate import ViewGate, encoder_key

INFO = EncoderInfo("test-encoder", "1", 4, "none")
Opener = Callable[[], Any]


def vec(*values: float) -> np.ndarray:
    return l2_normalise(np.array([values], dtype=np.float32))


@pytest.fixture(params=["embedded", "milvus"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the same store each time it is called: a folder, or one Milvus collection."""
    opened: list[Any] = []
    if request.param == "embedded":

        def open_store() -> Any:
            opened.append(EmbeddedStore(tmp_path))
            return opened[-1]

    else:
        from imagefinder.stores.milvus import MilvusStore

        server = request.getfixturevalue("milvus_server")
        collection = f"t_{uuid.uuid4().hex[:12]}"

        def open_store() -> Any:
            opened.append(MilvusStore(server, collection))
            return opened[-1]

    yield open_store
    for store in opened:
        try:
            store.close()
        except Exception:  # noqa: BLE001  (closed by the test already)
            pass


@pytest.fixture
def store(opener: Opener) -> Any:
    bound = opener()
    bound.bind_encoder(INFO)
    return bound


def test_search_returns_best_first_with_cosine_scores(store: Any) -> None:
    vectors = np.vstack([vec(1, 0, 0, 0), vec(1, 1, 0, 0), vec(0, 0, 1, 0)])
    store.upsert(["a", "b", "c"], vectors, [{"uri": "a.jpg"}, {"uri": "b.jpg"}, {"uri": "c.jpg"}])
    hits = store.search(vec(1, 0.1, 0, 0)[0], k=2)
    assert [h.id for h in hits] == ["a", "b"]
    assert hits[0].score == pytest.approx(float(vec(1, 0.1, 0, 0)[0] @ vectors[0]), abs=1e-6)
    assert hits[0].score > hits[1].score
    assert hits[0].payload["uri"] == "a.jpg"


def test_k_larger_than_collection_returns_all(store: Any, opener: Opener) -> None:
    assert store.search(vec(1, 0, 0, 0)[0], k=3) == []
    store.upsert(["a", "b"], np.vstack([vec(1, 0, 0, 0), vec(0, 1, 0, 0)]), [{}, {}])
    assert len(store.search(vec(1, 0, 0, 0)[0], k=10)) == 2


def test_equal_scores_come_in_id_order(store: Any) -> None:
    same = np.repeat(vec(0, 1, 0, 0), 4, axis=0)
    store.upsert(["d", "b", "c", "a"], same, [{}] * 4)
    assert [h.id for h in store.search(vec(0, 1, 0, 0)[0], k=3)] == ["a", "b", "c"]


def test_similar_answers_many_queries_like_search_above_a_score(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The duplicates scan's batch search: each row as `search` would answer it, cut at the score;
    on Milvus two rows per request here (k=2 asks for 18 hits a row), so the answers of a
    request must stay with their rows."""
    requests: list[int] = []
    on_milvus = type(store).__name__ == "MilvusStore"
    if on_milvus:
        monkeypatch.setattr("imagefinder.stores.milvus.SIMILAR_HITS_PER_REQUEST", 36)
        search = store._client.search
        monkeypatch.setattr(store._client, "search", lambda *a, **kw: requests.append(1) or search(*a, **kw))
    vectors = np.vstack([vec(1, 0, 0, 0), vec(1, 0.2, 0, 0), vec(0, 0, 1, 0), vec(0, 0, 1, 0.3)])
    store.upsert(["a", "b", "c", "d"], vectors, [{"part": "x"}, {"part": "y"}, {"part": "x"}, {"part": "y"}])
    found = store.similar(vectors, k=2, min_score=0.9)
    assert len(requests) == (2 if on_milvus else 0)
    assert [[h.id for h in hits] for hits in found] == [["a", "b"], ["b", "a"], ["c", "d"], ["d", "c"]]
    for row, hits in zip(vectors, found, strict=True):
        expected = [h for h in store.search(row, k=2) if h.score >= 0.9]
        assert [(h.id, round(h.score, 5)) for h in hits] == [(h.id, round(h.score, 5)) for h in expected]
    assert store.similar(vectors[:1], k=3, min_score=0.9, where={"part": "y"})[0][0].id == "b"
    assert [h.id for h in store.similar(vectors[:1], k=3, min_score=0.999)[0]] == ["a"]


def test_upsert_replaces_and_delete_removes(store: Any) -> None:
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


def test_reopen_keeps_everything(store: Any, opener: Opener) -> None:
    rng = np.random.default_rng(0)
    vectors = l2_normalise(rng.normal(size=(100, 4)).astype(np.float32))
    store.upsert([f"id{i}" for i in range(100)], vectors, [{"i": i} for i in range(100)])
    store.delete(["id5"])
    store.set_meta("copy_threshold", "0.5")
    before = [(h.id, round(h.score, 5)) for h in store.search(vectors[7], k=5)]
    store.close()
    again = opener()
    assert again.encoder_info == INFO and again.get_meta("copy_threshold") == "0.5"
    assert again.count() == 99 and again.get("id5") is None and again.get("id6") == {"i": 6}
    assert [(h.id, round(h.score, 5)) for h in again.search(vectors[7], k=5)] == before
    # The embedded store keeps float16 vectors (Milvus float32): a few 1e-4 off at most.
    np.testing.assert_allclose(again.get_vector("id9"), vectors[9], atol=1e-3)


def test_refuses_another_encoder_once_it_has_vectors(store: Any, opener: Opener) -> None:
    store.upsert(["a"], vec(1, 0, 0, 0), [{}])
    store.close()
    reopened = opener()
    with pytest.raises(EncoderMismatchError, match="test-encoder v1.*other v2"):
        reopened.bind_encoder(EncoderInfo("other", "2", 8, ""))
    reopened.bind_encoder(INFO)  # the same encoder is fine


def test_empty_store_can_be_rebound(store: Any) -> None:
    other = EncoderInfo("other", "2", 8, "")
    store.bind_encoder(other)
    assert store.encoder_info == other


def test_embedded_keeps_float16_vectors_and_reads_float32_ones(tmp_path: Path) -> None:
    """Half the disk for the kept vectors; a store written with float32 (earlier versions, or
    `vector_dtype="float32"`) is read as it is, and both may be mixed in one store."""
    rng = np.random.default_rng(4)
    vectors = l2_normalise(rng.normal(size=(50, 4)).astype(np.float32))
    old = EmbeddedStore(tmp_path, vector_dtype="float32")
    old.bind_encoder(INFO)
    old.upsert([f"a{i}" for i in range(25)], vectors[:25], [{}] * 25)
    old.close()
    store = EmbeddedStore(tmp_path)
    store.upsert([f"b{i}" for i in range(25)], vectors[25:], [{}] * 25)
    with sqlite3.connect(tmp_path / "images.sqlite") as db:
        sizes = dict(db.execute("SELECT substr(id, 1, 1), length(vector) FROM images GROUP BY 1"))
    assert sizes == {"a": 16, "b": 8}
    np.testing.assert_array_equal(store.get_vector("a3"), vectors[3])
    np.testing.assert_allclose(store.get_vector("b3"), vectors[28], atol=1e-3)
    assert [h.id for h in store.search(vectors[28], k=1)] == ["b3"]
    assert store.search(vectors[28], k=1)[0].score == pytest.approx(1.0, abs=1e-3)
    assert store.vectors().shape == (50, 4)


def test_embedded_refuses_a_newer_schema(tmp_path: Path) -> None:
    EmbeddedStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "images.sqlite") as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreVersionError, match="schema version 99"):
        EmbeddedStore(tmp_path)


def test_rejects_wrong_dimension_and_duplicate_ids(store: Any) -> None:
    with pytest.raises(ValueError, match="8-d"):
        store.upsert(["a"], np.ones((1, 8), dtype=np.float32), [{}])
    with pytest.raises(ValueError, match="duplicate"):
        store.upsert(["a", "a"], np.vstack([vec(1, 0, 0, 0)] * 2), [{}, {}])
    assert store.count() == 0


def test_a_second_client_sees_writes_of_the_first(store: Any, opener: Opener) -> None:
    """A server's store and the CLI's store on the same index: reads, deletes and vector
    lookups of one see what the other committed."""
    writer = store
    reader = opener()
    writer.upsert(["a", "b"], np.vstack([vec(1, 0, 0, 0), vec(0, 1, 0, 0)]), [{}, {}])
    assert reader.get_vector("a") is not None
    assert reader.count() == 2 and sorted(reader.ids()) == ["a", "b"]
    writer.upsert(["c"], vec(0, 0, 1, 0), [{}])
    assert reader.delete(["c"]) == 1
    # The embedded store sees another process's commit at once; Milvus at Session consistency
    # within about a second (its own writes at once: see the other tests).
    deadline = time.monotonic() + 5
    while writer.count() != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert writer.count() == 2
    assert writer.search(vec(0, 0, 1, 0)[0], k=1)[0].id != "c"


def test_filters_hashes_pages_and_samples(store: Any) -> None:
    rng = np.random.default_rng(1)
    vectors = l2_normalise(rng.normal(size=(30, 4)).astype(np.float32))
    payloads = [
        {
            "uri": f"{i}.jpg",
            "hash": f"{i:04x}",
            "source": "odd" if i % 2 else "even",
            "width": 100 + i,
            "meta": {"year": str(1990 + i % 3)},
        }
        for i in range(30)
    ]
    ids = [f"img{i:02d}" for i in range(30)]
    store.upsert(ids, vectors, payloads)
    odd = store.search(vectors[0], k=5, where={"source": "odd"})
    assert len(odd) == 5 and all(h.payload["source"] == "odd" for h in odd)
    assert [h.id for h in store.search(vectors[0], k=5, where={"width": "107"})] == ["img07"]
    assert [h.id for h in store.search(vectors[0], k=5, where={"width": 107})] == ["img07"]
    years = store.search(vectors[0], k=30, where={"meta.year": "1991", "source": "odd"})
    assert {h.id for h in years} == {ids[i] for i in range(30) if i % 3 == 1 and i % 2 == 1}
    assert store.search(vectors[0], k=5, where={"source": "nobody"}) == []
    with pytest.raises(InvalidFilterError):
        store.search(vectors[0], k=5, where={"source": ["a"]})
    assert store.find_by_hash("0007") == "img07" and store.find_by_hash("ffff") is None
    assert store.ids() == ids
    assert [image_id for image_id, _ in store.page(5, 3)] == ids[5:8]
    assert store.page(2, 1)[0][1]["uri"] == "2.jpg"
    assert sorted(i for i, _ in store.payload_items()) == ids
    assert len(store.vectors(limit=10)) == 10 and len(store.vectors()) == 30
    copied = [row for batch in store.items() for row in batch]
    assert sorted(row[0] for row in copied) == ids
    # Several views of one query: each image scores its best view less that view's penalty.
    views = np.stack([vectors[3], vectors[4]])
    top = store.search(views, k=2, penalties=np.array([0.0, 0.5], dtype=np.float32))
    assert top[0].id == "img03" and top[0].score == pytest.approx(1.0, abs=1e-4)
    assert store.search(views, k=1, penalties=np.array([0.5, 0.0], dtype=np.float32))[0].id == "img04"


def test_one_filter_grammar_gives_the_same_matches_on_every_backend(store: Any) -> None:
    """The grammar of `stores.filters`, checked against each backend's own query language."""
    payloads: list[dict[str, Any]] = [
        {"année": "2020", "flag": True, "n": 3, "ratio": 0.5, "meta": {"lieu dit": "Brest"}},
        {"année": "2021", "flag": False, "n": 3, "ratio": 1.5, "meta": {"lieu dit": 'Zürich "am See"'}},
        {"année": "2020", "flag": False, "n": 4, "meta": {"lieu dit": "Brest", "x-y.z": "1"}},
    ]
    store.upsert(["p0", "p1", "p2"], np.vstack([vec(1, 0, 0, 0), vec(0, 1, 0, 0), vec(0, 0, 1, 0)]), payloads)
    cases = [
        ({"année": "2020"}, {"p0", "p2"}),
        ({"année": 2020}, {"p0", "p2"}),
        ({"flag": True}, {"p0"}),
        ({"flag": "false"}, {"p1", "p2"}),
        ({"n": 3}, {"p0", "p1"}),
        ({"ratio": 1.5}, {"p1"}),
        ({"meta.lieu dit": "Brest", "n": "4"}, {"p2"}),
        ({"meta.x-y.z": "1"}, {"p2"}),
        ({"meta.lieu dit": 'Zürich "am See"'}, {"p1"}),
        ({"n": 5}, set()),
    ]
    for where, expected in cases:
        assert {h.id for h in store.search(vec(1, 1, 1, 1)[0], k=3, where=where)} == expected, where
    for bad in ({"a;b": "1"}, {"": "1"}, {"x" * 65: "1"}, {"n": "9" * 201}, {"n": None}):
        with pytest.raises(InvalidFilterError):
            store.search(vec(1, 0, 0, 0)[0], k=3, where=bad)
        with pytest.raises(InvalidFilterError):  # refused even when nothing would be searched
            store.similar(vec(1, 0, 0, 0), k=0, min_score=0.0, where=bad)


def test_the_search_space_is_searched_through_kept_and_seen_by_other_clients(
    store: Any, opener: Opener
) -> None:
    rng = np.random.default_rng(3)
    vectors = l2_normalise(rng.normal(size=(40, 4)).astype(np.float32))
    store.upsert([f"s{i:02d}" for i in range(40)], vectors, [{}] * 40)
    assert store.search_space.projection is None  # raw cosines until a space is set
    mean = vectors.mean(axis=0)
    matrix = np.diag([1.0, 2.0, 0.5, 1.0]).astype(np.float32)[:, :3]  # 3 searched dims
    space = SearchSpace().fitted((mean, matrix), 40, "test fit").calibrated(0.61)
    store.set_search_space(space)
    query = vectors[5] * 0.9 + vectors[6] * 0.1
    hits = store.search(query, k=3)
    expected = space.project(vectors) @ space.project(query)
    assert [h.id for h in hits] == [f"s{i:02d}" for i in np.argsort(-expected)[:3]]
    assert hits[0].score == pytest.approx(float(expected.max()), abs=1e-5)
    other = opener()
    deadline = time.monotonic() + 5
    while other.search_space.version != space.version and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = other.search_space
    assert (seen.version, seen.projection_id, seen.copy_threshold) == (
        space.version,
        space.projection_id,
        0.61,
    )
    assert (seen.fitted_on, seen.fitted_with) == (40, "test fit")
    np.testing.assert_array_equal(seen.projection[1], matrix)  # type: ignore[index]
    assert [h.id for h in other.search(query, k=3)] == [h.id for h in hits]
    # A new threshold is a new version of the same projection.
    recalibrated = seen.calibrated(0.7)
    assert recalibrated.projection_id == space.projection_id != recalibrated.version
    other.set_search_space(recalibrated)
    store.close()
    assert opener().search_space.copy_threshold == 0.7


def test_a_change_computed_from_a_search_space_that_changed_meanwhile_is_refused(
    store: Any, opener: Opener
) -> None:
    """Two processes: one recalibrates the space it read while the other refits it. Written with
    the version it was computed from, the stale change is refused and nothing is written, so it
    cannot put the old projection back."""
    bound = store.search_space  # binding the encoder decided a raw space
    first = bound.calibrated(0.6)
    store.set_search_space(first, replacing=bound.version)
    other = opener()
    matrix = np.eye(4, dtype=np.float32)[:, :3]
    refit = first.fitted((np.zeros(4, np.float32), matrix), 40, "test fit").calibrated(0.65)
    other.set_search_space(refit, replacing=first.version)
    with pytest.raises(SearchSpaceChangedError):
        store.set_search_space(first.calibrated(0.7), replacing=first.version)
    kept = opener().search_space
    assert (kept.version, kept.projection_id) == (refit.version, refit.projection_id)
    assert kept.copy_threshold == 0.65
    # Computed from the space as it is now, the change is written; without `replacing`, always.
    store.set_search_space(kept.calibrated(0.7), replacing=kept.version)
    assert opener().search_space.copy_threshold == 0.7
    other.set_search_space(SearchSpace().calibrated(0.5))
    assert opener().search_space.projection is None


def test_milvus_unreachable_is_a_clear_error() -> None:
    from imagefinder.stores.milvus import MilvusStore

    with pytest.raises(StoreUnavailableError, match="127.0.0.1:9"):
        MilvusStore("http://127.0.0.1:9", "nothing_here", timeout_s=2)


def test_an_index_of_the_fp32_encoder_says_how_to_keep_using_it(tmp_path: Path) -> None:
    """Indexes built before int8 became the default record efficientnet-lite0 v2: the refusal
    names the setting that serves them."""
    from imagefinder.encoders.lite0 import LITE0_INFO, LITE0_INT8_INFO

    store = EmbeddedStore(tmp_path / "old")
    store.bind_encoder(LITE0_INFO)
    store.upsert(["a"], np.ones((1, LITE0_INFO.dim), dtype=np.float32), [{}])
    with pytest.raises(EncoderMismatchError, match="IMAGEFINDER_ENCODER=efficientnet-lite0-fp32"):
        store.bind_encoder(LITE0_INT8_INFO)


def test_the_view_gate_is_kept_with_the_search_space_and_outlives_a_refit(store: Any, opener: Opener) -> None:
    rng = np.random.default_rng(4)
    weights = rng.normal(size=192).astype(np.float32)  # as wide as a real encoder's vectors can be
    gate = ViewGate(weights, -0.25, 0.9, 37, encoder_key(INFO))
    store.set_search_space(SearchSpace().calibrated(0.6).with_view_gate(gate))
    store.close()
    kept = opener().search_space
    assert kept.view_gate is not None
    np.testing.assert_array_equal(kept.view_gate.weights, weights)
    assert (kept.view_gate.bias, kept.view_gate.threshold, kept.view_gate.fitted_on) == (-0.25, 0.9, 37)
    other = EncoderInfo("other-encoder", "1", 4, "none")
    assert kept.gate_for(INFO) is kept.view_gate and kept.gate_for(other) is None
    # A new projection and a new threshold keep the gate: it reads raw encoder vectors.
    matrix = np.eye(4, dtype=np.float32)[:, :3]
    refitted = kept.fitted((np.zeros(4, np.float32), matrix), 40, "test fit").calibrated(0.7)
    assert refitted.view_gate is kept.view_gate
    assert refitted.describe()["view_gate"] == {
        "fitted_on": 37,
        "threshold": 0.9,
        "held_out_plain_share": None,
    }
