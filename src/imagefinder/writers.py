"""Writing embedded batches to the store while indexing, with a callback once each batch is
acknowledged (so nothing is reported as indexed before the store has it).

`StoreWriter` writes in the caller's thread: the embedded store is one machine's file with one
writer. `ParallelWriter` keeps several batches in flight, each writer thread on its own store
connection: a Milvus server takes concurrent upserts, and each call waits on the network.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from imagefinder.encoders.base import EncoderInfo
from imagefinder.stores.base import Payload, VectorStore

Done = Callable[[], None]


class Writer(Protocol):
    def write(
        self, ids: Sequence[str], vectors: NDArray[np.float32], payloads: Sequence[Payload], done: Done
    ) -> None:
        """Write one batch; call `done` in the caller's thread once the store acknowledged it
        (at once, or on a later `write` or `drain`). A failed write raises here or in `drain`."""
        ...

    def drain(self) -> None:
        """Wait for every batch in flight and call their `done`s."""
        ...

    def close(self) -> None: ...


class StoreWriter:
    def __init__(self, store: VectorStore) -> None:
        self._store = store

    def write(
        self, ids: Sequence[str], vectors: NDArray[np.float32], payloads: Sequence[Payload], done: Done
    ) -> None:
        self._store.upsert(ids, vectors, payloads)
        done()

    def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


class ParallelWriter:
    """Up to `writers` batches in flight; `done`s are called in the order the batches were given."""

    def __init__(self, open_store: Callable[[], VectorStore], info: EncoderInfo, writers: int) -> None:
        self._open_store = open_store
        self._info = info
        self._pool = ThreadPoolExecutor(writers, thread_name_prefix="writer")
        self._writers = writers
        self._local = threading.local()
        self._opened: list[VectorStore] = []
        self._lock = threading.Lock()
        self._pending: deque[tuple[Future[None], Done]] = deque()

    def write(
        self, ids: Sequence[str], vectors: NDArray[np.float32], payloads: Sequence[Payload], done: Done
    ) -> None:
        self._pending.append((self._pool.submit(self._upsert, list(ids), vectors, list(payloads)), done))
        while self._pending and (len(self._pending) > self._writers or self._pending[0][0].done()):
            self._acknowledge()

    def drain(self) -> None:
        while self._pending:
            self._acknowledge()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for store in self._opened:
            store.close()

    def _acknowledge(self) -> None:
        future, done = self._pending.popleft()
        future.result()  # a failed write stops the run here; later batches are not acknowledged
        done()

    def _upsert(self, ids: list[str], vectors: NDArray[np.float32], payloads: list[Payload]) -> None:
        store: VectorStore | None = getattr(self._local, "store", None)
        if store is None:
            store = self._open_store()
            store.bind_encoder(self._info)
            with self._lock:
                self._opened.append(store)
            self._local.store = store
        store.upsert(ids, vectors, payloads)
