"""The micro-batcher's logic: a lone query waits for nothing; queries that queue up while the
encoder is busy share its next call."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from imagefinder.api.batcher import MicroBatcher


class SlowEncoder:
    """Records batch sizes; the first call blocks until `release` is set."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.busy = threading.Event()
        self.release = threading.Event()

    def __call__(self, inputs: Sequence[NDArray[np.float32]]) -> NDArray[np.float32]:
        self.batches.append(len(inputs))
        if len(self.batches) == 1:
            self.busy.set()
            self.release.wait(timeout=10)
        return np.concatenate(inputs) * 2


def test_queries_queued_while_the_encoder_is_busy_share_the_next_call() -> None:
    encoder = SlowEncoder()
    batcher = MicroBatcher(encoder, max_batch=16, max_wait_ms=0)

    async def scenario() -> list[NDArray[np.float32]]:
        first = asyncio.ensure_future(batcher.embed(np.full((1, 2), 1.0, dtype=np.float32)))
        while not encoder.busy.is_set():
            await asyncio.sleep(0.005)
        rest = [
            asyncio.ensure_future(batcher.embed(np.full((1, 2), value, dtype=np.float32)))
            for value in (2, 3, 4)
        ]
        await asyncio.sleep(0.05)  # all three are queued behind the busy encoder
        encoder.release.set()
        return list(await asyncio.gather(first, *rest))

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.close()
    assert encoder.batches == [1, 3]
    # Every caller gets its own row back.
    assert [float(r[0]) for r in results] == [2.0, 4.0, 6.0, 8.0]
