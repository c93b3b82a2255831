"""The reindex use case: embed the whole collection again with another encoder (a fine-tuned
version) into a new index generation while the current one keeps serving, then switch.

Every image is read again from where the current generation recorded it (its kept copy, its
file or its URL) and keeps its id, location, source and metadata. If any image cannot be read
again, the new generation would silently lose it, so the switch is refused (the report says
which) unless `allow_missing` is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlparse

from imagefinder.encoders.base import Encoder
from imagefinder.errors import FetchError, ImageFinderError
from imagefinder.generations import Generation, IndexGenerations
from imagefinder.indexer import IndexReport
from imagefinder.service import ImageFinder
from imagefinder.sources import SourceItem
from imagefinder.stores.base import Payload, VectorStore
from imagefinder.tracking import ModelRecord
from imagefinder.training.data import ImageReader

# The fields of a payload that the indexer does not make again from the bytes.
CARRIED = ("file", "added_at")
# The store's record of the registered model that serves it (read by `wiring.build_service`).
SERVE_WITH = "serve_with"


class ReindexIncompleteError(ImageFinderError):
    """Some images could not be read again: switching would lose them."""


@dataclass(frozen=True)
class ReindexResult:
    generation: Generation
    previous: Generation
    report: IndexReport
    retired: list[Generation]  # older generations removed after the switch


class Reindexer:
    def __init__(
        self,
        generations: IndexGenerations,
        current: VectorStore,
        reader: ImageReader,
        open_store: Callable[[str], VectorStore],
        make_service: Callable[[Encoder, VectorStore], ImageFinder],
        keep: int = 3,
        on_retired: Callable[[Generation], None] | None = None,
    ) -> None:
        """The switch retires the generations served before the last `keep`
        (`IndexGenerations.switch`), and each is told to `on_retired` (what other rooms keep per
        generation, such as a duplicates scan's memory, goes with it)."""
        self._generations = generations
        self._current = current
        self._reader = reader
        self._open_store = open_store
        self._make_service = make_service
        self._keep = keep
        self._on_retired = on_retired

    def run(
        self,
        encoder: Encoder,
        model: ModelRecord | None,
        run_id: str | None = None,
        progress: Callable[[int], None] | None = None,
        allow_missing: bool = False,
    ) -> ReindexResult:
        previous = self._generations.current()
        with self._generations.building() as generation:
            service = self._make_service(encoder, self._open_store(generation.location))
            try:
                report = service.index(self.entries(), progress)
                if report.failed and not allow_missing:
                    problems = "; ".join(f"{p['where']}: {p['reason']}" for p in report.problems[:5])
                    raise ReindexIncompleteError(
                        f"{report.failed} of {report.seen} images could not be embedded again, so the "
                        f"index was not switched ({problems}); fix them, or pass --allow-missing"
                    )
                service.maintenance.record_provenance(run_id, model)
                if model is not None:
                    service.store.set_meta(SERVE_WITH, model.uri)
            finally:
                service.close()
            retired = self._generations.switch(generation, self._keep)
        if self._on_retired is not None:
            for old in retired:
                self._on_retired(old)
        return ReindexResult(generation, previous, report, retired)

    def close(self) -> None:
        self._generations.close()

    def entries(self) -> Iterator[SourceItem]:
        for image_id, payload in self._current.payload_items():
            yield SourceItem(
                id=image_id,
                uri=str(payload.get("uri") or payload.get("file") or image_id),
                read=partial(self._read, image_id, payload),
                meta=dict(payload.get("meta") or {}),
                collection=_optional(payload.get("collection")),
                stamp=_optional(payload.get("stamp")),
                remote=urlparse(str(payload.get("uri") or "")).scheme in ("http", "https"),
                carried={key: str(payload[key]) for key in CARRIED if payload.get(key)},
            )

    def _read(self, image_id: str, payload: Payload) -> bytes:
        try:
            return self._reader.read(image_id, payload)
        except ImageFinderError as exc:
            raise FetchError(str(exc)) from exc


def _optional(value: object) -> str | None:
    return None if value is None else str(value)
