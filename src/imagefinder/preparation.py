"""Preparing source items for the index: for each item, in the items' order, one outcome.

An item is either unchanged since the store recorded it (same stamp, same URL, or the same bytes),
failed (with a category and a reason), or prepared: its bytes read and hashed, decoded, and turned
into the encoder's input (`pixels`) or already embedded (`vector`, when the preparation ran the
encoder itself, as the Ray engine's actors do). The indexer decides what to do with each outcome;
a preparation only says what it found.

`LocalPreparation` works in this process: many threads reading (downloads wait on the network), a
few decoding. `ray_engine.RayPreparation` spreads the same steps over a Ray cluster.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagefinder.blobs import BlobStore
from imagefinder.errors import (
    CorruptImageError,
    FetchError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from imagefinder.images import ImageLimits, content_hash, decode_image
from imagefinder.sources import SourceItem
from imagefinder.stores.base import Payload, VectorStore


@dataclass(frozen=True)
class Prepared:
    item: SourceItem
    hash: str
    size: int
    width: int
    height: int
    # The encoder's input; None when the preparation embedded the image itself (`vector`).
    pixels: NDArray[np.float32] | None
    kept: str | None
    read_s: float
    decode_s: float
    vector: NDArray[np.float32] | None = None


@dataclass(frozen=True)
class Unchanged:
    """Same bytes as stored. `known` is the stored payload, refreshed if the item's location or
    metadata changed (a moved folder, a touched file, an edited CSV column)."""

    item: SourceItem
    hash: str
    known: Payload


@dataclass(frozen=True)
class Failed:
    item: SourceItem
    category: str
    reason: str


Outcome = Prepared | Unchanged | Failed

_CATEGORIES: list[tuple[type[Exception], str]] = [
    (ImageTooLargeError, "too_large"),
    (UnsupportedImageError, "not_an_image"),
    (CorruptImageError, "corrupt"),
]


def failure_category(exc: ImageError) -> str:
    return next((category for kind, category in _CATEGORIES if isinstance(exc, kind)), "corrupt")


class Preparation(Protocol):
    def outcomes(
        self, items: Iterable[SourceItem], refresh: bool, keep: BlobStore | None
    ) -> Iterator[Outcome]:
        """One outcome per item, in the items' order, with a bounded number of items in flight
        (so memory stays flat however large the source is)."""
        ...


def known_outcome(store: VectorStore, item: SourceItem, refresh: bool) -> Outcome | Payload | None:
    """What the store's record alone says about `item`, before its bytes are read: an outcome
    (unchanged, or an id clash) when that settles it, else the stored payload (None if new)."""
    known = store.get(item.id)
    clash = collection_clash(known, item)
    if clash:
        return Failed(item, "id_clash", clash)
    if known is not None and known.get("uri") == item.uri and "hash" in known:
        if item.stamp is not None and known.get("stamp") == item.stamp:
            return Unchanged(item, str(known["hash"]), known)
        if item.remote and not refresh:
            return Unchanged(item, str(known["hash"]), known)
    return known


def collection_clash(known: Payload | None, item: SourceItem) -> str | None:
    """Two folders (or CSVs) indexed into one store can both have an `a.jpg`. Refuse to let the
    second silently replace the first, unless the first source is gone (a moved folder)."""
    if known is None or item.collection is None:
        return None
    other = known.get("collection")
    if not other or other == item.collection or other == "api" or not os.path.exists(str(other)):
        return None
    return f"id {item.id!r} is already used by an image from {other}; index into another store (--store)"


class LocalPreparation:
    """Prepares items in this process's threads, with the encoder's own preprocessing."""

    def __init__(
        self,
        store: VectorStore,
        limits: ImageLimits,
        preprocess: Callable[[Image.Image], NDArray[np.float32]],
        min_short_side: int,
        in_flight: int = 64,
        decode_workers: int = 2,
        fetch_workers: int = 8,
    ) -> None:
        self._store = store
        self._limits = limits
        self._preprocess = preprocess
        self._min_short_side = min_short_side
        self._fetch_workers = max(fetch_workers, decode_workers)
        self._in_flight = max(in_flight, 2 * self._fetch_workers)
        # Downloads wait on the network, decoding on the CPU: many fetch threads, few decoders.
        self._decode_slots = threading.BoundedSemaphore(decode_workers)

    def outcomes(
        self, items: Iterable[SourceItem], refresh: bool, keep: BlobStore | None
    ) -> Iterator[Outcome]:
        pending: deque[Future[Outcome]] = deque()
        with ThreadPoolExecutor(self._fetch_workers, thread_name_prefix="fetch") as pool:
            for item in items:
                pending.append(pool.submit(self._prepare, item, refresh, keep))
                while len(pending) >= self._in_flight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def _prepare(self, item: SourceItem, refresh: bool, keep: BlobStore | None) -> Outcome:
        """Whatever goes wrong with one item is reported for that item; the run goes on."""
        try:
            known = known_outcome(self._store, item, refresh)
            if isinstance(known, Prepared | Unchanged | Failed):
                return known
            t0 = time.perf_counter()
            try:
                data = item.read()
            except FetchError as exc:
                return Failed(item, "fetch", str(exc))
            digest = content_hash(data)
            if known is not None and known.get("hash") == digest:
                return Unchanged(item, digest, known)
            t1 = time.perf_counter()
            try:
                with self._decode_slots:
                    image = decode_image(data, self._limits, item.uri, self._min_short_side)
                    pixels = self._preprocess(image)
            except ImageError as exc:
                return Failed(item, failure_category(exc), exc.reason)
            kept = str(keep.put(data, digest)) if keep is not None else None
            t2 = time.perf_counter()
            width, height = image.size
            return Prepared(item, digest, len(data), width, height, pixels, kept, t1 - t0, t2 - t1)
        except Exception as exc:  # a bug or an odd file must not stop a million-image run
            return Failed(item, "error", f"{type(exc).__name__}: {exc}")
