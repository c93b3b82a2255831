"""Micro-batching: queries that arrive together share one encoder call.

Each request hands in its preprocessed input and awaits a future; one worker thread takes the
first waiting input, waits up to `max_wait_ms` for more (up to `max_batch`), runs the encoder once
for all of them and resolves every future. A lone request so pays at most `max_wait_ms`. With the
default wait of 0 it pays nothing, and batches still form under load: whatever queued while the
encoder was busy goes into the next call. `make bench-api` measures whether batching pays under
load on this machine."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np
from numpy.typing import NDArray

EmbedFn = Callable[[Sequence[NDArray[np.float32]]], NDArray[np.float32]]


class MicroBatcher:
    def __init__(
        self,
        embed: EmbedFn,
        max_batch: int = 16,
        max_wait_ms: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._embed = embed
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000
        self._on_batch = on_batch
        self._queue: queue.Queue[tuple[NDArray[np.float32], Future[NDArray[np.float32]]] | None] = (
            queue.Queue()
        )
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    async def embed(self, prepared: NDArray[np.float32]) -> NDArray[np.float32]:
        future: Future[NDArray[np.float32]] = Future()
        self._queue.put((prepared, future))
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self._max_wait_s
            while len(batch) < self._max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[NDArray[np.float32], Future[NDArray[np.float32]]]]) -> None:
        try:
            vectors = self._embed([prepared for prepared, _ in batch])
        except Exception as exc:  # every waiting request gets the error, the worker lives on
            for _, future in batch:
                future.set_exception(exc)
            return
        if self._on_batch:
            self._on_batch(len(batch))
        for (_, future), vector in zip(batch, vectors, strict=True):
            future.set_result(vector)
