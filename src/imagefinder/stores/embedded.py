"""The default store: one SQLite file for ids, payloads and vectors, plus an in-memory matrix for
exact cosine search. No server; every write is one SQLite transaction, so a process killed at any
moment leaves a store that opens with vectors and payloads in agreement (they share a row).

Exact search (one matrix-vector product) answers in a few milliseconds up to tens of thousands of
images; an approximate index for larger collections is a separate concern.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from imagefinder.encoders.base import EncoderInfo
from imagefinder.errors import EncoderMismatchError, StoreVersionError
from imagefinder.stores.base import Hit, Payload

SCHEMA_VERSION = 1
DB_NAME = "images.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    hash TEXT,
    vector BLOB NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_hash ON images (hash);
CREATE TABLE IF NOT EXISTS arrays (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


class EmbeddedStore:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_NAME
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # WAL: readers never block the writer. synchronous=FULL: a committed batch survives
        # power loss, not just a killed process; it costs one fsync per batch of images.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # Another process (the CLI indexing while a server runs) may hold the write lock briefly.
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)
        self._check_schema_version()
        self._encoder = self._read_encoder_info()
        self._ids: list[str] = []
        self._rows: dict[str, int] = {}
        self._vectors = np.zeros((0, self._encoder.dim if self._encoder else 0), dtype=np.float32)
        # Read the change counter before the rows: a commit landing in between is then seen as
        # a change at the next read, instead of being missed.
        self._data_version = self._read_data_version()
        # An optional linear projection (whitening): search runs on l2n((x - mean) @ P).
        self._projection: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None
        self._searched = self._vectors
        self._load_vectors()

    # -- encoder binding -------------------------------------------------------------------

    @property
    def encoder_info(self) -> EncoderInfo | None:
        return self._encoder

    def bind_encoder(self, info: EncoderInfo) -> None:
        with self._lock:
            current = self._encoder
            if current is not None and (current.name, current.version, current.dim) == (
                info.name,
                info.version,
                info.dim,
            ):
                return
            if current is not None and self.count() > 0:
                raise EncoderMismatchError(
                    f"the index at {self.path.parent} was built with encoder {current.name} "
                    f"v{current.version} ({current.dim}-d) and cannot be searched or extended "
                    f"with {info.name} v{info.version} ({info.dim}-d); use another store path "
                    "or rebuild the index"
                )
            with self._transaction():
                for key, value in (
                    ("encoder_name", info.name),
                    ("encoder_version", info.version),
                    ("encoder_dim", str(info.dim)),
                    ("encoder_preprocessing", info.preprocessing),
                ):
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
                self._db.execute("DELETE FROM arrays")  # a projection belongs to the old encoder
            self._encoder = info
            self._vectors = np.zeros((0, info.dim), dtype=np.float32)
            self._apply_projection(None)

    # -- writes ----------------------------------------------------------------------------

    def upsert(self, ids: Sequence[str], vectors: NDArray[np.float32], payloads: Sequence[Payload]) -> None:
        if not (len(ids) == len(vectors) == len(payloads)):
            raise ValueError("ids, vectors and payloads differ in length")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in one upsert")
        if self._encoder is None:
            raise RuntimeError("bind_encoder must be called before the first upsert")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(ids) and vectors.shape[1] != self._encoder.dim:
            raise ValueError(f"vectors are {vectors.shape[1]}-d, the index is {self._encoder.dim}-d")
        with self._lock:
            with self._transaction():
                self._db.executemany(
                    "INSERT OR REPLACE INTO images (id, hash, vector, payload) VALUES (?, ?, ?, ?)",
                    [
                        (image_id, payload.get("hash"), vector.tobytes(), json.dumps(dict(payload)))
                        for image_id, vector, payload in zip(ids, vectors, payloads, strict=True)
                    ],
                )
            # Memory changes only after the commit: a failed write leaves search unchanged.
            for image_id, vector in zip(ids, vectors, strict=True):
                self._put_in_memory(image_id, vector)

    def delete(self, ids: Sequence[str]) -> int:
        with self._lock:
            self._reload_if_changed_elsewhere()
            present = [image_id for image_id in dict.fromkeys(ids) if image_id in self._rows]
            if not present:
                return 0
            with self._transaction():
                self._db.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in present])
            for image_id in present:
                self._remove_from_memory(image_id)
            return len(present)

    # -- reads -----------------------------------------------------------------------------

    def search(
        self,
        vector: NDArray[np.float32],
        k: int,
        penalties: NDArray[np.float32] | None = None,
    ) -> list[Hit]:
        """The k best matches. `vector` is one (dim,) vector, or several views of one query
        (views, dim): then an image scores its best view, less that view's penalty."""
        with self._lock:
            self._reload_if_changed_elsewhere()
            n = len(self._ids)
            if n == 0 or k < 1:
                return []
            query = self._project(np.asarray(vector, dtype=np.float32))
            if query.ndim == 1:
                scores = self._searched[:n] @ query
            else:
                per_view = self._searched[:n] @ query.T
                if penalties is not None:
                    per_view -= np.asarray(penalties, dtype=np.float32)
                scores = per_view.max(axis=1)
            k = min(k, n)
            if k < n:
                # Every row scoring at least the k-th best, so ties at the cut are all considered.
                kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
                top = np.flatnonzero(scores >= kth)
            else:
                top = np.arange(n)
            # Best first; equal scores in id order so results are stable between calls.
            ranked = sorted(top.tolist(), key=lambda row: (-float(scores[row]), self._ids[row]))[:k]
            chosen = [(self._ids[row], float(scores[row])) for row in ranked]
        payloads = self._payloads([image_id for image_id, _ in chosen])
        return [Hit(image_id, score, payloads.get(image_id, {})) for image_id, score in chosen]

    def get(self, image_id: str) -> Payload | None:
        return self._payloads([image_id]).get(image_id)

    def find_by_hash(self, content_hash: str) -> str | None:
        """The id of an image with these exact bytes, if the store holds one."""
        with self._lock:
            row = self._db.execute("SELECT id FROM images WHERE hash = ? LIMIT 1", (content_hash,)).fetchone()
        return None if row is None else str(row[0])

    def payload_items(self) -> Iterator[tuple[str, Payload]]:
        """Every (id, payload), in pages, so a large store is not read into memory at once."""
        last = ""
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT id, payload FROM images WHERE id > ? ORDER BY id LIMIT 1000", (last,)
                ).fetchall()
            if not rows:
                return
            for image_id, payload in rows:
                yield image_id, json.loads(payload)
            last = rows[-1][0]

    def page(self, offset: int, limit: int) -> list[tuple[str, Payload]]:
        """(id, payload) in id order, `limit` of them from `offset`: for browsing the collection."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, payload FROM images ORDER BY id LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return [(image_id, json.loads(payload)) for image_id, payload in rows]

    def vectors(self, projected: bool = True) -> NDArray[np.float32]:
        """A copy of all vectors, in no particular order: as searched (after the projection, when
        one is set), or as the encoder made them."""
        with self._lock:
            self._reload_if_changed_elsewhere()
            source = self._searched if projected else self._vectors
            return source[: len(self._ids)].copy()

    def set_projection(self, projection: tuple[NDArray[np.float32], NDArray[np.float32]] | None) -> None:
        """Search through `(mean, P)` from now on (None: the raw vectors). Kept with the index."""
        with self._lock:
            with self._transaction():
                self._db.execute("DELETE FROM arrays WHERE key IN ('projection_mean', 'projection')")
                if projection is not None:
                    mean, matrix = projection
                    self._db.executemany(
                        "INSERT INTO arrays VALUES (?, ?)",
                        [("projection_mean", _array_bytes(mean)), ("projection", _array_bytes(matrix))],
                    )
            self._apply_projection(projection)

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (f"user.{key}",)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Small facts about the index (a calibrated threshold), kept with it."""
        with self._lock, self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"user.{key}", value))

    def get_vector(self, image_id: str) -> NDArray[np.float32] | None:
        with self._lock:
            self._reload_if_changed_elsewhere()
            row = self._rows.get(image_id)
            return None if row is None else self._vectors[row].copy()

    def ids(self) -> list[str]:
        with self._lock:
            self._reload_if_changed_elsewhere()
            return list(self._ids)

    def count(self) -> int:
        with self._lock:
            self._reload_if_changed_elsewhere()
            return len(self._ids)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- internals -------------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _payloads(self, ids: list[str]) -> dict[str, Payload]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._db.execute(f"SELECT id, payload FROM images WHERE id IN ({marks})", ids).fetchall()
        return {image_id: json.loads(payload) for image_id, payload in rows}

    def _put_in_memory(self, image_id: str, vector: NDArray[np.float32]) -> None:
        row = self._rows.get(image_id)
        if row is None:
            row = len(self._ids)
            if row == len(self._vectors):  # grow by doubling: amortised O(1) appends
                self._vectors = _grown(self._vectors, row, vector.shape[0])
                if self._projection is not None:
                    self._searched = _grown(self._searched, row, self._projection[1].shape[1])
            self._ids.append(image_id)
            self._rows[image_id] = row
        self._vectors[row] = vector
        if self._projection is None:
            self._searched = self._vectors
        else:
            self._searched[row] = self._project(vector)

    def _remove_from_memory(self, image_id: str) -> None:
        # Move the last row into the hole so the matrix stays dense.
        row = self._rows.pop(image_id)
        last = len(self._ids) - 1
        if row != last:
            moved = self._ids[last]
            self._ids[row] = moved
            self._rows[moved] = row
            self._vectors[row] = self._vectors[last]
            if self._projection is not None:
                self._searched[row] = self._searched[last]
        self._ids.pop()

    def _read_data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _reload_if_changed_elsewhere(self) -> None:
        """SQLite bumps `data_version` when another connection commits; then the in-memory
        matrix is stale and is read again. Our own commits do not bump it."""
        version = self._read_data_version()
        if version == self._data_version:
            return
        self._data_version = version
        self._encoder = self._read_encoder_info()
        self._ids, self._rows = [], {}
        self._vectors = np.zeros((0, self._encoder.dim if self._encoder else 0), dtype=np.float32)
        self._load_vectors()

    def _load_vectors(self) -> None:
        self._load_rows()
        arrays = dict(self._db.execute("SELECT key, value FROM arrays").fetchall())
        projection = None
        if "projection" in arrays and "projection_mean" in arrays:
            projection = (_array_from(arrays["projection_mean"]), _array_from(arrays["projection"]))
        self._apply_projection(projection)

    def _apply_projection(self, projection: tuple[NDArray[np.float32], NDArray[np.float32]] | None) -> None:
        self._projection = projection
        n = len(self._ids)
        if projection is None:
            self._searched = self._vectors
            return
        searched = np.zeros((max(len(self._vectors), n), projection[1].shape[1]), dtype=np.float32)
        searched[:n] = self._project(self._vectors[:n])
        self._searched = searched

    def _project(self, vectors: NDArray[np.float32]) -> NDArray[np.float32]:
        if self._projection is None:
            return vectors
        mean, matrix = self._projection
        projected = (vectors - mean) @ matrix
        norms = np.linalg.norm(projected, axis=-1, keepdims=True)
        return (projected / np.maximum(norms, 1e-12)).astype(np.float32)

    def _load_rows(self) -> None:
        rows = self._db.execute("SELECT id, vector FROM images").fetchall()
        if not rows:
            return
        dim = len(rows[0][1]) // 4
        self._vectors = np.empty((len(rows), dim), dtype=np.float32)
        for row, (image_id, blob) in enumerate(rows):
            self._vectors[row] = np.frombuffer(blob, dtype=np.float32)
            self._ids.append(image_id)
            self._rows[image_id] = row

    def _check_schema_version(self) -> None:
        found = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if found is None:
            # OR IGNORE: two processes creating the same new store at once must both succeed.
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(found[0]) > SCHEMA_VERSION:
            raise StoreVersionError(
                f"the index at {self.path.parent} has schema version {found[0]}, newer than this "
                f"ImageFinder understands ({SCHEMA_VERSION}); upgrade ImageFinder"
            )

    def _read_encoder_info(self) -> EncoderInfo | None:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if "encoder_name" not in meta:
            return None
        return EncoderInfo(
            name=meta["encoder_name"],
            version=meta["encoder_version"],
            dim=int(meta["encoder_dim"]),
            preprocessing=meta.get("encoder_preprocessing", ""),
        )


class _Transaction:
    """`with` block that runs BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _grown(matrix: NDArray[np.float32], rows: int, dim: int) -> NDArray[np.float32]:
    grown = np.zeros((max(64, 2 * rows), dim), dtype=np.float32)
    grown[:rows] = matrix[:rows]
    return grown


def _array_bytes(array: NDArray[np.float32]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _array_from(data: bytes) -> NDArray[np.float32]:
    return np.load(io.BytesIO(data), allow_pickle=False)
