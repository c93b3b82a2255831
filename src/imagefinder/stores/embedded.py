"""The default store: one SQLite file that is the truth (ids, payloads, the encoder's vectors), and
an in-memory index over the searched vectors (after the optional whitening projection).

- Small collections are searched exactly (`ExactIndex`); from `exact_below` images on, the store
  switches by itself to an approximate IVF-SQ8 index (`IvfIndex`, about `dim` bytes per image)
  whose candidates are re-scored from the exact vectors, so returned scores are exact cosines.
  Below half the threshold it goes back to exact search.
- Every write is one SQLite transaction that also appends the changed keys to a `changes` log.
  The approximate index is saved now and then as a snapshot (write, fsync, rename) that records
  the last change it contains; opening loads the snapshot and replays the later changes. A
  process killed at any moment leaves a store that opens, with vectors and payloads in agreement
  (they share a row), and never loses an acknowledged write.
- Other processes' writes (the CLI indexing while a server runs) are picked up from the same log.
- Payload filters use a `fields` table (one row per scalar payload field, indexed), so a filter
  selects keys by an index lookup and the vector index scans only those keys.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imagefinder.encoders.base import EncoderInfo
from imagefinder.errors import InvalidFilterError, StoreVersionError
from imagefinder.stores.ann import ExactIndex, IvfIndex, VectorIndex, nlist_for, training_size
from imagefinder.stores.base import (
    Filter,
    Hit,
    Payload,
    checked_upsert,
    refuse_other_encoder,
    same_encoder,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
DB_NAME = "images.sqlite"
# Exact search over 20k vectors of 256-d takes about 2 ms; from there on IVF-SQ8 is faster.
EXACT_BELOW = 20_000
# Lists scanned per query: recall@10 0.98 on the 1M benchmark (bench/results/index.json).
DEFAULT_NPROBE = 32
# Save the approximate index after this many changes, so a reopen replays at most this many.
CHECKPOINT_EVERY = 50_000
# Candidates re-scored exactly per result asked for (at least k + RERANK_EXTRA).
RERANK_FACTOR, RERANK_EXTRA = 2, 16
_CHUNK = 500  # keys per `IN (...)` query: well under SQLite's limit on bound variables
_FIELD_NAME = re.compile(r"^[^\x00-\x1f]{1,64}$")
_FIELD_MAX_CHARS = 200  # longer payload values (long URIs) are not filterable
_FILTER_CACHE_SIZE = 16

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    key INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    hash TEXT,
    vector BLOB NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_hash ON images (hash);
CREATE TABLE IF NOT EXISTS arrays (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, key INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS fields (
    name TEXT NOT NULL, value TEXT NOT NULL, key INTEGER NOT NULL, PRIMARY KEY (name, value, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fields_key ON fields (key);
"""

_UPSERT = """
INSERT INTO images (id, hash, vector, payload) VALUES (?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET hash = excluded.hash, vector = excluded.vector, payload = excluded.payload
"""


class EmbeddedStore:
    def __init__(
        self,
        directory: Path,
        exact_below: int = EXACT_BELOW,
        nprobe: int = DEFAULT_NPROBE,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.path = directory / DB_NAME
        self._exact_below = exact_below
        self._nprobe = nprobe
        self._checkpoint_every = checkpoint_every
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # WAL: readers never block the writer. synchronous=FULL: a committed batch survives
        # power loss, not just a killed process; it costs one fsync per batch of images.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # Another process (the CLI indexing while a server runs) may hold the write lock briefly.
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._check_schema_version()
        self._db.executescript(_SCHEMA)
        self._encoder: EncoderInfo | None = None
        # An optional linear projection (whitening): search runs on l2n((x - mean) @ P).
        self._projection: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None
        self._generation = ""  # names the projection the in-memory index was built with
        self._index: VectorIndex = ExactIndex(0)
        self._seq = 0  # the last change the in-memory index contains
        self._snapshot_seq = 0  # the last change in the saved snapshot
        self._data_version = 0
        # (change seq, conditions) -> matching keys; an answer is valid while seq is unchanged.
        self._filter_cache: dict[tuple[int, tuple[tuple[str, str], ...]], NDArray[np.int64]] = {}
        self._load()

    # -- encoder binding -------------------------------------------------------------------

    @property
    def encoder_info(self) -> EncoderInfo | None:
        return self._encoder

    def bind_encoder(self, info: EncoderInfo) -> None:
        with self._lock:
            self._catch_up()
            current = self._encoder
            if same_encoder(current, info):
                return
            if current is not None and self.count() > 0:
                refuse_other_encoder(current, info, str(self.directory), "another store path")
            generation = uuid.uuid4().hex
            with self._transaction():
                for key, value in (
                    ("encoder_name", info.name),
                    ("encoder_version", info.version),
                    ("encoder_dim", str(info.dim)),
                    ("encoder_preprocessing", info.preprocessing),
                    ("generation", generation),
                ):
                    self._set_meta(key, value)
                self._db.execute("DELETE FROM arrays")  # a projection belongs to the old encoder
            self._encoder, self._projection, self._generation = info, None, generation
            self._index = ExactIndex(info.dim)

    # -- writes ----------------------------------------------------------------------------

    def upsert(self, ids: Sequence[str], vectors: NDArray[np.float32], payloads: Sequence[Payload]) -> None:
        vectors = checked_upsert(self._encoder, ids, vectors, payloads)
        if not ids:
            return
        with self._lock:
            with self._transaction():
                self._catch_up()
                self._db.executemany(
                    _UPSERT,
                    [
                        (image_id, payload.get("hash"), vector.tobytes(), json.dumps(dict(payload)))
                        for image_id, vector, payload in zip(ids, vectors, payloads, strict=True)
                    ],
                )
                keys = self._keys_of(ids)
                self._write_fields(keys, payloads)
                seq = self._log_changes(keys)
            # Memory changes only after the commit: a failed write leaves search unchanged.
            self._index.remove(keys)
            self._index.add(keys, self._project(vectors))
            self._seq = seq
            self._after_write()

    def delete(self, ids: Sequence[str]) -> int:
        with self._lock:
            with self._transaction():
                self._catch_up()
                keys = self._keys_of(list(dict.fromkeys(ids)), missing_ok=True)
                if len(keys) == 0:
                    return 0
                for chunk in _chunks(keys):
                    marks = ",".join("?" * len(chunk))
                    self._db.execute(f"DELETE FROM images WHERE key IN ({marks})", chunk)
                    self._db.execute(f"DELETE FROM fields WHERE key IN ({marks})", chunk)
                seq = self._log_changes(keys)
            self._index.remove(keys)
            self._seq = seq
            self._after_write()
            return len(keys)

    def set_projection(self, projection: tuple[NDArray[np.float32], NDArray[np.float32]] | None) -> None:
        """Search through `(mean, P)` from now on (None: the raw vectors). Kept with the index;
        the in-memory index is rebuilt from the stored vectors."""
        with self._lock:
            generation = uuid.uuid4().hex
            with self._transaction():
                self._db.execute("DELETE FROM arrays WHERE key IN ('projection_mean', 'projection')")
                if projection is not None:
                    mean, matrix = projection
                    self._db.executemany(
                        "INSERT INTO arrays VALUES (?, ?)",
                        [("projection_mean", _array_bytes(mean)), ("projection", _array_bytes(matrix))],
                    )
                self._set_meta("generation", generation)
            self._projection, self._generation = projection, generation
            self._data_version = self._read_data_version()
            self._build()

    def optimise(self) -> None:
        """After a bulk change: pick exact or approximate search for the collection's size,
        retrain the approximate index when the rule of `nlist_for` asks for more lists (at 33k,
        131k, 524k, 2.1M images: too few lists cost recall at a given nprobe, measured in
        bench/index.py) or for under half as many, and save a snapshot so the next open is fast."""
        with self._lock:
            self._catch_up()
            n, index = len(self._index), self._index
            if isinstance(index, ExactIndex) and n >= self._exact_below:
                self._switch_to_ivf(index)
            elif isinstance(index, IvfIndex) and (
                n < self._exact_below // 2 or not index.nlist // 2 <= nlist_for(n) <= index.nlist
            ):
                self._build()
            self.checkpoint()

    def checkpoint(self) -> None:
        """Save the approximate index (if any) and drop the change log it makes unnecessary."""
        with self._lock, self._transaction():
            self._catch_up()  # so the snapshot is the newest state: nothing pruned is missing
            seq = self._seq
            if isinstance(self._index, IvfIndex):
                name = f"ann-{self._generation[:12]}-{seq}.faiss"
                self._index.save(self.directory / name)
                for key, value in (
                    ("ann_file", name),
                    ("ann_seq", str(seq)),
                    ("ann_generation", self._generation),
                    ("ann_trained_on", str(self._index.trained_on)),
                ):
                    self._set_meta(key, value)
            else:
                self._db.execute("DELETE FROM meta WHERE key LIKE 'ann_%'")
                name = ""
            self._db.execute("DELETE FROM changes WHERE seq <= ?", (seq,))
            self._set_meta("changes_pruned_upto", str(seq))
            self._snapshot_seq = seq
        for old in self.directory.glob("ann-*.faiss*"):
            if old.name != name:
                old.unlink(missing_ok=True)

    # -- reads -----------------------------------------------------------------------------

    def search(
        self,
        vector: NDArray[np.float32],
        k: int,
        penalties: NDArray[np.float32] | None = None,
        where: Filter | None = None,
    ) -> list[Hit]:
        """The k best matches. `vector` is one (dim,) vector, or several views of one query
        (views, dim): then an image scores its best view, less that view's penalty. `where`
        keeps only images whose payload has these field values."""
        queries = np.atleast_2d(np.asarray(vector, dtype=np.float32))
        offsets = np.zeros(len(queries), dtype=np.float32) if penalties is None else np.asarray(penalties)
        with self._lock:
            self._catch_up()
            if k < 1 or len(self._index) == 0:
                return []
            allowed = self._matching_keys(where) if where else None
            projected = self._project(queries)
            approximate = isinstance(self._index, IvfIndex)
            wanted = max(RERANK_FACTOR * k, k + RERANK_EXTRA) if approximate else k
            candidates = self._index.search(projected, offsets, wanted, allowed)
            rows = self._rows_of([key for key, _ in candidates], with_vectors=approximate)
        if approximate:
            # Exact scores from the stored vectors: recall and scores do not suffer from the
            # 8-bit codes the approximate index searched with.
            found = list(rows.values())
            if not found:
                return []
            exact = self._project(np.stack([row[2] for row in found])) @ projected.T - offsets
            scored = [
                (row[0], float(score), row[1]) for row, score in zip(found, exact.max(axis=1), strict=True)
            ]
        else:
            scored = [(rows[key][0], score, rows[key][1]) for key, score in candidates if key in rows]
        # Best first; equal scores in id order so results are stable between calls.
        scored.sort(key=lambda item: (-item[1], item[0]))
        return [Hit(image_id, score, payload) for image_id, score, payload in scored[:k]]

    def get(self, image_id: str) -> Payload | None:
        with self._lock:
            row = self._db.execute("SELECT payload FROM images WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else json.loads(row[0])

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

    def items(self) -> Iterator[list[tuple[str, NDArray[np.float32], Payload]]]:
        """Every (id, vector as the encoder made it, payload), in batches: for `migrate`."""
        last = -1
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT key, id, vector, payload FROM images WHERE key > ? ORDER BY key LIMIT 1000",
                    (last,),
                ).fetchall()
            if not rows:
                return
            yield [
                (image_id, _vector(blob).copy(), json.loads(payload)) for _, image_id, blob, payload in rows
            ]
            last = rows[-1][0]

    def page(self, offset: int, limit: int) -> list[tuple[str, Payload]]:
        """(id, payload) in id order, `limit` of them from `offset`: for browsing the collection."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, payload FROM images ORDER BY id LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return [(image_id, json.loads(payload)) for image_id, payload in rows]

    def vectors(self, projected: bool = True, limit: int | None = None) -> NDArray[np.float32]:
        """Stored vectors, as searched (after the projection, when one is set) or as the encoder
        made them: all of them, or a random sample of at most `limit` (large collections)."""
        with self._lock, self._read_snapshot():
            total = self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            if limit is not None and total > limit:
                keys = [
                    k
                    for (k,) in self._db.execute("SELECT key FROM images ORDER BY random() LIMIT ?", (limit,))
                ]
                blobs = [row[2] for row in self._rows_of(keys, with_vectors=True).values()]
            else:
                blobs = [
                    _vector(blob) for (blob,) in self._db.execute("SELECT vector FROM images ORDER BY key")
                ]
        dim = self._encoder.dim if self._encoder else 0
        raw = np.stack(blobs) if blobs else np.zeros((0, dim), dtype=np.float32)
        return self._project(raw) if projected else raw

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (f"user.{key}",)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Small facts about the index (a calibrated threshold), kept with it."""
        with self._lock, self._transaction():
            self._set_meta(f"user.{key}", value)

    def get_vector(self, image_id: str) -> NDArray[np.float32] | None:
        with self._lock:
            row = self._db.execute("SELECT vector FROM images WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else np.frombuffer(row[0], dtype=np.float32).copy()

    def ids(self) -> list[str]:
        with self._lock:
            return [image_id for (image_id,) in self._db.execute("SELECT id FROM images ORDER BY id")]

    def count(self) -> int:
        with self._lock:
            self._catch_up()
            return len(self._index)

    def index_stats(self) -> dict[str, Any]:
        """What searches run on: for `imagefinder info` and /health."""
        with self._lock:
            self._catch_up()
            stats: dict[str, Any] = {"kind": self._index.kind, "vectors": len(self._index)}
            if isinstance(self._index, IvfIndex):
                stats.update(nlist=self._index.nlist, nprobe=self._index.nprobe)
            stats["dim"] = self._searched_dim()
            return stats

    def close(self) -> None:
        with self._lock:
            if isinstance(self._index, IvfIndex) and self._seq > self._snapshot_seq:
                self.checkpoint()
            self._db.close()

    # -- keeping memory in line with the database -------------------------------------------

    def _load(self) -> None:
        """From scratch: the saved snapshot plus later changes when it fits, else a build."""
        self._data_version = self._read_data_version()
        meta = self._meta()
        self._encoder = _encoder_from(meta)
        self._generation = meta.get("generation", "")
        arrays = dict(self._db.execute("SELECT key, value FROM arrays").fetchall())
        self._projection = None
        if "projection" in arrays and "projection_mean" in arrays:
            self._projection = (_array_from(arrays["projection_mean"]), _array_from(arrays["projection"]))
        snapshot = meta.get("ann_file")
        if snapshot and meta.get("ann_generation") == self._generation:
            seq = int(meta["ann_seq"])
            if seq >= int(meta.get("changes_pruned_upto", "0")):
                try:
                    self._index = IvfIndex.load(
                        self.directory / snapshot, self._nprobe, int(meta["ann_trained_on"])
                    )
                except (OSError, RuntimeError) as exc:  # missing or damaged: the rows are the truth
                    log.warning(
                        "index snapshot %s unusable (%s); rebuilding from the database", snapshot, exc
                    )
                else:
                    self._seq = self._snapshot_seq = seq
                    self._replay()
                    return
        self._build()

    def _build(self) -> None:
        """The in-memory index from every stored vector: exact or approximate by size."""
        with self._read_snapshot():
            seq = self._last_seq()
            n = self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            index: VectorIndex
            if n >= self._exact_below:
                nlist = nlist_for(n)
                sample_keys = [
                    key
                    for (key,) in self._db.execute(
                        "SELECT key FROM images ORDER BY random() LIMIT ?", (training_size(nlist, n),)
                    )
                ]
                sample = np.stack([row[2] for row in self._rows_of(sample_keys, with_vectors=True).values()])
                index = IvfIndex.train(self._project(sample), nlist, self._nprobe)
            else:
                index = ExactIndex(self._searched_dim())
            last = -1
            while True:
                rows = self._db.execute(
                    "SELECT key, vector FROM images WHERE key > ? ORDER BY key LIMIT 20000", (last,)
                ).fetchall()
                if not rows:
                    break
                keys = np.array([key for key, _ in rows], dtype=np.int64)
                index.add(keys, self._project(np.stack([_vector(blob) for _, blob in rows])))
                last = int(keys[-1])
        self._index, self._seq = index, seq
        self._snapshot_seq = 0
        if isinstance(index, IvfIndex) and not self._db.in_transaction:
            self.checkpoint()  # else the next write's checkpoint saves it

    def _switch_to_ivf(self, exact: ExactIndex) -> None:
        """Exact -> approximate, from the vectors already in memory (no database reads)."""
        keys, matrix = exact.vectors()
        nlist = nlist_for(len(keys))
        rng = np.random.default_rng(0)
        sample = matrix[rng.choice(len(keys), size=training_size(nlist, len(keys)), replace=False)]
        index = IvfIndex.train(sample, nlist, self._nprobe)
        index.add(keys, matrix)
        self._index = index
        log.info("%d images: switched to approximate search (IVF%d,SQ8)", len(keys), nlist)
        self.checkpoint()

    def _after_write(self) -> None:
        if isinstance(self._index, ExactIndex) and len(self._index) >= self._exact_below:
            self._switch_to_ivf(self._index)
        elif self._seq - self._snapshot_seq >= self._checkpoint_every:
            self.checkpoint()

    def _catch_up(self) -> None:
        """Apply what other processes committed since we last looked. SQLite bumps
        `data_version` when another connection commits; our own commits do not bump it."""
        version = self._read_data_version()
        if version == self._data_version:
            return
        self._data_version = version
        meta = self._meta()
        if (
            meta.get("generation", "") != self._generation
            or _encoder_from(meta) != self._encoder
            or int(meta.get("changes_pruned_upto", "0")) > self._seq
        ):
            self._load()
        else:
            self._replay()

    def _replay(self) -> None:
        """Apply logged changes after `self._seq`: each changed key is removed, and put back
        with its current vector if the row still exists."""
        with self._read_snapshot():
            changes = self._db.execute(
                "SELECT seq, key FROM changes WHERE seq > ? ORDER BY seq", (self._seq,)
            ).fetchall()
            if not changes:
                return
            keys = list(dict.fromkeys(key for _, key in changes))
            present = self._rows_of(keys, with_vectors=True)
        self._index.remove(np.array(keys, dtype=np.int64))
        if present:
            kept = np.array(list(present), dtype=np.int64)
            self._index.add(kept, self._project(np.stack([row[2] for row in present.values()])))
        self._seq = changes[-1][0]

    # -- internals -------------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    @contextmanager
    def _read_snapshot(self) -> Iterator[None]:
        """Reads inside one transaction see one consistent state of the database."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def _keys_of(self, ids: Sequence[str], missing_ok: bool = False) -> NDArray[np.int64]:
        found: dict[str, int] = {}
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            found.update(self._db.execute(f"SELECT id, key FROM images WHERE id IN ({marks})", chunk))
        if missing_ok:
            return np.array([found[i] for i in ids if i in found], dtype=np.int64)
        return np.array([found[i] for i in ids], dtype=np.int64)

    def _rows_of(self, keys: Sequence[int], with_vectors: bool) -> dict[int, tuple[Any, ...]]:
        """key -> (id, payload[, vector]) for the keys that exist."""
        columns = "key, id, payload, vector" if with_vectors else "key, id, payload"
        rows: dict[int, tuple[Any, ...]] = {}
        for chunk in _chunks(list(keys)):
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(f"SELECT {columns} FROM images WHERE key IN ({marks})", chunk):
                rows[row[0]] = (row[1], json.loads(row[2])) + ((_vector(row[3]),) if with_vectors else ())
        return rows

    def _write_fields(self, keys: NDArray[np.int64], payloads: Sequence[Payload]) -> None:
        for chunk in _chunks(keys.tolist()):
            self._db.execute(f"DELETE FROM fields WHERE key IN ({','.join('?' * len(chunk))})", chunk)
        self._db.executemany(
            "INSERT INTO fields VALUES (?, ?, ?)",
            [
                (name, text, int(key))
                for key, payload in zip(keys.tolist(), payloads, strict=True)
                for name, value in _flat_fields(payload)
                if (text := _field_text(value)) is not None and _FIELD_NAME.match(name)
            ],
        )

    def _matching_keys(self, where: Filter) -> NDArray[np.int64]:
        """Keys whose payload has every field = value of `where` (an index lookup per field).
        The last few answers are kept until the next change: reading 100k matching keys from
        SQLite takes about 30 ms, a repeated filter then costs nothing."""
        conditions = []
        for name, value in where.items():
            text = _field_text(value)
            if not _FIELD_NAME.match(name) or text is None:
                raise InvalidFilterError(
                    f"cannot filter on {name!r} = {value!r}: field names have 1 to 64 printable "
                    f"characters, values are strings, numbers or booleans of at most "
                    f"{_FIELD_MAX_CHARS} characters"
                )
            conditions.append((name, text))
        cache_key = (self._seq, tuple(sorted(conditions)))
        cached = self._filter_cache.get(cache_key)
        if cached is not None:
            return cached
        matched: NDArray[np.int64] | None = None
        for name, text in conditions:
            rows = self._db.execute("SELECT key FROM fields WHERE name = ? AND value = ?", (name, text))
            keys = np.fromiter((key for (key,) in rows), dtype=np.int64)
            matched = keys if matched is None else np.intersect1d(matched, keys)
        result = matched if matched is not None else np.zeros(0, dtype=np.int64)
        if any(seq != self._seq for seq, _ in self._filter_cache):
            self._filter_cache.clear()  # written since: every cached answer may be stale
        if len(self._filter_cache) >= _FILTER_CACHE_SIZE:
            self._filter_cache.pop(next(iter(self._filter_cache)))
        self._filter_cache[cache_key] = result
        return result

    def _log_changes(self, keys: NDArray[np.int64]) -> int:
        self._db.executemany("INSERT INTO changes (key) VALUES (?)", [(int(k),) for k in keys])
        return self._last_seq()

    def _last_seq(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return 0 if row is None else int(row[0])

    def _meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _read_data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _searched_dim(self) -> int:
        if self._projection is not None:
            return int(self._projection[1].shape[1])
        return self._encoder.dim if self._encoder else 0

    def _project(self, vectors: NDArray[np.float32]) -> NDArray[np.float32]:
        if self._projection is None:
            return np.ascontiguousarray(vectors, dtype=np.float32)
        mean, matrix = self._projection
        projected = (vectors - mean) @ matrix
        norms = np.linalg.norm(projected, axis=-1, keepdims=True)
        return (projected / np.maximum(norms, 1e-12)).astype(np.float32)

    def _check_schema_version(self) -> None:
        found = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if found is None:
            # OR IGNORE: two processes creating the same new store at once must both succeed.
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(found[0]) > SCHEMA_VERSION:
            raise StoreVersionError(
                f"the index at {self.directory} has schema version {found[0]}, newer than this "
                f"ImageFinder understands ({SCHEMA_VERSION}); upgrade ImageFinder"
            )
        elif int(found[0]) == 1:
            self._migrate_from_v1()

    def _migrate_from_v1(self) -> None:
        """Version 1 keyed images by their text id only; version 2 adds a stable integer key
        (what the vector index stores), the change log and the filter table. One transaction."""
        log.info("upgrading the index at %s to schema version 2", self.directory)
        with self._transaction():
            self._db.execute("DROP INDEX IF EXISTS images_hash")
            self._db.execute("ALTER TABLE images RENAME TO images_v1")
            for statement in _SCHEMA.split(";"):  # not executescript: it would commit first
                if statement.strip():
                    self._db.execute(statement)
            # The earliest version-1 stores had no hash column: take it from the payload then.
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(images_v1)")}
            hash_of = "hash" if "hash" in columns else "json_extract(payload, '$.hash')"
            self._db.execute(
                "INSERT INTO images (id, hash, vector, payload) "
                f"SELECT id, {hash_of}, vector, payload FROM images_v1 ORDER BY id"
            )
            self._db.execute("DROP TABLE images_v1")
            rows = self._db.execute("SELECT key, payload FROM images").fetchall()
            self._write_fields(
                np.array([key for key, _ in rows], dtype=np.int64), [json.loads(p) for _, p in rows]
            )
            self._set_meta("schema_version", str(SCHEMA_VERSION))


class _Transaction:
    """`with` block that runs BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _encoder_from(meta: Mapping[str, str]) -> EncoderInfo | None:
    if "encoder_name" not in meta:
        return None
    return EncoderInfo(
        name=meta["encoder_name"],
        version=meta["encoder_version"],
        dim=int(meta["encoder_dim"]),
        preprocessing=meta.get("encoder_preprocessing", ""),
    )


def _flat_fields(payload: Payload) -> Iterator[tuple[str, Any]]:
    """Top-level fields, and one level of nested ones as "parent.child" (a CSV's extra columns
    are kept under "meta": filter them as meta.<column>)."""
    for name, value in payload.items():
        if isinstance(value, Mapping):
            for child, inner in value.items():
                yield f"{name}.{child}", inner
        else:
            yield name, value


def _field_text(value: object) -> str | None:
    """Payload values compare as text: strings as they are, numbers and booleans as JSON."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        return None
    return text if len(text) <= _FIELD_MAX_CHARS else None


def _chunks(items: Sequence[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield [int(i) if isinstance(i, np.integer) else i for i in items[start : start + _CHUNK]]


def _vector(blob: bytes) -> NDArray[np.float32]:
    return np.frombuffer(blob, dtype=np.float32)


def _array_bytes(array: NDArray[np.float32]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _array_from(data: bytes) -> NDArray[np.float32]:
    return np.load(io.BytesIO(data), allow_pickle=False)
