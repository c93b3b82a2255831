"""The use cases over the parts: index a source, search by image, remove, describe.

`ImageFinder` receives its parts (encoder, store) through its constructor; `wiring.build_service`
builds the real ones from `Settings`. Nothing here knows HTTP or the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imagefinder.encoders.base import Encoder, EncoderInfo
from imagefinder.images import ImageLimits, decode_image
from imagefinder.indexer import Indexer, IndexReport
from imagefinder.sources import SourceEntry
from imagefinder.stores.base import Hit, VectorStore


@dataclass(frozen=True)
class SearchResult:
    id: str
    score: float
    uri: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(self.score, 6), "uri": self.uri}


class ImageFinder:
    def __init__(
        self,
        encoder: Encoder,
        store: VectorStore,
        limits: ImageLimits,
        batch_size: int = 32,
        decode_workers: int = 2,
    ) -> None:
        self.encoder = encoder
        self.store = store
        self.limits = limits
        self._indexer = Indexer(encoder, store, limits, batch_size, decode_workers)

    @property
    def model(self) -> EncoderInfo:
        return self.encoder.info

    def index(
        self, entries: Iterable[SourceEntry], progress: Callable[[int], None] | None = None
    ) -> IndexReport:
        return self._indexer.index(entries, progress)

    def search_bytes(self, data: bytes, k: int, source: str = "<upload>") -> list[SearchResult]:
        """Decode (at reduced scale when the format allows), embed once, search."""
        image = decode_image(data, self.limits, source, self.encoder.min_short_side)
        pixels = self.encoder.preprocess(image)
        vector = self.encoder.embed_arrays(pixels[np.newaxis])[0]
        return [_result(hit) for hit in self.store.search(vector, k)]

    def remove(self, ids: Sequence[str]) -> int:
        return self.store.delete(ids)

    def count(self) -> int:
        return self.store.count()

    def close(self) -> None:
        self.store.close()


def _result(hit: Hit) -> SearchResult:
    return SearchResult(hit.id, hit.score, str(hit.payload.get("uri", "")))
