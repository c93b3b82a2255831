"""The default store: a folder holding one SQLite catalog (`stores.catalog`: the truth about the
collection) and the snapshots of an in-memory vector index over it (`stores.live_index`).

This class is the facade over the two: it applies the store contract, holds the one lock, keeps
the search space the index is built through, and notices what other processes committed (the CLI
indexing while a server runs) before each operation. Approximate candidates are re-scored from
the exact vectors, so returned scores are exact cosines in the search space.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imagefinder.encoders.base import EncoderInfo
from imagefinder.errors import SearchSpaceChangedError
from imagefinder.search_space import RECORD_KEY, SearchSpace, projection_from, record_version
from imagefinder.stores.base import (
    Filter,
    Hit,
    Payload,
    checked_upsert,
    encoder_from_record,
    encoder_record,
    ranked,
    refuse_other_encoder,
    same_encoder,
)
from imagefinder.stores.catalog import Catalog, VectorDtype
from imagefinder.stores.filters import conditions
from imagefinder.stores.live_index import CHECKPOINT_EVERY, DEFAULT_NPROBE, EXACT_BELOW, LiveIndex

log = logging.getLogger(__name__)

DB_NAME = "images.sqlite"
# Candidates re-scored exactly per result asked for (at least k + RERANK_EXTRA).
RERANK_FACTOR, RERANK_EXTRA = 2, 16
# How far below the asked-for score an approximate (8-bit) score may fall and still be re-scored:
# well above the codes' error on unit vectors.
APPROXIMATION_MARGIN = 0.05
_USER = "user."  # prefix of the facts others record (set_meta), apart from the store's own


class EmbeddedStore:
    def __init__(
        self,
        directory: Path,
        exact_below: int = EXACT_BELOW,
        nprobe: int = DEFAULT_NPROBE,
        checkpoint_every: int = CHECKPOINT_EVERY,
        vector_dtype: VectorDtype = "float16",
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.location = str(directory)
        self._lock = threading.RLock()
        self._catalog = Catalog(directory / DB_NAME, vector_dtype)
        self._index = LiveIndex(self._catalog, directory, exact_below, nprobe, checkpoint_every)
        self._encoder: EncoderInfo | None = None
        self._space = SearchSpace()
        self._space_record = ""
        self._data_version = 0
        self._load()

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._catalog.path

    # -- encoder and search space -------------------------------------------------------------

    @property
    def encoder_info(self) -> EncoderInfo | None:
        return self._encoder

    def bind_encoder(self, info: EncoderInfo) -> None:
        with self._lock:
            self._catch_up()
            current = self._encoder
            if same_encoder(current, info):
                return
            if current is not None and len(self._index) > 0:
                refuse_other_encoder(current, info, str(self.directory), "another store path")
            space = SearchSpace().fitted(None, 0, "")  # a projection belongs to the old encoder
            with self._catalog.transaction():
                for key, value in encoder_record(info).items():
                    self._catalog.set_meta(key, value)
                self._write_space(space)
            self._encoder = info
            self._space = space
            self._catalog.dim = info.dim
            self._index.reset(space, info.dim)

    @property
    def search_space(self) -> SearchSpace:
        with self._lock:
            self._catch_up()
            return self._space

    def set_search_space(self, space: SearchSpace, replacing: str | None = None) -> None:
        """Search through `space` from now on. A new projection re-projects every stored vector
        into a rebuilt index; a new threshold alone changes nothing else."""
        with self._lock:
            self._catch_up()
            with self._catalog.transaction():  # holds the write lock: the check and the write are one
                stored = _stored_version(self._catalog.meta())
                if replacing is not None and stored != replacing:
                    raise SearchSpaceChangedError(
                        f"the search space of {self.path} changed meanwhile "
                        f"({replacing or 'none'} -> {stored or 'none'})"
                    )
                self._write_space(space)
            rebuild = space.projection_id != self._space.projection_id
            self._space = space
            if rebuild:
                self._index.load(space, self._encoder.dim if self._encoder else 0)
                self._checkpoint_if_due()

    # -- writes ----------------------------------------------------------------------------

    def upsert(self, ids: Sequence[str], vectors: NDArray[np.float32], payloads: Sequence[Payload]) -> None:
        vectors = checked_upsert(self._encoder, ids, vectors, payloads)
        if not ids:
            return
        with self._lock:
            with self._catalog.transaction():
                self._catch_up()
                keys, seq = self._catalog.write(ids, vectors, payloads)
            # Memory changes only after the commit: a failed write leaves search unchanged.
            self._index.written(keys, self._catalog.as_stored(vectors), seq)
            self._checkpoint_if_due()

    def delete(self, ids: Sequence[str]) -> int:
        with self._lock:
            with self._catalog.transaction():
                self._catch_up()
                keys, seq = self._catalog.remove(ids)
            if len(keys):
                self._index.written(keys, None, seq)
                self._checkpoint_if_due()
            return len(keys)

    def optimise(self) -> None:
        """After a bulk change: exact or approximate search for the collection's size, retrained
        when it outgrew its lists (`LiveIndex.optimise`), then a snapshot, so the next open is
        fast."""
        with self._lock:
            self._catch_up()
            self._index.optimise()
            self.checkpoint()

    def checkpoint(self) -> None:
        """Save the index as of every process's last commit, and drop the change log it makes
        unnecessary. The catch-up runs inside the checkpoint's own transaction: no other process
        can commit between it and the pruning, so the snapshot misses nothing that is pruned."""
        with self._lock:
            with self._catalog.transaction():
                self._catch_up()
                kept = self._index.save()
            self._index.drop_other_snapshots(kept)

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
        checked = conditions(where) if where else None
        with self._lock:
            self._catch_up()
            if k < 1 or len(self._index) == 0:
                return []
            allowed = self._catalog.matching_keys(checked, self._index.seq) if checked else None
            space = self._space
            projected = space.project(queries)
            approximate = self._index.approximate
            wanted = max(RERANK_FACTOR * k, k + RERANK_EXTRA) if approximate else k
            candidates = self._index.search(projected, offsets, wanted, allowed)
            rows = self._catalog.rows_of([key for key, _ in candidates], with_vectors=approximate)
        if not approximate:
            return ranked(
                ((rows[key][0], score, rows[key][1]) for key, score in candidates if key in rows), k
            )
        # Exact scores from the stored vectors: recall and scores do not suffer from the 8-bit
        # codes the approximate index searched with.
        found = list(rows.values())
        if not found:
            return []
        exact = space.project(np.stack([row[2] for row in found])) @ projected.T - offsets
        return ranked(
            ((row[0], float(score), row[1]) for row, score in zip(found, exact.max(axis=1), strict=True)), k
        )

    def similar(
        self, vectors: NDArray[np.float32], k: int, min_score: float, where: Filter | None = None
    ) -> list[list[Hit]]:
        """For each row of `vectors` (many queries of one view each, as a duplicates scan asks),
        its best matches up to k scoring at least `min_score`, best first. Only candidates the
        approximate index puts near `min_score` are re-scored, so the catalog reads stay few."""
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        checked = conditions(where) if where else None
        with self._lock:
            self._catch_up()
            if k < 1 or len(self._index) == 0:
                return [[] for _ in range(len(queries))]
            allowed = self._catalog.matching_keys(checked, self._index.seq) if checked else None
            space = self._space
            projected = space.project(queries)
            approximate = self._index.approximate
            floor = min_score - APPROXIMATION_MARGIN if approximate else min_score
            candidates = [
                [(key, score) for key, score in found if score >= floor]
                for found in self._index.search_each(projected, k, allowed)
            ]
            wanted = sorted({key for found in candidates for key, _ in found})
            rows = self._catalog.rows_of(wanted, with_vectors=approximate)
        exact: dict[int, NDArray[np.float32]] = {}
        if approximate and rows:
            present = list(rows)
            projected_rows = space.project(np.stack([rows[key][2] for key in present]))
            exact = dict(zip(present, projected_rows, strict=True))
        results = []
        for query, found in zip(projected, candidates, strict=True):
            scored = (
                (rows[key][0], float(exact[key] @ query) if approximate else score, rows[key][1])
                for key, score in found
                if key in rows
            )
            results.append(ranked((hit for hit in scored if hit[1] >= min_score), k))
        return results

    def get(self, image_id: str) -> Payload | None:
        with self._lock:
            row = self._catalog.get(image_id)
        return None if row is None else row[0]

    def get_vector(self, image_id: str) -> NDArray[np.float32] | None:
        with self._lock:
            row = self._catalog.get(image_id)
        return None if row is None else row[1]

    def find_by_hash(self, content_hash: str) -> str | None:
        """The id of an image with these exact bytes, if the store holds one."""
        with self._lock:
            return self._catalog.find_by_hash(content_hash)

    def payload_items(self) -> Iterator[tuple[str, Payload]]:
        """Every (id, payload), in pages, so a large store is not read into memory at once."""
        last = ""
        while True:
            with self._lock:
                rows = self._catalog.payloads_after(last, 1000)
            if not rows:
                return
            yield from rows
            last = rows[-1][0]

    def items(self) -> Iterator[list[tuple[str, NDArray[np.float32], Payload]]]:
        """Every (id, vector as the encoder made it, payload), in batches: for `migrate`."""
        last = -1
        while True:
            with self._lock:
                rows = self._catalog.items_after(last, 1000)
            if not rows:
                return
            yield [(image_id, vector, payload) for _, image_id, vector, payload in rows]
            last = rows[-1][0]

    def page(self, offset: int, limit: int) -> list[tuple[str, Payload]]:
        """(id, payload) in id order, `limit` of them from `offset`: for browsing the collection."""
        with self._lock:
            return self._catalog.page(offset, limit)

    def vectors(self, limit: int | None = None) -> NDArray[np.float32]:
        """Stored vectors as the encoder made them: all of them, or a random sample of at most
        `limit` (large collections)."""
        with self._lock, self._catalog.snapshot():
            if limit is not None and self._catalog.count() > limit:
                parts = [self._catalog.sample(limit)]
            else:
                parts = [vectors for _, vectors in self._catalog.vector_batches()]
        if not parts:
            return np.zeros((0, self._encoder.dim if self._encoder else 0), dtype=np.float32)
        return np.concatenate(parts)

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            return self._catalog.get_meta(_USER + key)

    def set_meta(self, key: str, value: str) -> None:
        """Small facts about the index (provenance, the model it serves with), kept with it."""
        with self._lock, self._catalog.transaction():
            self._catalog.set_meta(_USER + key, value)

    def ids(self) -> list[str]:
        with self._lock:
            return self._catalog.ids()

    def count(self) -> int:
        with self._lock:
            self._catch_up()
            return len(self._index)

    def index_stats(self) -> dict[str, Any]:
        """What searches run on: for `imagefinder info` and /health."""
        with self._lock:
            self._catch_up()
            return self._index.stats()

    def close(self) -> None:
        with self._lock:
            if self._index.unsaved:
                self.checkpoint()
            self._catalog.close()

    # -- keeping memory in line with the catalog ---------------------------------------------

    def _load(self) -> None:
        self._data_version = self._catalog.data_version()
        meta = self._catalog.meta()
        self._encoder = encoder_from_record(meta)
        self._catalog.dim = self._encoder.dim if self._encoder else 0
        self._space_record = meta.get(RECORD_KEY, "")
        self._space = _space_from(meta, self._catalog.arrays())
        self._index.load(self._space, self._encoder.dim if self._encoder else 0)
        self._checkpoint_if_due()

    def _catch_up(self) -> None:
        """Apply what other processes committed since we last looked."""
        version = self._catalog.data_version()
        if version == self._data_version:
            return
        self._data_version = version
        meta = self._catalog.meta()
        if (
            encoder_from_record(meta) != self._encoder
            or int(meta.get("changes_pruned_upto", "0")) > self._index.seq
        ):
            self._load()
            return
        if meta.get(RECORD_KEY, "") != self._space_record:
            space = _space_from(meta, self._catalog.arrays())
            self._space_record = meta.get(RECORD_KEY, "")
            if space.projection_id != self._space.projection_id:
                self._space = space
                self._index.load(space, self._encoder.dim if self._encoder else 0)
                self._checkpoint_if_due()
                return
            self._space = space
        self._index.replay()

    def _checkpoint_if_due(self) -> None:
        # Inside a transaction (a catch-up during a write or a checkpoint), the commit that
        # follows is saved by the next checkpoint instead.
        if self._index.checkpoint_due and not self._catalog.in_transaction:
            self.checkpoint()

    def _write_space(self, space: SearchSpace) -> None:
        record = space.record()
        self._catalog.set_meta(RECORD_KEY, record)
        self._catalog.set_arrays(space.arrays())
        self._space_record = record


def _stored_version(meta: dict[str, str]) -> str:
    """The version of the stored space, as `_space_from` reads it."""
    return record_version(meta[RECORD_KEY]) if RECORD_KEY in meta else meta.get("generation", "")


def _space_from(meta: dict[str, str], arrays: dict[str, bytes]) -> SearchSpace:
    """The stored search space; for an index written before spaces had a record, the projection,
    threshold and fit it kept under separate names."""
    if RECORD_KEY in meta:
        return SearchSpace.from_record(meta[RECORD_KEY], projection_from(arrays))
    projection = projection_from(arrays)
    legacy = _stored_version(meta)
    threshold = meta.get(_USER + "copy_threshold")
    return SearchSpace(
        projection,
        float(threshold) if threshold else SearchSpace().copy_threshold,
        int(meta.get(_USER + "whitening_fitted_on", "0")),
        meta.get(_USER + "whitening_fitted_with", ""),
        legacy,
        legacy,
    )
