"""Indexing: source entries -> a preparation (read, hash, decode, preprocess: this process's
threads, or a Ray cluster; see `imagefinder.preparation`) -> batched encoder calls -> a writer's
store upserts. Knows nothing of HTTP or the CLI.

- Order is kept (results are consumed in submission order), so "first wins" for duplicate content
  is deterministic; in-flight work is bounded, so memory stays flat however large the source is.
- Incremental: an item whose stamp (file mtime and size) or URL matches what the store recorded is
  not read again; one whose bytes hash to what the store holds is not embedded again.
- Crash-safe: every batch is one store transaction, and `on_commit` is called only after it, so
  whatever was reported as indexed survives a kill; a re-run picks up the rest.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imagefinder.blobs import BlobStore
from imagefinder.encoders.base import Encoder, EncoderInfo
from imagefinder.images import ImageLimits
from imagefinder.preparation import Failed, LocalPreparation, Outcome, Preparation, Prepared, Unchanged
from imagefinder.sources import SkippedRow, SourceEntry, SourceItem
from imagefinder.stores.base import VectorStore
from imagefinder.writers import StoreWriter, Writer

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


class Indexer:
    """The rules of an index run, over a preparation (where items are read, decoded and maybe
    embedded: this process's threads, or a Ray cluster) and a writer (one, or several in flight)."""

    def __init__(
        self,
        encoder: Encoder,
        store: VectorStore,
        limits: ImageLimits,
        batch_size: int = 32,
        decode_workers: int = 2,
        fetch_workers: int = 8,
        preparation: Preparation | None = None,
        writer: Writer | None = None,
    ) -> None:
        store.bind_encoder(encoder.info)
        self._encoder = encoder
        self._store = store
        self._batch_size = batch_size
        self._preparation = preparation or LocalPreparation(
            store,
            limits,
            encoder.preprocess,
            encoder.min_short_side,
            2 * batch_size,
            decode_workers,
            fetch_workers,
        )
        self._writer = writer or StoreWriter(store)

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
        seen_hashes: dict[str, str] = {}
        batch: list[Prepared] = []
        deferred: list[Prepared] = []

        def tick() -> None:
            if progress:
                progress(1)

        def admitted() -> Iterator[SourceItem]:
            """The items to prepare; rows the source could not use are reported here."""
            seen_ids: set[str] = set()
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
                elif entry.id in seen_ids:
                    report.duplicate(entry.uri, f"duplicate id {entry.id!r}")
                    tick()
                else:
                    seen_ids.add(entry.id)
                    yield entry

        def consume(outcome: Outcome) -> None:
            item = outcome.item
            if isinstance(outcome, Failed):
                report.fail(item.uri, outcome.category, outcome.reason)
            elif outcome.hash in seen_hashes:
                report.duplicate(item.uri, f"same content as {seen_hashes[outcome.hash]!r}")
                self._forget_stale(item.id)
            elif isinstance(outcome, Unchanged):
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

        def accept(outcome: Prepared) -> None:
            seen_hashes[outcome.hash] = outcome.item.id
            report.stage_seconds["read"] += outcome.read_s
            report.stage_seconds["decode"] += outcome.decode_s
            batch.append(outcome)
            if len(batch) >= self._batch_size:
                self._flush(batch, report, on_commit)

        for outcome in self._preparation.outcomes(admitted(), refresh, keep_files):
            consume(outcome)
        self._flush(batch, report, on_commit)
        self._writer.drain()
        # An image whose stored bytes are themselves being replaced in this run (files renamed
        # in a ring) does not hold those bytes any more.
        replaced = {outcome.item.id for outcome in deferred}
        for outcome in deferred:
            existing = self._store.find_by_hash(outcome.hash)
            holder = seen_hashes.get(outcome.hash, None if existing in replaced else existing)
            if holder is not None and holder != outcome.item.id:
                report.duplicate(outcome.item.uri, f"same content as {holder!r}, already indexed")
                self._forget_stale(outcome.item.id)
            else:
                accept(outcome)
        self._flush(batch, report, on_commit)
        self._writer.drain()
        report.seconds = time.perf_counter() - started
        return report

    def close(self) -> None:
        self._writer.close()

    def _refresh_payload(self, outcome: Unchanged) -> None:
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
        batch: list[Prepared],
        report: IndexReport,
        on_commit: Callable[[Sequence[str]], None] | None,
    ) -> None:
        if not batch:
            return
        t0 = time.perf_counter()
        vectors = self._vectors(batch)
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
        report.stage_seconds["embed"] += t1 - t0

        def done() -> None:
            report.indexed += len(ids)
            if on_commit:
                on_commit(ids)

        self._writer.write(ids, vectors, payloads, done)
        report.stage_seconds["write"] += time.perf_counter() - t1
        batch.clear()

    def _vectors(self, batch: list[Prepared]) -> NDArray[np.float32]:
        """The batch's vectors: embedded here, unless the preparation embedded them already."""
        rows: list[NDArray[np.float32] | None] = [p.vector for p in batch]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            pixels = np.stack([batch[i].pixels for i in missing])  # type: ignore[misc]
            for i, vector in zip(missing, self._encoder.embed_arrays(pixels), strict=True):
                rows[i] = vector
        return np.stack(rows).astype(np.float32, copy=False)  # type: ignore[arg-type]

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
