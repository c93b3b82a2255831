"""Indexing: source entries -> fetch/read, hash (many threads) -> decode, preprocess (a few
threads) -> batched encoder calls -> store upserts. Knows nothing of HTTP or the CLI.

- Order is kept (results are consumed in submission order), so "first wins" for duplicate content
  is deterministic; in-flight work is bounded, so memory stays flat however large the source is.
- Incremental: an item whose stamp (file mtime and size) or URL matches what the store recorded is
  not read again; one whose bytes hash to what the store holds is not embedded again.
- Crash-safe: every batch is one store transaction, and `on_commit` is called only after it, so
  whatever was reported as indexed survives a kill; a re-run picks up the rest.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imagefinder.blobs import BlobStore
from imagefinder.encoders.base import Encoder, EncoderInfo
from imagefinder.errors import (
    CorruptImageError,
    FetchError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from imagefinder.images import ImageLimits, content_hash, decode_image
from imagefinder.sources import SkippedRow, SourceEntry, SourceItem
from imagefinder.stores.base import Payload, VectorStore

STAGES = ("read", "decode", "embed", "write")


def image_payload(
    info: EncoderInfo, digest: str, size: int, dimensions: tuple[int, int], added_at: str, **fields: Any
) -> dict[str, Any]:
    """What the store keeps with every image, however it was added (index run or API)."""
    width, height = dimensions
    return {
        **fields,
        "hash": digest,
        "bytes": size,
        "width": width,
        "height": height,
        "added_at": added_at,
        "model": info.name,
        "model_version": info.version,
    }


@dataclass
class IndexReport:
    seen: int = 0
    indexed: int = 0
    unchanged: int = 0
    duplicates: int = 0
    failed: int = 0
    pruned: int = 0
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    problems: list[dict[str, str]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "indexed": self.indexed,
            "unchanged": self.unchanged,
            "duplicates": self.duplicates,
            "failed": self.failed,
            "pruned": self.pruned,
            "failed_by_reason": dict(sorted(self.failed_by_reason.items())),
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            # Summed over worker threads, so read + decode can exceed the wall-clock time.
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "problems": self.problems,
        }

    def fail(self, where: str, category: str, reason: str) -> None:
        self.failed += 1
        self.failed_by_reason[category] += 1
        self.problems.append({"where": where, "category": category, "reason": reason})

    def duplicate(self, where: str, reason: str) -> None:
        self.duplicates += 1
        self.problems.append({"where": where, "category": "duplicate", "reason": reason})


@dataclass(frozen=True)
class _Prepared:
    item: SourceItem
    hash: str
    size: int
    width: int
    height: int
    pixels: NDArray[np.float32]
    kept: str | None
    read_s: float
    decode_s: float


@dataclass(frozen=True)
class _Unchanged:
    """Same bytes as stored. `known` is the stored payload, refreshed if the item's location or
    metadata changed (a moved folder, a touched file, an edited CSV column)."""

    item: SourceItem
    hash: str
    known: Payload


@dataclass(frozen=True)
class _Failed:
    item: SourceItem
    category: str
    reason: str


_Outcome = _Prepared | _Unchanged | _Failed

_CATEGORIES: list[tuple[type[Exception], str]] = [
    (ImageTooLargeError, "too_large"),
    (UnsupportedImageError, "not_an_image"),
    (CorruptImageError, "corrupt"),
]


class Indexer:
    def __init__(
        self,
        encoder: Encoder,
        store: VectorStore,
        limits: ImageLimits,
        batch_size: int = 32,
        decode_workers: int = 2,
        fetch_workers: int = 8,
    ) -> None:
        store.bind_encoder(encoder.info)
        self._encoder = encoder
        self._store = store
        self._limits = limits
        self._batch_size = batch_size
        self._fetch_workers = max(fetch_workers, decode_workers)
        # Downloads wait on the network, decoding on the CPU: many fetch threads, few decoders.
        self._decode_slots = threading.BoundedSemaphore(decode_workers)

    def index(
        self,
        entries: Iterable[SourceEntry],
        progress: Callable[[int], None] | None = None,
        on_commit: Callable[[Sequence[str]], None] | None = None,
        prune_source: str | None = None,
        refresh: bool = False,
        keep_files: BlobStore | None = None,
    ) -> IndexReport:
        """Index `entries`. With `prune_source`, first remove the images recorded as coming from
        that source whose item is no longer listed (deleted files). With `refresh`, download URLs
        again even when the store already has them. With `keep_files`, keep the originals."""
        report = IndexReport()
        started = time.perf_counter()
        if prune_source is not None:
            entries = list(entries)
            report.pruned = self._prune(prune_source, entries)
        seen_ids: set[str] = set()
        seen_hashes: dict[str, str] = {}
        batch: list[_Prepared] = []
        deferred: list[_Prepared] = []
        pending: deque[Future[_Outcome]] = deque()

        def tick() -> None:
            if progress:
                progress(1)

        def consume(outcome: _Outcome) -> None:
            item = outcome.item
            if isinstance(outcome, _Failed):
                report.fail(item.uri, outcome.category, outcome.reason)
            elif outcome.hash in seen_hashes:
                report.duplicate(item.uri, f"same content as {seen_hashes[outcome.hash]!r}")
                self._forget_stale(item.id)
            elif isinstance(outcome, _Unchanged):
                seen_hashes[outcome.hash] = item.id
                report.unchanged += 1
                self._refresh_payload(outcome)
            else:
                existing = self._store.find_by_hash(outcome.hash)
                if existing is not None and existing != item.id:
                    # The stored image with these bytes may itself change later in this run (a
                    # file renamed over another); decide once the run has written everything.
                    deferred.append(outcome)
                else:
                    accept(outcome)
            tick()

        def accept(outcome: _Prepared) -> None:
            seen_hashes[outcome.hash] = outcome.item.id
            report.stage_seconds["read"] += outcome.read_s
            report.stage_seconds["decode"] += outcome.decode_s
            batch.append(outcome)
            if len(batch) >= self._batch_size:
                self._flush(batch, report, on_commit)

        with ThreadPoolExecutor(self._fetch_workers, thread_name_prefix="fetch") as pool:
            for entry in entries:
                report.seen += 1
                if isinstance(entry, SkippedRow):
                    if entry.incomplete:
                        report.fail(entry.where, "unreadable", entry.reason)
                    elif entry.duplicate:
                        report.duplicate(entry.where, entry.reason)
                    else:
                        report.fail(entry.where, "invalid_row", entry.reason)
                    tick()
                    continue
                if entry.id in seen_ids:
                    report.duplicate(entry.uri, f"duplicate id {entry.id!r}")
                    tick()
                    continue
                seen_ids.add(entry.id)
                pending.append(pool.submit(self._prepare, entry, refresh, keep_files))
                while len(pending) >= max(2 * self._batch_size, 2 * self._fetch_workers):
                    consume(pending.popleft().result())
            while pending:
                consume(pending.popleft().result())
        self._flush(batch, report, on_commit)
        for outcome in deferred:
            existing = self._store.find_by_hash(outcome.hash)
            holder = seen_hashes.get(outcome.hash, existing)
            if holder is not None and holder != outcome.item.id:
                report.duplicate(outcome.item.uri, f"same content as {holder!r}, already indexed")
                self._forget_stale(outcome.item.id)
            else:
                accept(outcome)
        self._flush(batch, report, on_commit)
        report.seconds = time.perf_counter() - started
        return report

    def _prepare(self, item: SourceItem, refresh: bool, keep: BlobStore | None) -> _Outcome:
        """Runs in a worker thread: skip if unchanged, else read, hash, decode, preprocess.
        Whatever goes wrong with one item is reported for that item; the run goes on."""
        try:
            return self._prepare_item(item, refresh, keep)
        except Exception as exc:  # a bug or an odd file must not stop a million-image run
            return _Failed(item, "error", f"{type(exc).__name__}: {exc}")

    def _prepare_item(self, item: SourceItem, refresh: bool, keep: BlobStore | None) -> _Outcome:
        known = self._store.get(item.id)
        clash = _collection_clash(known, item)
        if clash:
            return _Failed(item, "id_clash", clash)
        if known is not None and known.get("uri") == item.uri and "hash" in known:
            if item.stamp is not None and known.get("stamp") == item.stamp:
                return _Unchanged(item, str(known["hash"]), known)
            if item.remote and not refresh:
                return _Unchanged(item, str(known["hash"]), known)
        t0 = time.perf_counter()
        try:
            data = item.read()
        except FetchError as exc:
            return _Failed(item, "fetch", str(exc))
        digest = content_hash(data)
        if known is not None and known.get("hash") == digest:
            return _Unchanged(item, digest, known)
        t1 = time.perf_counter()
        try:
            with self._decode_slots:
                image = decode_image(data, self._limits, item.uri, self._encoder.min_short_side)
                pixels = self._encoder.preprocess(image)
        except ImageError as exc:
            category = next((c for t, c in _CATEGORIES if isinstance(exc, t)), "corrupt")
            return _Failed(item, category, exc.reason)
        kept = str(keep.put(data, digest)) if keep is not None else None
        t2 = time.perf_counter()
        return _Prepared(item, digest, len(data), image.width, image.height, pixels, kept, t1 - t0, t2 - t1)

    def _refresh_payload(self, outcome: _Unchanged) -> None:
        """Same bytes, but the stored location or metadata is out of date: rewrite the payload
        with the stored vector (no decoding, no encoder call)."""
        item, known = outcome.item, outcome.known
        wanted: dict[str, Any] = {"uri": item.uri}
        if item.collection is not None:
            wanted["collection"] = item.collection
        if item.stamp is not None:
            wanted["stamp"] = item.stamp
        if item.meta or "meta" in known:
            wanted["meta"] = dict(item.meta)
        if all(known.get(key) == value for key, value in wanted.items()):
            return
        vector = self._store.get_vector(item.id)
        if vector is not None:
            self._store.upsert([item.id], vector[np.newaxis], [{**known, **wanted}])

    def _flush(
        self,
        batch: list[_Prepared],
        report: IndexReport,
        on_commit: Callable[[Sequence[str]], None] | None,
    ) -> None:
        if not batch:
            return
        t0 = time.perf_counter()
        vectors = self._encoder.embed_arrays(np.stack([p.pixels for p in batch]))
        t1 = time.perf_counter()
        now = datetime.now(UTC).isoformat(timespec="seconds")
        info = self._encoder.info
        payloads = []
        for p in batch:
            payload = image_payload(info, p.hash, p.size, (p.width, p.height), now, uri=p.item.uri)
            payload.update(p.item.carried)
            optional = {"collection": p.item.collection, "stamp": p.item.stamp, "file": p.kept}
            payload.update({key: value for key, value in optional.items() if value is not None})
            if p.item.meta:
                payload["meta"] = dict(p.item.meta)
            payloads.append(payload)
        ids = [p.item.id for p in batch]
        self._store.upsert(ids, vectors, payloads)
        report.stage_seconds["embed"] += t1 - t0
        report.stage_seconds["write"] += time.perf_counter() - t1
        report.indexed += len(batch)
        batch.clear()
        if on_commit:
            on_commit(ids)

    def _prune(self, source: str, entries: list[SourceEntry]) -> int:
        if any(isinstance(entry, SkippedRow) and entry.incomplete for entry in entries):
            return 0  # part of the source could not be listed: its images are not "deleted"
        listed = {entry.id for entry in entries if isinstance(entry, SourceItem)}
        stale = [
            image_id
            for image_id, payload in self._store.payload_items()
            if payload.get("collection") == source and image_id not in listed
        ]
        return self._store.delete(stale) if stale else 0

    def _forget_stale(self, image_id: str) -> None:
        """An id whose new content duplicates another image no longer holds what was indexed
        under it; drop the old vector rather than keep answering with it."""
        if self._store.get(image_id) is not None:
            self._store.delete([image_id])


def _collection_clash(known: Payload | None, item: SourceItem) -> str | None:
    """Two folders (or CSVs) indexed into one store can both have an `a.jpg`. Refuse to let the
    second silently replace the first, unless the first source is gone (a moved folder)."""
    if known is None or item.collection is None:
        return None
    other = known.get("collection")
    if not other or other == item.collection or other == "api" or not os.path.exists(str(other)):
        return None
    return f"id {item.id!r} is already used by an image from {other}; index into another store (--store)"
