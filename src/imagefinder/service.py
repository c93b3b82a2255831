"""Searching an index, and indexing a whole source into it.

`ImageFinder` receives its parts through its constructor (the encoder, the store, the indexer
that reads -> embeds -> writes a source, the `collection.Collection` of single images and the
`maintenance.Maintenance` of the search space and provenance); `wiring.compose_service` builds
them. Nothing here knows HTTP or the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagefinder.blobs import BlobStore
from imagefinder.collection import Collection
from imagefinder.encoders.base import Encoder, EncoderInfo, embed_images
from imagefinder.errors import TextSearchUnsupportedError, UnknownIdError
from imagefinder.images import ImageLimits, decode_image
from imagefinder.indexer import Indexer, IndexReport
from imagefinder.maintenance import Maintenance
from imagefinder.sources import SourceEntry
from imagefinder.stores.base import Filter, Hit, VectorStore
from imagefinder.views import extra_views, view_source

# "single": one encoder run per query. "adaptive": a second pass with extra views when the first
# finds no copy and the view gate says the query looks framed, pasted or turned (see
# imagefinder.views and imagefinder.view_gate). "thorough": the second pass whenever the first
# finds no copy.
QueryViews = Literal["single", "adaptive", "thorough"]


@dataclass(frozen=True)
class PreparedQuery:
    """A query's model input (1, 3, h, w) for the first search pass, and the image (at most
    `views.VIEW_SOURCE_SIDE` on its short side) that a second pass cuts its views from."""

    image: Image.Image
    pixels: NDArray[np.float32]


@dataclass(frozen=True)
class SearchResult:
    id: str
    score: float
    uri: str
    is_copy: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(self.score, 6), "uri": self.uri, "is_copy": self.is_copy}


class ImageFinder:
    """The use cases over the parts: index a source, search, and the collection and maintenance
    parts (`collection`, `maintenance`) that `wiring.compose_service` builds beside it."""

    def __init__(
        self,
        encoder: Encoder,
        store: VectorStore,
        limits: ImageLimits,
        indexer: Indexer,
        collection: Collection,
        maintenance: Maintenance,
        query_views: QueryViews = "adaptive",
    ) -> None:
        self.encoder = encoder
        self.store = store
        self.limits = limits
        self.collection = collection
        self.maintenance = maintenance
        self._indexer = indexer
        self._query_views = query_views
        maintenance.check_registered_model()

    @property
    def model(self) -> EncoderInfo:
        return self.encoder.info

    # -- collections -----------------------------------------------------------------------

    def index(
        self,
        entries: Iterable[SourceEntry],
        progress: Callable[[int], None] | None = None,
        on_commit: Callable[[Sequence[str]], None] | None = None,
        prune_source: str | None = None,
        refresh: bool = False,
        keep_files: BlobStore | None = None,
    ) -> IndexReport:
        report = self._indexer.index(entries, progress, on_commit, prune_source, refresh, keep_files)
        if report.indexed or report.pruned:
            self.maintenance.refit()
            self.store.optimise()
        return report

    @property
    def copy_threshold(self) -> float:
        return self.store.search_space.copy_threshold

    # -- search ----------------------------------------------------------------------------

    def prepare(self, data: bytes, source: str = "<upload>") -> PreparedQuery:
        """Decode (at reduced scale when the format allows) and preprocess one query image."""
        image = decode_image(data, self.limits, source, self.encoder.min_short_side)
        return PreparedQuery(view_source(image), self.encoder.preprocess(image)[None])

    def embed_prepared(self, pixels: Sequence[NDArray[np.float32]]) -> NDArray[np.float32]:
        """Prepared queries' pixels -> (queries, dim), in one encoder call for all of them (the
        API's micro-batcher gathers concurrent queries here)."""
        return self.encoder.embed_arrays(np.concatenate(pixels))

    def search_prepared(
        self,
        query: PreparedQuery,
        vector: NDArray[np.float32],
        k: int,
        min_score: float | None = None,
        where: Filter | None = None,
        views: QueryViews | None = None,
        on_encoder_batch: Callable[[int], None] | None = None,
    ) -> list[SearchResult]:
        """Search with the plain query's `vector`; when that finds no copy, with `views` (default:
        the service's `query_views`) "thorough", or "adaptive" when the view gate wants it, search
        again with the extra views of `imagefinder.views` (7 more encoder runs, in one batch told
        to `on_encoder_batch`)."""
        space = self.store.search_space
        hits = self._hits(vector, k, where)
        # Settled: the best match scores like a copy by the collection's own look-alikes (the
        # in-collection threshold, lower than the copy flag's), or there is nothing to find (an
        # empty collection, a filter that matches nothing), where more views cannot help.
        settled = not hits or hits[0].score >= space.in_collection_threshold
        if not settled and self._second_pass_wanted(views or self._query_views, vector):
            vectors, penalties = self._with_extra_views(query, vector)
            if on_encoder_batch is not None:
                on_encoder_batch(len(vectors) - 1)
            hits = self._hits(vectors, k, where, penalties)
        return _results(hits, k, min_score, None, space.copy_threshold)

    def _second_pass_wanted(self, views: QueryViews, vector: NDArray[np.float32]) -> bool:
        if views != "adaptive":
            return views == "thorough"
        gate = self.store.search_space.gate_for(self.model)
        return gate is None or gate.wants_views(vector)

    def search_vector(
        self,
        vector: NDArray[np.float32],
        k: int,
        min_score: float | None = None,
        exclude_id: str | None = None,
        where: Filter | None = None,
    ) -> list[SearchResult]:
        """The k best matches of a (dim,) vector, best first, scoring at least `min_score`,
        without `exclude_id`, among images whose payload matches `where`."""
        hits = self._hits(vector, k + (1 if exclude_id is not None else 0), where)
        return _results(hits, k, min_score, exclude_id, self.copy_threshold)

    def _hits(
        self,
        vector: NDArray[np.float32],
        k: int,
        where: Filter | None,
        penalties: Sequence[float] | None = None,
    ) -> list[Hit]:
        """Hits of a (dim,) vector, or of (views, dim) views scored by their best view less its
        penalty."""
        view_penalties = np.asarray(penalties, dtype=np.float32) if penalties is not None else None
        return self.store.search(vector, k, view_penalties, where or None)

    @property
    def supports_text(self) -> bool:
        return self.encoder.embed_texts is not None

    def search_text(
        self, text: str, k: int, min_score: float | None = None, where: Filter | None = None
    ) -> list[SearchResult]:
        """Images matching a description ("red bicycle"), for CLIP-family encoders. The copy
        flag is for image queries, so text results never carry it."""
        embed_texts = self.encoder.embed_texts
        if embed_texts is None:
            raise TextSearchUnsupportedError(
                f"text search needs a CLIP-family model; this index uses {self.model.name}"
            )
        vector = embed_texts([text])[0]
        return [replace(r, is_copy=False) for r in self.search_vector(vector, k, min_score, where=where)]

    def search_bytes(
        self,
        data: bytes,
        k: int,
        source: str = "<upload>",
        min_score: float | None = None,
        where: Filter | None = None,
        views: QueryViews | None = None,
    ) -> list[SearchResult]:
        query = self.prepare(data, source)
        return self.search_prepared(query, self.embed_prepared([query.pixels])[0], k, min_score, where, views)

    def search_all_views(
        self, data: bytes, source: str, k: int, exclude_id: str | None = None, where: Filter | None = None
    ) -> list[SearchResult]:
        """An image searched with its plain view and every extra view at once (a duplicates
        scan's second look at an image that found no copy by its stored vector)."""
        query = self.prepare(data, source)
        vectors, penalties = self._with_extra_views(query, self.embed_prepared([query.pixels])[0])
        hits = self._hits(vectors, k + (1 if exclude_id is not None else 0), where, penalties)
        return _results(hits, k, None, exclude_id, self.copy_threshold)

    def _with_extra_views(
        self, query: PreparedQuery, vector: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], tuple[float, ...]]:
        """The plain view's `vector` and the extra views' (one encoder call), with each view's
        penalty (none for the plain view)."""
        images, penalties = zip(*extra_views(query.image), strict=True)
        return np.concatenate([vector[None], embed_images(self.encoder, images)]), (0.0, *penalties)

    def search_id(
        self,
        image_id: str,
        k: int,
        min_score: float | None = None,
        exclude_self: bool = True,
        where: Filter | None = None,
    ) -> list[SearchResult]:
        """ "More like this": reuses the stored vector, no image is decoded or embedded. Two
        images of the collection: `is_copy` by the duplicate threshold (see `calibration`)."""
        vector = self.store.get_vector(image_id)
        if vector is None:
            raise UnknownIdError(image_id)
        exclude_id = image_id if exclude_self else None
        hits = self._hits(vector, k + (1 if exclude_id is not None else 0), where)
        return _results(hits, k, min_score, exclude_id, self.store.search_space.in_collection_threshold)

    def count(self) -> int:
        return self.store.count()

    def close(self) -> None:
        self._indexer.close()
        self.store.close()


def _results(
    hits: Sequence[Hit], k: int, min_score: float | None, exclude_id: str | None, copy_threshold: float
) -> list[SearchResult]:
    kept = (hit for hit in hits if hit.id != exclude_id and (min_score is None or hit.score >= min_score))
    return [_result(hit, copy_threshold) for hit in kept][:k]


def _result(hit: Hit, copy_threshold: float) -> SearchResult:
    return SearchResult(hit.id, hit.score, str(hit.payload.get("uri", "")), hit.score >= copy_threshold)
