"""The embedded store's catalog: one SQLite file that is the truth about the collection.

It holds a row per image (a stable integer key, the id, the content hash, the encoder's vector
and the payload as JSON), a `fields` table that makes payload filters an index lookup, the
`meta` and `arrays` tables for what the index records about itself, and a `changes` log: every
write appends the keys it changed, in the same transaction. The log is the change feed that the
vector index (`stores.live_index`) replays, in this process and in others.

Connection settings: WAL (readers never block the writer), synchronous=FULL (a committed batch
survives power loss, not only a killed process; one fsync per batch), and a busy timeout, since
another process (the CLI indexing while a server runs) may hold the write lock briefly.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from imagefinder.stores.base import Payload, check_schema_version
from imagefinder.stores.filters import Conditions, filterable_fields

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
_CHUNK = 500  # keys per `IN (...)` query: well under SQLite's limit on bound variables
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

Keys = NDArray[np.int64]
VectorDtype = Literal["float16", "float32"]
# key -> (id, payload) or (id, payload, vector)
Rows = dict[int, tuple[Any, ...]]


class Catalog:
    def __init__(self, path: Path, vector_dtype: VectorDtype = "float16") -> None:
        self.path = path
        # Vectors are kept for exact re-scoring, refits and migration. float16 halves the disk
        # (5 KB -> 2.5 KB per image at 1280-d) and moves scores by under 1e-3 (docs/scaling.md, "Disk");
        # rows written as float32 by earlier versions are read as they are.
        self._dtype = np.dtype(vector_dtype)
        self.dim = 0  # the encoder's dimension, set by the store: how a blob's length is read
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._check_schema_version()
        self._db.executescript(_SCHEMA)
        # (change seq, conditions) -> matching keys; an answer is valid while seq is unchanged.
        self._filter_cache: dict[tuple[int, Conditions], Keys] = {}

    def close(self) -> None:
        self._db.close()

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside one transaction see one consistent state of the database."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def data_version(self) -> int:
        """Changes when another connection commits (our own commits do not change it)."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    # -- writes (inside `transaction`) -------------------------------------------------------

    def write(
        self, ids: Sequence[str], vectors: NDArray[np.float32], payloads: Sequence[Payload]
    ) -> tuple[Keys, int]:
        """Insert or replace rows; their keys and the change seq that logs them."""
        self._db.executemany(
            _UPSERT,
            [
                (
                    image_id,
                    payload.get("hash"),
                    vector.astype(self._dtype).tobytes(),
                    json.dumps(dict(payload)),
                )
                for image_id, vector, payload in zip(ids, vectors, payloads, strict=True)
            ],
        )
        keys = self.keys_of(ids)
        self._write_fields(keys, payloads)
        return keys, self._log_changes(keys)

    def as_stored(self, vectors: NDArray[np.float32]) -> NDArray[np.float32]:
        """`vectors` as they read back once written: what memory must hold to agree with a reopen
        and with other processes."""
        return vectors.astype(self._dtype).astype(np.float32)

    def remove(self, ids: Sequence[str]) -> tuple[Keys, int]:
        """Delete the rows of `ids` that exist; their keys and the change seq that logs them."""
        keys = self.keys_of(list(dict.fromkeys(ids)), missing_ok=True)
        if len(keys) == 0:
            return keys, self.last_seq()
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            self._db.execute(f"DELETE FROM images WHERE key IN ({marks})", chunk)
            self._db.execute(f"DELETE FROM fields WHERE key IN ({marks})", chunk)
        return keys, self._log_changes(keys)

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def delete_meta(self, pattern: str) -> None:
        """Delete the meta keys matching a LIKE `pattern`."""
        self._db.execute("DELETE FROM meta WHERE key LIKE ?", (pattern,))

    def set_arrays(self, arrays: Mapping[str, bytes]) -> None:
        """Replace every stored array by `arrays`."""
        self._db.execute("DELETE FROM arrays")
        self._db.executemany("INSERT INTO arrays VALUES (?, ?)", list(arrays.items()))

    def prune_changes(self, upto: int) -> None:
        self._db.execute("DELETE FROM changes WHERE seq <= ?", (upto,))
        self.set_meta("changes_pruned_upto", str(upto))

    # -- reads -----------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def arrays(self) -> dict[str, bytes]:
        return dict(self._db.execute("SELECT key, value FROM arrays").fetchall())

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def last_seq(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return 0 if row is None else int(row[0])

    def changes_since(self, seq: int) -> tuple[list[int], int]:
        """The keys changed after `seq` (each once, in order) and the last change's seq."""
        changes = self._db.execute(
            "SELECT seq, key FROM changes WHERE seq > ? ORDER BY seq", (seq,)
        ).fetchall()
        if not changes:
            return [], seq
        return list(dict.fromkeys(key for _, key in changes)), int(changes[-1][0])

    def keys_of(self, ids: Sequence[str], missing_ok: bool = False) -> Keys:
        found: dict[str, int] = {}
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            found.update(self._db.execute(f"SELECT id, key FROM images WHERE id IN ({marks})", chunk))
        if missing_ok:
            return np.array([found[i] for i in ids if i in found], dtype=np.int64)
        return np.array([found[i] for i in ids], dtype=np.int64)

    def rows_of(self, keys: Sequence[int] | Keys, with_vectors: bool) -> Rows:
        """key -> (id, payload[, vector]) for the keys that exist."""
        columns = "key, id, payload, vector" if with_vectors else "key, id, payload"
        rows: Rows = {}
        for chunk in _chunks(list(keys)):
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(f"SELECT {columns} FROM images WHERE key IN ({marks})", chunk):
                rows[row[0]] = (row[1], json.loads(row[2])) + (
                    (self._vector(row[3]),) if with_vectors else ()
                )
        return rows

    def vector_batches(self, size: int = 20_000) -> Iterator[tuple[Keys, NDArray[np.float32]]]:
        """Every (keys, vectors), in key order."""
        last = -1
        while rows := self._db.execute(
            "SELECT key, vector FROM images WHERE key > ? ORDER BY key LIMIT ?", (last, size)
        ).fetchall():
            keys = np.array([key for key, _ in rows], dtype=np.int64)
            yield keys, np.stack([self._vector(blob) for _, blob in rows])
            last = int(keys[-1])

    def sample(self, limit: int) -> NDArray[np.float32]:
        """The vectors of at most `limit` rows chosen at random."""
        keys = [
            key for (key,) in self._db.execute("SELECT key FROM images ORDER BY random() LIMIT ?", (limit,))
        ]
        rows = self.rows_of(keys, with_vectors=True)
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([row[2] for row in rows.values()])

    def get(self, image_id: str) -> tuple[Payload, NDArray[np.float32]] | None:
        row = self._db.execute("SELECT payload, vector FROM images WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else (json.loads(row[0]), self._vector(row[1]).copy())

    def find_by_hash(self, content_hash: str) -> str | None:
        row = self._db.execute("SELECT id FROM images WHERE hash = ? LIMIT 1", (content_hash,)).fetchone()
        return None if row is None else str(row[0])

    def payloads_after(self, last_id: str, limit: int) -> list[tuple[str, Payload]]:
        rows = self._db.execute(
            "SELECT id, payload FROM images WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit)
        ).fetchall()
        return [(image_id, json.loads(payload)) for image_id, payload in rows]

    def items_after(self, last_key: int, limit: int) -> list[tuple[int, str, NDArray[np.float32], Payload]]:
        rows = self._db.execute(
            "SELECT key, id, vector, payload FROM images WHERE key > ? ORDER BY key LIMIT ?",
            (last_key, limit),
        ).fetchall()
        return [
            (key, image_id, self._vector(blob).copy(), json.loads(payload))
            for key, image_id, blob, payload in rows
        ]

    def page(self, offset: int, limit: int) -> list[tuple[str, Payload]]:
        rows = self._db.execute(
            "SELECT id, payload FROM images ORDER BY id LIMIT ? OFFSET ?", (limit, offset)
        ).fetchall()
        return [(image_id, json.loads(payload)) for image_id, payload in rows]

    def ids(self) -> list[str]:
        return [image_id for (image_id,) in self._db.execute("SELECT id FROM images ORDER BY id")]

    def matching_keys(self, conditions: Conditions, seq: int) -> Keys:
        """Keys whose payload has every field = value (an index lookup per field). The last few
        answers are kept while the change log stays at `seq`: reading 100k matching keys from
        SQLite takes tens of milliseconds, a repeated filter then costs nothing."""
        cached = self._filter_cache.get((seq, conditions))
        if cached is not None:
            return cached
        matched: Keys | None = None
        for name, text in conditions:
            rows = self._db.execute("SELECT key FROM fields WHERE name = ? AND value = ?", (name, text))
            keys = np.fromiter((key for (key,) in rows), dtype=np.int64)
            matched = keys if matched is None else np.intersect1d(matched, keys)
        result = matched if matched is not None else np.zeros(0, dtype=np.int64)
        if any(cached_seq != seq for cached_seq, _ in self._filter_cache):
            self._filter_cache.clear()  # written since: every cached answer may be stale
        if len(self._filter_cache) >= _FILTER_CACHE_SIZE:
            self._filter_cache.pop(next(iter(self._filter_cache)))
        self._filter_cache[(seq, conditions)] = result
        return result

    # -- internals -------------------------------------------------------------------------

    def _vector(self, blob: bytes) -> NDArray[np.float32]:
        if len(blob) == 2 * self.dim:
            return np.frombuffer(blob, dtype=np.float16).astype(np.float32)
        return np.frombuffer(blob, dtype=np.float32)

    def _write_fields(self, keys: Keys, payloads: Sequence[Payload]) -> None:
        for chunk in _chunks(keys):
            self._db.execute(f"DELETE FROM fields WHERE key IN ({','.join('?' * len(chunk))})", chunk)
        self._db.executemany(
            "INSERT INTO fields VALUES (?, ?, ?)",
            [
                (name, text, int(key))
                for key, payload in zip(keys.tolist(), payloads, strict=True)
                for name, text in filterable_fields(payload)
            ],
        )

    def _log_changes(self, keys: Keys) -> int:
        self._db.executemany("INSERT INTO changes (key) VALUES (?)", [(int(k),) for k in keys])
        return self.last_seq()

    def _check_schema_version(self) -> None:
        found = self.get_meta("schema_version")
        if found is None:
            # OR IGNORE: two processes creating the same new store at once must both succeed.
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            return
        check_schema_version(found, SCHEMA_VERSION, str(self.path.parent))
        if int(found) == 1:
            self._migrate_from_v1()

    def _migrate_from_v1(self) -> None:
        """Version 1 keyed images by their text id only; version 2 adds a stable integer key
        (what the vector index stores), the change log and the filter table. One transaction."""
        log.info("upgrading the index at %s to schema version 2", self.path.parent)
        with self.transaction():
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
            self.set_meta("schema_version", str(SCHEMA_VERSION))


def _chunks(items: Sequence[Any] | Keys) -> Iterator[list[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield [int(i) if isinstance(i, np.integer) else i for i in items[start : start + _CHUNK]]
