"""Indexing: source entries -> read, hash, decode, preprocess (in worker threads) -> batched
encoder calls -> store upserts. Knows nothing of HTTP or the CLI.

Order is kept (results are consumed in submission order), so "first wins" for duplicate content
is deterministic. In-flight work is bounded, so memory stays flat however large the source is.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imagefinder.encoders.base import Encoder
from imagefinder.errors import FetchError, ImageError
from imagefinder.images import ImageLimits, content_hash, decode_image
from imagefinder.sources import SkippedRow, SourceEntry, SourceItem
from imagefinder.stores.base import VectorStore


@dataclass
class IndexReport:
    seen: int = 0
    indexed: int = 0
    unchanged: int = 0
    duplicates: int = 0
    failed: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(
        default_factory=lambda: {"read": 0.0, "decode": 0.0, "embed": 0.0, "write": 0.0}
    )
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
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "problems": self.problems,
        }


@dataclass(frozen=True)
class _Prepared:
    item: SourceItem
    hash: str
    size: int
    width: int
    height: int
    pixels: NDArray[np.float32]
    read_s: float
    decode_s: float


@dataclass(frozen=True)
class _Unchanged:
    item: SourceItem
    hash: str


@dataclass(frozen=True)
class _Failed:
    item: SourceItem
    reason: str


class Indexer:
    def __init__(
        self,
        encoder: Encoder,
        store: VectorStore,
        limits: ImageLimits,
        batch_size: int = 32,
        workers: int = 2,
    ) -> None:
        store.bind_encoder(encoder.info)
        self._encoder = encoder
        self._store = store
        self._limits = limits
        self._batch_size = batch_size
        self._workers = workers

    def index(
        self, entries: Iterable[SourceEntry], progress: Callable[[int], None] | None = None
    ) -> IndexReport:
        report = IndexReport()
        started = time.perf_counter()
        seen_ids: set[str] = set()
        seen_hashes: dict[str, str] = {}
        batch: list[_Prepared] = []
        pending: deque[Future[_Prepared | _Unchanged | _Failed]] = deque()
        max_pending = self._batch_size * 2

        def consume(result: _Prepared | _Unchanged | _Failed) -> None:
            if isinstance(result, _Failed):
                report.failed += 1
                report.problems.append({"where": result.item.uri, "reason": result.reason})
            elif result.hash in seen_hashes:
                report.duplicates += 1
                report.problems.append(
                    {
                        "where": result.item.uri,
                        "reason": f"same content as {seen_hashes[result.hash]!r}",
                        "duplicate": "true",
                    }
                )
            else:
                seen_hashes[result.hash] = result.item.id
                if isinstance(result, _Unchanged):
                    report.unchanged += 1
                else:
                    report.stage_seconds["read"] += result.read_s
                    report.stage_seconds["decode"] += result.decode_s
                    batch.append(result)
                    if len(batch) >= self._batch_size:
                        self._flush(batch, report)
            if progress:
                progress(1)

        with ThreadPoolExecutor(self._workers, thread_name_prefix="decode") as pool:
            for entry in entries:
                report.seen += 1
                if isinstance(entry, SkippedRow):
                    self._record_skip(entry, report)
                    if progress:
                        progress(1)
                    continue
                if entry.id in seen_ids:
                    self._record_skip(
                        SkippedRow(entry.uri, f"duplicate id {entry.id!r}", duplicate=True), report
                    )
                    if progress:
                        progress(1)
                    continue
                seen_ids.add(entry.id)
                pending.append(pool.submit(self._prepare, entry))
                while len(pending) >= max_pending:
                    consume(pending.popleft().result())
            while pending:
                consume(pending.popleft().result())
        self._flush(batch, report)
        report.seconds = time.perf_counter() - started
        return report

    def _prepare(self, item: SourceItem) -> _Prepared | _Unchanged | _Failed:
        """Runs in a worker thread: read bytes, skip if unchanged, decode and preprocess."""
        t0 = time.perf_counter()
        try:
            data = item.read()
        except FetchError as exc:
            return _Failed(item, str(exc))
        digest = content_hash(data)
        known = self._store.get(item.id)
        if known is not None and known.get("hash") == digest:
            return _Unchanged(item, digest)
        t1 = time.perf_counter()
        try:
            image = decode_image(data, self._limits, item.uri, self._encoder.min_short_side)
            pixels = self._encoder.preprocess(image)
        except ImageError as exc:
            return _Failed(item, exc.reason)
        t2 = time.perf_counter()
        return _Prepared(item, digest, len(data), image.width, image.height, pixels, t1 - t0, t2 - t1)

    def _flush(self, batch: list[_Prepared], report: IndexReport) -> None:
        if not batch:
            return
        t0 = time.perf_counter()
        vectors = self._encoder.embed_arrays(np.stack([p.pixels for p in batch]))
        t1 = time.perf_counter()
        now = datetime.now(UTC).isoformat(timespec="seconds")
        info = self._encoder.info
        payloads = [
            {
                **p.item.extra,
                "uri": p.item.uri,
                "hash": p.hash,
                "bytes": p.size,
                "width": p.width,
                "height": p.height,
                "added_at": now,
                "model": info.name,
                "model_version": info.version,
            }
            for p in batch
        ]
        self._store.upsert([p.item.id for p in batch], vectors, payloads)
        report.stage_seconds["embed"] += t1 - t0
        report.stage_seconds["write"] += time.perf_counter() - t1
        report.indexed += len(batch)
        batch.clear()

    @staticmethod
    def _record_skip(entry: SkippedRow, report: IndexReport) -> None:
        if entry.duplicate:
            report.duplicates += 1
        else:
            report.failed += 1
        problem = {"where": entry.where, "reason": entry.reason}
        if entry.duplicate:
            problem["duplicate"] = "true"
        report.problems.append(problem)
