"""The in-memory search structures behind the embedded store, keyed by the store's integer keys.

`ExactIndex` scans every vector (one matrix product): exact, and fast enough up to a few tens of
thousands of images. `IvfIndex` is FAISS's inverted file with 8-bit scalar quantisation
(IVF-SQ8): each vector is kept as one byte per dimension in the list of its nearest centroid, and
a query scans only the `nprobe` lists nearest to it. Its scores are approximate, so the store
re-scores its candidates from the exact vectors on disk. Measured in `bench/index.py`.

FAISS is imported only here, and only when an approximate index is built or loaded.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

Keys = NDArray[np.int64]
Candidates = list[tuple[int, float]]


class VectorIndex(Protocol):
    kind: str

    def __len__(self) -> int: ...

    def add(self, keys: Keys, vectors: NDArray[np.float32]) -> None:
        """Add vectors under keys the index does not hold (`remove` them first to update)."""
        ...

    def remove(self, keys: Keys) -> None:
        """Forget these keys; keys the index does not hold are ignored."""
        ...

    def search(
        self, queries: NDArray[np.float32], penalties: NDArray[np.float32], k: int, allowed: Keys | None
    ) -> Candidates:
        """(key, score) of at least the k best keys (within `allowed`, when given) for a query of
        one or more views (views, dim): a key scores its best view less that view's penalty."""
        ...

    def search_each(self, queries: NDArray[np.float32], k: int, allowed: Keys | None) -> list[Candidates]:
        """The k best (key, score) of each row of `queries`, each row a query of its own."""
        ...


class ExactIndex:
    kind = "exact"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._matrix = np.zeros((0, dim), dtype=np.float32)
        self._keys = np.zeros(0, dtype=np.int64)
        self._rows: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def vectors(self) -> tuple[Keys, NDArray[np.float32]]:
        n = len(self._rows)
        return self._keys[:n], self._matrix[:n]

    def add(self, keys: Keys, vectors: NDArray[np.float32]) -> None:
        n = len(self._rows)
        needed = n + len(keys)
        if needed > len(self._matrix):  # grow by doubling: amortised O(1) appends
            capacity = max(64, 2 * needed)
            matrix = np.zeros((capacity, self.dim), dtype=np.float32)
            matrix[:n] = self._matrix[:n]
            ids = np.zeros(capacity, dtype=np.int64)
            ids[:n] = self._keys[:n]
            self._matrix, self._keys = matrix, ids
        self._matrix[n:needed] = vectors
        self._keys[n:needed] = keys
        for offset, key in enumerate(keys.tolist()):
            self._rows[key] = n + offset

    def remove(self, keys: Keys) -> None:
        for key in keys.tolist():
            row = self._rows.pop(key, None)
            if row is None:
                continue
            # Move the last row into the hole so the matrix stays dense.
            last = len(self._rows)
            if row != last:
                moved = int(self._keys[last])
                self._matrix[row] = self._matrix[last]
                self._keys[row] = moved
                self._rows[moved] = row

    def search(
        self, queries: NDArray[np.float32], penalties: NDArray[np.float32], k: int, allowed: Keys | None
    ) -> Candidates:
        matrix, keys = self._searched(allowed)
        if len(keys) == 0 or k < 1:
            return []
        scores = (matrix @ queries.T - penalties).max(axis=1)
        if k < len(keys):
            # Every row scoring at least the k-th best, so ties at the cut are all returned.
            kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
            top = np.flatnonzero(scores >= kth)
        else:
            top = np.arange(len(keys))
        return list(zip(keys[top].tolist(), scores[top].tolist(), strict=True))

    def search_each(self, queries: NDArray[np.float32], k: int, allowed: Keys | None) -> list[Candidates]:
        matrix, keys = self._searched(allowed)
        if len(keys) == 0 or k < 1:
            return [[] for _ in range(len(queries))]
        scores = queries @ matrix.T  # (queries, keys)
        k = min(k, len(keys))
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        return [
            list(zip(keys[row].tolist(), scores[q, row].tolist(), strict=True)) for q, row in enumerate(top)
        ]

    def _searched(self, allowed: Keys | None) -> tuple[NDArray[np.float32], Keys]:
        """The rows a search scans: all of them, or those whose key is in `allowed`."""
        n = len(self._rows)
        matrix, keys = self._matrix[:n], self._keys[:n]
        if allowed is not None:
            mask = np.isin(keys, allowed)
            matrix, keys = matrix[mask], keys[mask]
        return matrix, keys


def nlist_for(n: int) -> int:
    """Inverted lists for n vectors: the power of two nearest 4 * sqrt(n), the usual rule of
    thumb (1M -> 4096), so each list holds a few hundred vectors."""
    return int(min(65536, max(64, 2 ** round(math.log2(4 * math.sqrt(max(n, 1)))))))


# Vectors a query scans at least. The lists nearest a query hold its true neighbours when the
# collection's groups are large next to the lists; when they are small (a collection just past
# exact search, or images that overlap), the neighbours spread over many lists and a fixed nprobe
# misses them: IVF512 with nprobe 32 found 57 % of the true top 10 at 25k overlapping vectors. So
# nprobe grows until this many vectors are scanned (the whole index at 25k, an eighth at 200k,
# 2.5 % at 1M), which held recall@10 at or above 0.95 at every size of `make bench-index`.
MIN_SCANNED = 25_000


def probes_for(nlist: int, n: int, nprobe: int) -> int:
    """Lists to scan among `nlist` holding `n` vectors: at least `nprobe`, and enough for
    MIN_SCANNED vectors."""
    return min(nlist, max(nprobe, math.ceil(nlist * MIN_SCANNED / max(n, 1))))


def training_size(nlist: int, n: int) -> int:
    """FAISS wants at least 39 training points per centroid; more than 64 adds time, not recall."""
    return min(n, max(64 * nlist, 20_000))


class IvfIndex:
    kind = "ivf"

    def __init__(self, index: Any, nprobe: int, trained_on: int) -> None:
        self._index = index
        self.nprobe = nprobe
        self.trained_on = trained_on
        # The selector of the last filter: the store hands the same array for a repeated filter.
        self._selector: tuple[Keys, Any, Any] | None = None

    @classmethod
    def train(cls, sample: NDArray[np.float32], nlist: int, nprobe: int) -> IvfIndex:
        import faiss

        dim = sample.shape[1]
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.seed = 1234  # the same collection trains the same centroids
        _use_threads(os.cpu_count() or 1)
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        # A hash table from key to list position: removing a key costs O(1), not a scan of
        # every list; about 40 bytes per vector.
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        return cls(index, nprobe, len(sample))

    @classmethod
    def load(cls, path: Path, nprobe: int, trained_on: int) -> IvfIndex:
        import faiss

        return cls(faiss.read_index(str(path)), nprobe, trained_on)

    @property
    def nlist(self) -> int:
        return int(self._index.nlist)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, keys: Keys, vectors: NDArray[np.float32]) -> None:
        if len(keys):
            _use_threads(os.cpu_count() or 1)
            self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), keys.astype(np.int64))

    def remove(self, keys: Keys) -> None:
        import faiss

        if len(keys):
            self._index.remove_ids(faiss.IDSelectorArray(np.ascontiguousarray(keys, dtype=np.int64)))

    def search(
        self, queries: NDArray[np.float32], penalties: NDArray[np.float32], k: int, allowed: Keys | None
    ) -> Candidates:
        import faiss

        total = len(self)
        if total == 0 or k < 1:
            return []
        nprobe = probes_for(self.nlist, total, self.nprobe)
        params = faiss.SearchParametersIVF()
        if allowed is not None:
            if len(allowed) == 0:
                return []
            # The filter is applied while the lists are scanned. A selective filter leaves few
            # matches in the nearest lists, so probe proportionally more of them.
            params.sel = self._selector_for(allowed)
            share = min(1.0, len(allowed) / total)
            nprobe = math.ceil(nprobe / share)
        params.nprobe = min(self.nlist, nprobe)
        # One thread: a query's few views gain little from FAISS's OpenMP threads, and on a
        # 2-core machine those threads then spin against numpy's BLAS threads that re-score the
        # candidates: a query of 8 views at 100k vectors took 8.5 ms, 2.7 ms with one thread.
        _use_threads(1)
        scores, keys = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)
        best: dict[int, float] = {}
        for view, penalty in enumerate(penalties.tolist()):
            for key, score in zip(keys[view].tolist(), scores[view].tolist(), strict=True):
                if key >= 0 and score - penalty > best.get(key, -math.inf):
                    best[key] = score - penalty
        return list(best.items())

    def search_each(self, queries: NDArray[np.float32], k: int, allowed: Keys | None) -> list[Candidates]:
        """Many queries at once on every core, each scanning the `nprobe` nearest lists without the
        floor of `probes_for`: a row's near copies score high and sit in the lists nearest to it,
        where the few probes find them (recall measured in bench/duplicates.py)."""
        import faiss

        if len(self) == 0 or k < 1:
            return [[] for _ in range(len(queries))]
        params = faiss.SearchParametersIVF()
        params.nprobe = min(self.nlist, self.nprobe)
        if allowed is not None:
            if len(allowed) == 0:
                return [[] for _ in range(len(queries))]
            params.sel = self._selector_for(allowed)
            params.nprobe = min(self.nlist, math.ceil(self.nprobe * len(self) / len(allowed)))
        _use_threads(os.cpu_count() or 1)
        scores, keys = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)
        return [
            [(key, score) for key, score in zip(row_keys, row_scores, strict=True) if key >= 0]
            for row_keys, row_scores in zip(keys.tolist(), scores.tolist(), strict=True)
        ]

    def _selector_for(self, allowed: Keys) -> Any:
        """A FAISS id selector: a hash set for a few keys, a bitmap over the key range for many
        (one bit per key: building it for 100k keys of 1M takes well under a millisecond)."""
        import faiss

        if self._selector is not None and self._selector[0] is allowed:
            return self._selector[1]
        keys = np.ascontiguousarray(allowed, dtype=np.int64)
        if len(keys) < 4096:
            selector, backing = faiss.IDSelectorBatch(keys), keys
        else:
            bits = np.zeros(int(keys.max()) + 1, dtype=bool)
            bits[keys] = True
            backing = np.packbits(bits, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(backing), faiss.swig_ptr(backing))
        # The selector points into `backing`: keep both alive together.
        self._selector = (allowed, selector, backing)
        return selector

    def save(self, path: Path) -> None:
        """Write to `path` atomically: a reader sees the old file or the whole new one."""
        import faiss

        partial = path.with_name(path.name + ".partial")
        faiss.write_index(self._index, str(partial))
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
        _fsync_directory(path.parent)


def _use_threads(count: int) -> None:
    """FAISS's OpenMP thread count for the calling thread's next FAISS calls (OpenMP keeps the
    setting per thread, so a search and a concurrent index build do not change each other's)."""
    import faiss

    faiss.omp_set_num_threads(count)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
