"""The embedded store at a size where it switches to its approximate index (small N: the
threshold is lowered), and its crash safety with a real SIGKILL of a writing process."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imagefinder.encoders.base import EncoderInfo
from imagefinder.errors import InvalidFilterError
from imagefinder.stores.embedded import EmbeddedStore

DIM = 32
INFO = EncoderInfo("test-encoder", "1", DIM, "none")
THRESHOLD = 1500


def clustered(n: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM))
    points = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, DIM))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def open_store(path: Path, **options: int) -> EmbeddedStore:
    store = EmbeddedStore(path, exact_below=options.pop("exact_below", THRESHOLD), **options)
    store.bind_encoder(INFO)
    return store


def fill(store: EmbeddedStore, vectors: np.ndarray, start: int = 0) -> list[str]:
    ids = [f"img{start + i:06d}" for i in range(len(vectors))]
    payloads = [
        {"uri": f"{i}.jpg", "source": "even" if (start + n) % 2 == 0 else "odd"} for n, i in enumerate(ids)
    ]
    for offset in range(0, len(ids), 500):
        part = slice(offset, offset + 500)
        store.upsert(ids[part], vectors[part], payloads[part])
    return ids


def exact_top(vectors: np.ndarray, ids: list[str], query: np.ndarray, k: int) -> list[str]:
    order = np.argsort(-(vectors @ query), kind="stable")[:k]
    return [ids[i] for i in order]


def test_switches_to_approximate_at_the_threshold_with_high_recall_and_exact_scores(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    vectors = clustered(3000)
    ids = fill(store, vectors[: THRESHOLD - 1])
    assert store.index_stats()["kind"] == "exact"
    ids += fill(store, vectors[THRESHOLD - 1 :], start=THRESHOLD - 1)
    stats = store.index_stats()
    assert stats["kind"] == "ivf" and stats["vectors"] == 3000 and store.count() == 3000

    queries = clustered(50, seed=1)
    found = 0
    for query in queries:
        hits = store.search(query, k=10)
        truth = exact_top(vectors, ids, query, 10)
        found += len({h.id for h in hits} & set(truth))
        # Returned scores are re-computed from the stored vectors, not the 8-bit codes.
        for hit in hits:
            # (float16 vectors on disk: within 5e-4; the 8-bit codes would be off by about 1e-2)
            assert hit.score == pytest.approx(float(vectors[ids.index(hit.id)] @ query), abs=5e-4)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert found / (10 * len(queries)) >= 0.95

    # Below half the threshold, optimise() goes back to exact search.
    store.delete(ids[: 3000 - THRESHOLD // 2 + 1])
    store.optimise()
    assert store.index_stats()["kind"] == "exact"
    assert store.count() == THRESHOLD // 2 - 1


def test_the_approximate_batch_search_finds_near_copies_with_exact_scores(tmp_path: Path) -> None:
    """`similar` (the duplicates scan) over the IVF index: many rows at once, the few lists each
    scans still hold its near copies, and the scores come from the stored vectors."""
    store = open_store(tmp_path)
    vectors = clustered(3000)
    rng = np.random.default_rng(5)
    copies = vectors[:100] + 0.05 * rng.standard_normal((100, DIM)).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    ids = fill(store, np.concatenate([vectors, copies]))
    assert store.index_stats()["kind"] == "ivf"
    assert (np.einsum("ij,ij->i", copies, vectors[:100]) > 0.9).all()
    found = store.similar(vectors[:100], k=5, min_score=0.9)
    for row, hits in enumerate(found):
        copy_id = ids[3000 + row]
        assert copy_id in [h.id for h in hits], row
        for hit in hits:
            stored = np.concatenate([vectors, copies])[ids.index(hit.id)]
            assert hit.score >= 0.9 and hit.score == pytest.approx(float(stored @ vectors[row]), abs=5e-4)
    store.close()


def test_delete_and_update_are_visible_to_the_next_search(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    vectors = clustered(2000)
    ids = fill(store, vectors)
    assert store.index_stats()["kind"] == "ivf"
    target = ids[123]
    assert store.search(vectors[123], k=1)[0].id == target
    assert store.delete([target]) == 1
    assert target not in {h.id for h in store.search(vectors[123], k=20)}

    # An update moves an image: found by its new vector, with its new payload.
    moved = ids[7]
    store.upsert([moved], vectors[1500:1501], [{"uri": "new.jpg", "source": "moved"}])
    top = store.search(vectors[1500], k=2)
    assert moved in {h.id for h in top}
    assert store.get(moved) == {"uri": "new.jpg", "source": "moved"}
    assert store.count() == 1999


@pytest.mark.parametrize("size", [200, 2000, 9000], ids=["exact", "approximate", "approximate-bitmap"])
def test_filters_apply_during_the_search(tmp_path: Path, size: int) -> None:
    store = open_store(tmp_path)
    vectors = clustered(size)
    ids = fill(store, vectors)
    store.upsert(
        ["rare"],
        vectors[:1] * 0 + vectors[-1],
        [{"uri": "r.jpg", "source": "rare", "meta": {"year": "1999"}}],
    )
    query = vectors[0]
    odd = store.search(query, k=10, where={"source": "odd"})
    assert len(odd) == 10 and all(h.payload["source"] == "odd" for h in odd)
    truth = exact_top(vectors[1::2], ids[1::2], query, 10)
    assert len({h.id for h in odd} & set(truth)) >= 9
    # A filter matching one image out of thousands still finds it: no over-fetch-and-hope.
    assert [h.id for h in store.search(query, k=5, where={"source": "rare"})] == ["rare"]
    assert [h.id for h in store.search(query, k=5, where={"meta.year": "1999"})] == ["rare"]
    assert store.search(query, k=5, where={"source": "rare", "uri": "other.jpg"}) == []
    assert store.search(query, k=5, where={"source": "nobody"}) == []
    with pytest.raises(InvalidFilterError):
        store.search(query, k=5, where={"source": ["a", "list"]})  # type: ignore[dict-item]
    # Deleting an image takes it out of the filter too.
    store.delete(["rare"])
    assert store.search(query, k=5, where={"source": "rare"}) == []


def test_reopen_loads_the_snapshot_and_replays_later_writes(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    vectors = clustered(2500)
    ids = fill(store, vectors[:2000])
    store.checkpoint()
    assert len(list(tmp_path.glob("ann-*.faiss"))) == 1
    # Writes after the snapshot, then no close(): as if the process had been killed.
    fill(store, vectors[2000:], start=2000)
    store.delete(ids[:10])
    before = [h.id for h in store.search(vectors[2100], k=10)]
    del store

    reopened = EmbeddedStore(tmp_path, exact_below=THRESHOLD)
    assert reopened.index_stats()["kind"] == "ivf"
    assert reopened.count() == 2490
    assert [h.id for h in reopened.search(vectors[2100], k=10)] == before
    assert ids[3] not in {h.id for h in reopened.search(vectors[3], k=10)}


def test_a_damaged_snapshot_is_rebuilt_from_the_database(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    vectors = clustered(2000)
    fill(store, vectors)
    store.close()
    (snapshot,) = tmp_path.glob("ann-*.faiss")
    snapshot.write_bytes(b"not an index")
    reopened = EmbeddedStore(tmp_path, exact_below=THRESHOLD)
    assert reopened.count() == 2000
    assert reopened.search(vectors[5], k=1)[0].id == "img000005"


def test_a_second_process_follows_writes_in_approximate_mode(tmp_path: Path) -> None:
    writer = open_store(tmp_path)
    vectors = clustered(2600)
    fill(writer, vectors[:2000])
    reader = EmbeddedStore(tmp_path, exact_below=THRESHOLD)
    assert reader.index_stats()["kind"] == "ivf"
    fill(writer, vectors[2000:], start=2000)
    writer.delete(["img000001"])
    assert reader.count() == 2599
    assert reader.search(vectors[2500], k=1)[0].id == "img002500"
    assert "img000001" not in {h.id for h in reader.search(vectors[1], k=10)}


def test_a_reader_that_closes_after_another_pruned_the_log_loses_nothing(tmp_path: Path) -> None:
    """A server's store replays some of the CLI's writes, the CLI writes more and its optimise
    prunes the change log, then the server closes without another request: its closing
    checkpoint must catch up first, or its snapshot would hide what the pruned log held."""
    writer = open_store(tmp_path)
    vectors = clustered(3000, seed=5)
    ids = fill(writer, vectors[:2000])
    writer.optimise()
    reader = EmbeddedStore(tmp_path, exact_below=THRESHOLD)
    ids += fill(writer, vectors[2000:2300], start=2000)
    assert reader.count() == 2300  # replayed: unsaved changes of its own
    ids += fill(writer, vectors[2300:], start=2300)
    writer.optimise()  # prunes the log up to its last write
    reader.close()
    writer.close()
    again = EmbeddedStore(tmp_path, exact_below=THRESHOLD)
    assert again.count() == 3000
    for n in (2100, 2500, 2999):
        assert again.search(vectors[n], k=1)[0].id == ids[n]


@pytest.mark.parametrize("with_hash_column", [True, False], ids=["v1", "early-v1-without-hash"])
def test_a_version_1_store_is_upgraded_in_place(tmp_path: Path, with_hash_column: bool) -> None:
    db = sqlite3.connect(tmp_path / "images.sqlite")
    images = (
        "CREATE TABLE images (id TEXT PRIMARY KEY, hash TEXT, vector BLOB NOT NULL, payload TEXT NOT NULL);"
        "CREATE INDEX images_hash ON images (hash);"
        "CREATE TABLE arrays (key TEXT PRIMARY KEY, value BLOB NOT NULL);"
        if with_hash_column
        else "CREATE TABLE images (id TEXT PRIMARY KEY, vector BLOB NOT NULL, payload TEXT NOT NULL);"
    )
    db.executescript(
        images
        + """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1'), ('encoder_name', 'test-encoder'),
            ('encoder_version', '1'), ('encoder_dim', '32'), ('encoder_preprocessing', 'none');
        """
    )
    vectors = clustered(3)
    for n, vector in enumerate(vectors):
        payload = json.dumps({"uri": f"{n}.jpg", "source": "v1", "hash": f"h{n}"})
        if with_hash_column:
            db.execute(
                "INSERT INTO images VALUES (?, ?, ?, ?)", (f"old{n}", f"h{n}", vector.tobytes(), payload)
            )
        else:
            db.execute("INSERT INTO images VALUES (?, ?, ?)", (f"old{n}", vector.tobytes(), payload))
    db.commit()
    db.close()
    store = EmbeddedStore(tmp_path)
    assert store.count() == 3
    assert store.search(vectors[2], k=1)[0].id == "old2"
    assert store.find_by_hash("h1") == "old1"
    assert len(store.search(vectors[0], k=5, where={"source": "v1"})) == 3


# -- SIGKILL during writes ---------------------------------------------------------------------

_WRITER = """
import sys, numpy as np
from pathlib import Path
from imagefinder.encoders.base import EncoderInfo
from imagefinder.stores.embedded import EmbeddedStore
path, seed = Path(sys.argv[1]), int(sys.argv[2])
store = EmbeddedStore(path, exact_below=1500, checkpoint_every=700)
store.bind_encoder(EncoderInfo("test-encoder", "1", 32, "none"))
rng = np.random.default_rng(seed)
batch = 0
while True:
    ids = [f"s{seed}-b{batch}-{i}" for i in range(100)]
    v = rng.standard_normal((100, 32)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    store.upsert(ids, v, [{"uri": i, "batch": batch} for i in ids])
    print("added", *ids, flush=True)
    gone = [f"s{seed}-b{batch - 2}-{i}" for i in range(0, 100, 3)]
    print("deleting", *gone, flush=True)
    store.delete(gone)
    print("deleted", *gone, flush=True)
    if batch % 7 == 6:
        store.optimise()
        print("optimised", flush=True)
    batch += 1
"""


def _kill_after(path: Path, seed: int, delay_s: float) -> tuple[set[str], set[str], set[str]]:
    """Run the writer, SIGKILL it after `delay_s`: the ids it acknowledged adding, those it
    started deleting, and those whose deletion it acknowledged."""
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(seed)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    time.sleep(delay_s)
    process.send_signal(signal.SIGKILL)
    output, _ = process.communicate()
    added: set[str] = set()
    deleting: set[str] = set()
    deleted: set[str] = set()
    for line in output.splitlines():
        word, *ids = line.split()
        if word == "added" and len(ids) == 100:
            added.update(ids)
        elif word == "deleting":
            deleting.update(ids)  # a partial line still names ids whose deletion may have run
        elif word == "deleted" and len(ids) == 34:
            deleted.update(ids)
    return added, deleting, deleted


@pytest.mark.parametrize("delay_s", [1.5, 3.0, 4.5])
def test_sigkill_mid_write_loses_no_acknowledged_write(tmp_path: Path, delay_s: float) -> None:
    acknowledged: set[str] = set()
    attempted: set[str] = set()
    removed: set[str] = set()
    for round_ in range(2):  # the second run starts from the store the first one left
        added, deleting, deleted = _kill_after(tmp_path, round_, delay_s)
        acknowledged |= added
        attempted |= deleting
        removed |= deleted
    assert acknowledged, "the writer acknowledged nothing before the kill: raise the delay"
    store = EmbeddedStore(tmp_path, exact_below=THRESHOLD)
    rows = sqlite3.connect(tmp_path / "images.sqlite").execute("SELECT COUNT(*) FROM images").fetchone()[0]
    assert store.count() == rows  # the index and the rows agree
    held = set(store.ids())
    assert acknowledged - attempted <= held
    assert not removed & held
    # Every image the index holds is found by its own vector, with its payload.
    sample = sorted(held)[:: max(1, len(held) // 40)]
    for image_id in sample:
        vector = store.get_vector(image_id)
        assert vector is not None
        top = store.search(vector, k=1)[0]
        assert top.id == image_id and top.payload["uri"] == image_id
