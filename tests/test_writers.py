"""The index run's writers (logic only, over a small in-memory store), and the Ray engine's
refusal when Ray is not installed."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np
import pytest
from numpy.typing import NDArray

from imagefinder.encoders.base import EncoderInfo
from imagefinder.errors import EngineError
from imagefinder.writers import ParallelWriter, StoreWriter

INFO = EncoderInfo("fake", "1", 4, "none")


class SlowStore:
    """Records upserts; the first batch is the slowest, so later ones finish first."""

    def __init__(self, log: list[list[str]], fail_on: str | None = None) -> None:
        self._log = log
        self._fail_on = fail_on
        self.bound: EncoderInfo | None = None
        self.closed = False

    def bind_encoder(self, info: EncoderInfo) -> None:
        self.bound = info

    def upsert(self, ids: Sequence[str], vectors: NDArray[np.float32], payloads: Sequence[object]) -> None:
        if ids[0] == "b0":
            time.sleep(0.2)
        if ids[0] == self._fail_on:
            raise RuntimeError("the server refused the batch")
        self._log.append(list(ids))

    def close(self) -> None:
        self.closed = True


def _batch(name: str) -> tuple[list[str], NDArray[np.float32], list[dict[str, str]]]:
    return [name], np.zeros((1, 4), np.float32), [{}]


def test_parallel_writer_acknowledges_in_order_once_written() -> None:
    log: list[list[str]] = []
    opened: list[SlowStore] = []

    def open_store() -> SlowStore:
        opened.append(SlowStore(log))
        return opened[-1]

    writer = ParallelWriter(open_store, INFO, writers=3)  # type: ignore[arg-type]
    acknowledged: list[str] = []
    for i in range(6):
        name = f"b{i}"
        writer.write(*_batch(name), done=lambda name=name: acknowledged.append(name))
        # Nothing is acknowledged before its upsert returned.
        assert all([a] in log for a in acknowledged)
    writer.drain()
    assert acknowledged == [f"b{i}" for i in range(6)]  # in the order given, not of completion
    assert sorted(log) == [[f"b{i}"] for i in range(6)]
    writer.close()
    # Each writer thread opened its own connection, bound to the run's encoder, and closed it.
    assert 1 < len(opened) <= 3 and all(s.bound == INFO and s.closed for s in opened)


def test_parallel_writer_stops_at_a_failed_batch_without_acknowledging_it() -> None:
    log: list[list[str]] = []
    writer = ParallelWriter(lambda: SlowStore(log, fail_on="b2"), INFO, writers=2)  # type: ignore[arg-type]
    acknowledged: list[str] = []
    with pytest.raises(RuntimeError, match="refused"):
        for i in range(5):
            writer.write(*_batch(f"b{i}"), done=lambda i=i: acknowledged.append(f"b{i}"))
        writer.drain()
    # The batches before the failed one were acknowledged, in order; it and those after, not.
    assert acknowledged == ["b0", "b1"]
    writer.close()


def test_store_writer_acknowledges_after_the_upsert() -> None:
    log: list[list[str]] = []
    seen: list[bool] = []
    writer = StoreWriter(SlowStore(log))  # type: ignore[arg-type]
    writer.write(*_batch("b1"), done=lambda: seen.append(["b1"] in log))
    assert seen == [True]


def test_ray_engine_without_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagefinder.ray_engine import RayOptions, ray_cluster

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    # What the engine sets in the environment is undone after the test.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(EngineError, match=r"pip install 'imagefinder\[ray\]'"):
        with ray_cluster(RayOptions()):
            pass
