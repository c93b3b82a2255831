"""The embedded store's vector index: the in-memory search structure over the catalog's vectors
as searched (through the search space's projection), kept in line with the catalog.

- Policy: small collections are searched exactly (`ExactIndex`); from `exact_below` images on,
  the index switches by itself to an approximate IVF-SQ8 index (`IvfIndex`, about `dim` bytes per
  image) whose candidates the store re-scores from the exact vectors. Below half the threshold it
  goes back to exact search. `optimise` retrains when the collection outgrows its lists.
- Snapshots: the approximate index is saved (write, fsync, rename) with the last change it
  contains when the store asks (`checkpoint_due`, then `save` inside the store's transaction,
  after the store caught up with every other process); opening loads the snapshot and replays the
  catalog's later changes. A process killed at any moment leaves a snapshot that is whole or
  absent, and the catalog's rows are the truth, so nothing acknowledged is lost.
- Replay: other processes' writes arrive through the same change log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imagefinder.search_space import SearchSpace
from imagefinder.stores.ann import (
    Candidates,
    ExactIndex,
    IvfIndex,
    Keys,
    VectorIndex,
    nlist_for,
    probes_for,
    training_size,
)
from imagefinder.stores.catalog import Catalog

log = logging.getLogger(__name__)

# Exact search over 20k vectors of 256-d takes about 2 ms; from there on IVF-SQ8 is faster.
EXACT_BELOW = 20_000
# Lists scanned per query: recall@10 0.98 on the 1M benchmark (bench/results/index.json).
DEFAULT_NPROBE = 32
# Save the approximate index after this many changes, so a reopen replays at most this many.
CHECKPOINT_EVERY = 50_000


class LiveIndex:
    def __init__(
        self,
        catalog: Catalog,
        directory: Path,
        exact_below: int = EXACT_BELOW,
        nprobe: int = DEFAULT_NPROBE,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        self._catalog = catalog
        self._directory = directory
        self._exact_below = exact_below
        self._nprobe = nprobe
        self._checkpoint_every = checkpoint_every
        self._space = SearchSpace()
        self._dim = 0
        self._index: VectorIndex = ExactIndex(0)
        self.seq = 0  # the last change the index contains
        self._snapshot_seq = 0  # the last change in the saved snapshot
        self._rebuilt = False  # built or switched since the last save: worth saving at once

    def __len__(self) -> int:
        return len(self._index)

    @property
    def approximate(self) -> bool:
        return isinstance(self._index, IvfIndex)

    # -- whole rebuilds ----------------------------------------------------------------------

    def load(self, space: SearchSpace, encoder_dim: int) -> None:
        """From scratch: the saved snapshot plus later changes when it fits, else a build."""
        self._space, self._dim = space, space.dim(encoder_dim)
        meta = self._catalog.meta()
        snapshot = meta.get("ann_file")
        # "ann_generation": what stores written before search spaces called the same id.
        fits = snapshot and meta.get("ann_space", meta.get("ann_generation")) == space.projection_id
        if fits and int(meta["ann_seq"]) >= int(meta.get("changes_pruned_upto", "0")):
            try:
                self._index = IvfIndex.load(
                    self._directory / snapshot, self._nprobe, int(meta["ann_trained_on"])
                )
            except (OSError, RuntimeError) as exc:  # missing or damaged: the rows are the truth
                log.warning("index snapshot %s unusable (%s); rebuilding from the database", snapshot, exc)
            else:
                self.seq = self._snapshot_seq = int(meta["ann_seq"])
                self._rebuilt = False
                self.replay()
                return
        self.build()

    def build(self) -> None:
        """The index from every stored vector: exact or approximate by size."""
        catalog = self._catalog
        with catalog.snapshot():
            seq, n = catalog.last_seq(), catalog.count()
            index: VectorIndex
            if n >= self._exact_below:
                nlist = nlist_for(n)
                sample = catalog.sample(training_size(nlist, n))
                index = IvfIndex.train(self._space.project(sample), nlist, self._nprobe)
            else:
                index = ExactIndex(self._dim)
            for keys, vectors in catalog.vector_batches():
                index.add(keys, self._space.project(vectors))
        self._index, self.seq = index, seq
        self._snapshot_seq = 0
        self._rebuilt = True

    def reset(self, space: SearchSpace, encoder_dim: int) -> None:
        """An empty index for a store bound to another encoder or space."""
        self._space, self._dim = space, space.dim(encoder_dim)
        self._index = ExactIndex(self._dim)

    # -- keeping up with the catalog -----------------------------------------------------------

    def written(self, keys: Keys, vectors: NDArray[np.float32] | None, seq: int) -> None:
        """Rows of `keys` were written (with these encoder vectors) or deleted (None), logged as
        change `seq`, and committed."""
        self._index.remove(keys)
        if vectors is not None:
            self._index.add(keys, self._space.project(vectors))
        self.seq = seq
        if isinstance(self._index, ExactIndex) and len(self._index) >= self._exact_below:
            self._switch_to_ivf(self._index)

    def replay(self) -> None:
        """Apply logged changes after `seq`: each changed key is removed, and put back with its
        current vector if the row still exists."""
        with self._catalog.snapshot():
            keys, last = self._catalog.changes_since(self.seq)
            if not keys:
                return
            present = self._catalog.rows_of(keys, with_vectors=True)
        self._index.remove(np.array(keys, dtype=np.int64))
        if present:
            kept = np.array(list(present), dtype=np.int64)
            self._index.add(kept, self._space.project(np.stack([row[2] for row in present.values()])))
        self.seq = last

    def optimise(self) -> None:
        """Pick exact or approximate search for the collection's size, retrain the approximate
        index when the rule of `nlist_for` asks for more lists (at 33k, 131k, 524k, 2.1M images:
        too few lists cost recall at a given nprobe, measured in bench/index.py) or for under half
        as many. The store saves a snapshot after it, so the next open is fast."""
        n, index = len(self._index), self._index
        if isinstance(index, ExactIndex) and n >= self._exact_below:
            self._switch_to_ivf(index)
        elif isinstance(index, IvfIndex) and (
            n < self._exact_below // 2 or not index.nlist // 2 <= nlist_for(n) <= index.nlist
        ):
            self.build()

    @property
    def checkpoint_due(self) -> bool:
        """Whether the store should save a snapshot now: after a build or the switch to the
        approximate index, or once CHECKPOINT_EVERY changes went unsaved."""
        return self.approximate and (self._rebuilt or self.seq - self._snapshot_seq >= self._checkpoint_every)

    def save(self) -> str:
        """Inside the store's transaction, once it has caught up with every other process: save
        the approximate index (if any) and drop the change log it makes unnecessary. Returns the
        snapshot's file name ("" for none); `drop_other_snapshots` removes the others once the
        transaction committed."""
        catalog = self._catalog
        name = ""
        if isinstance(self._index, IvfIndex):
            name = f"ann-{self._space.projection_id[:12]}-{self.seq}.faiss"
            self._index.save(self._directory / name)
            for key, value in (
                ("ann_file", name),
                ("ann_seq", str(self.seq)),
                ("ann_space", self._space.projection_id),
                ("ann_trained_on", str(self._index.trained_on)),
            ):
                catalog.set_meta(key, value)
        else:
            catalog.delete_meta("ann_%")
        catalog.prune_changes(self.seq)
        self._snapshot_seq = self.seq
        self._rebuilt = False
        return name

    def drop_other_snapshots(self, kept: str) -> None:
        for old in self._directory.glob("ann-*.faiss*"):
            if old.name != kept:
                old.unlink(missing_ok=True)

    @property
    def unsaved(self) -> bool:
        return self.approximate and self.seq > self._snapshot_seq

    # -- search ------------------------------------------------------------------------------

    def search(
        self,
        projected: NDArray[np.float32],
        penalties: NDArray[np.float32],
        wanted: int,
        allowed: Keys | None,
    ) -> Candidates:
        return self._index.search(projected, penalties, wanted, allowed)

    def search_each(self, projected: NDArray[np.float32], k: int, allowed: Keys | None) -> list[Candidates]:
        return self._index.search_each(projected, k, allowed)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"kind": self._index.kind, "vectors": len(self._index)}
        if isinstance(self._index, IvfIndex):
            stats.update(
                nlist=self._index.nlist,
                nprobe=probes_for(self._index.nlist, len(self._index), self._index.nprobe),
            )
        stats["dim"] = self._dim
        return stats

    def _switch_to_ivf(self, exact: ExactIndex) -> None:
        """Exact -> approximate, from the vectors already in memory (no database reads)."""
        keys, matrix = exact.vectors()
        nlist = nlist_for(len(keys))
        rng = np.random.default_rng(0)
        sample = matrix[rng.choice(len(keys), size=training_size(nlist, len(keys)), replace=False)]
        index = IvfIndex.train(sample, nlist, self._nprobe)
        index.add(keys, matrix)
        self._index = index
        self._rebuilt = True
        log.info("%d images: switched to approximate search (IVF%d,SQ8)", len(keys), nlist)
