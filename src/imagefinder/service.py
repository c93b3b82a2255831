"""The use cases over the parts: index a source, add or remove one image, search, describe.

`ImageFinder` receives its parts (encoder, store, fetcher, blob store) through its constructor;
`wiring.build_service` builds the real ones from `Settings`. Nothing here knows HTTP or the CLI.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagefinder.blobs import BlobStore
from imagefinder.calibration import copy_threshold
from imagefinder.encoders.base import Encoder, EncoderInfo, embed_images
from imagefinder.errors import (
    DuplicateImageError,
    EncoderMismatchError,
    ImageFinderError,
    InvalidIdError,
    TextSearchUnsupportedError,
    UnknownIdError,
)
from imagefinder.fetch import HttpFetcher
from imagefinder.ids import id_problem
from imagefinder.images import ImageLimits, content_hash, decode_image
from imagefinder.indexer import Indexer, IndexReport, image_payload
from imagefinder.search_space import SearchSpace
from imagefinder.sources import SourceEntry
from imagefinder.stores.base import Filter, Hit, Payload, VectorStore
from imagefinder.tracking import ModelRecord
from imagefinder.views import extra_views, view_source
from imagefinder.whitening import DEFAULT_DIMS, DEFAULT_POWER, REGULARISATION, fit_whitening

THUMBNAIL_SIDE = 256
# Up to this size the whitening is learned again after every index run (seconds at most);
# beyond it, only when the collection has grown or shrunk by a quarter since the last fit, since
# a new projection means re-projecting and re-indexing every stored vector. The fit and the copy
# threshold use a random sample of this many vectors.
REFIT_ALWAYS_UP_TO = 50_000
FIT_SAMPLE = 50_000

# "single": one encoder run per query. "adaptive": a second pass with extra views when the first
# finds no copy (see imagefinder.views).
QueryViews = Literal["single", "adaptive"]


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


@dataclass(frozen=True)
class AddResult:
    id: str
    created: bool
    # The id held other bytes before, now replaced by these.
    replaced: bool = False


@dataclass(frozen=True)
class FileLocation:
    """Where the original of an image is: a local file to serve, or a URL to redirect to."""

    path: Path | None = None
    url: str | None = None


class ImageFinder:
    def __init__(
        self,
        encoder: Encoder,
        store: VectorStore,
        limits: ImageLimits,
        batch_size: int = 32,
        decode_workers: int = 2,
        fetch_workers: int = 8,
        fetcher: HttpFetcher | None = None,
        blobs: BlobStore | None = None,
        query_views: QueryViews = "adaptive",
        thumbnails: Path | None = None,
        whitening: float = DEFAULT_POWER,
        search_dims: int = DEFAULT_DIMS,
    ) -> None:
        self.encoder = encoder
        self.store = store
        self.limits = limits
        self._fetcher = fetcher
        self._blobs = blobs
        self._add_lock = threading.Lock()
        self._query_views = query_views
        self._thumbnails = thumbnails
        self._whitening = whitening
        self._search_dims = search_dims
        self._indexer = Indexer(encoder, store, limits, batch_size, decode_workers, fetch_workers)
        self._check_registered_model()

    @property
    def model(self) -> EncoderInfo:
        return self.encoder.info

    # -- provenance (MLflow) ---------------------------------------------------------------

    def provenance(self) -> dict[str, str | None]:
        """Which registered model version built this index, and the MLflow run that built it."""
        recorded = recorded_provenance(self.store)
        served = getattr(self.encoder, "registered", None)
        recorded["served_model_uri"] = served.uri if served is not None else None
        return recorded

    def record_provenance(self, run_id: str | None, model: ModelRecord | None) -> None:
        """Remember the index run and the registered encoder version with the index."""
        if run_id:
            self.store.set_meta("index_run_id", run_id)
        if model is not None:
            self.store.set_meta("model_uri", model.uri)
            self.store.set_meta("model_registry_version", model.version)
            self.store.set_meta("model_sha256", model.sha256)

    def _check_registered_model(self) -> None:
        """A registered version asked for by URI must be the one the index was built with: the
        same name/version/dim is checked by the store, the same ONNX file (SHA-256) here."""
        served = getattr(self.encoder, "registered", None)
        built_sha = self.store.get_meta("model_sha256")
        if served is None or not built_sha or served.sha256 == built_sha:
            return
        raise EncoderMismatchError(
            f"the index was built by {self.store.get_meta('model_uri')} (sha256 {built_sha[:12]}), "
            f"not by {served.uri} (sha256 {served.sha256[:12]}); serve it with the model that built "
            "it or rebuild the index"
        )

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
            self.refit()
            self.store.optimise()
        return report

    def refit(self, force: bool = False) -> None:
        """Learn the whitening from the collection as it is now (see REFIT_ALWAYS_UP_TO), then the
        copy threshold in the whitened space, and make them the store's search space. After each
        index run; single API adds use the current fit."""
        space = self.store.search_space
        n = self.store.count()
        drifted = not (space.fitted_on / 1.25 <= n <= space.fitted_on * 1.25)
        # A changed setting (or way of fitting) refits a large collection too, not only drift.
        fitted_with = f"power={self._whitening} dims={self._search_dims} regularisation={REGULARISATION}"
        sample = self.store.vectors(limit=FIT_SAMPLE)
        if force or n <= REFIT_ALWAYS_UP_TO or drifted or space.fitted_with != fitted_with:
            space = space.fitted(fit_whitening(sample, self._whitening, self._search_dims), n, fitted_with)
        self.store.set_search_space(space.calibrated(copy_threshold(space.project(sample))))

    @property
    def search_space(self) -> SearchSpace:
        return self.store.search_space

    @property
    def copy_threshold(self) -> float:
        return self.store.search_space.copy_threshold

    def calibrate(self) -> float:
        """Recompute the "is this a copy?" threshold from the collection (see `calibration`)."""
        space = self.store.search_space
        space = space.calibrated(copy_threshold(space.project(self.store.vectors(limit=FIT_SAMPLE))))
        self.store.set_search_space(space)
        return space.copy_threshold

    # -- single images ---------------------------------------------------------------------

    def add_bytes(
        self,
        data: bytes,
        image_id: str | None = None,
        uri: str | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> AddResult:
        """Add one image. Without an id, its content hash is the id. Adding bytes that are
        already indexed returns the existing id when no id was asked for, and refuses otherwise."""
        digest = content_hash(data)
        image_id = image_id or digest
        validate_id(image_id)
        image = decode_image(data, self.limits, uri or image_id, self.encoder.min_short_side)
        vector = self.encoder.embed_arrays(self.encoder.preprocess(image)[np.newaxis])
        added_at = datetime.now(UTC).isoformat(timespec="seconds")
        payload = image_payload(self.model, digest, len(data), image.size, added_at, collection="api")
        if meta:
            payload["meta"] = dict(meta)
        # Check and write under one lock: two concurrent adds of the same bytes must not both win.
        with self._add_lock:
            existing = self.store.find_by_hash(digest)
            if existing is not None:
                if existing == image_id:
                    return AddResult(existing, created=False)
                raise DuplicateImageError(existing)
            if self._blobs is not None:
                payload["file"] = str(self._blobs.put(data, digest))
            payload["uri"] = uri or payload.get("file", "")
            previous = self.store.get(image_id)
            self.store.upsert([image_id], vector, [payload])
        return AddResult(image_id, created=previous is None, replaced=previous is not None)

    def add_url(self, url: str, image_id: str | None = None) -> AddResult:
        return self.add_bytes(self.fetch_url(url), image_id, uri=url)

    def get(self, image_id: str) -> Payload:
        payload = self.store.get(image_id)
        if payload is None:
            raise UnknownIdError(image_id)
        return payload

    def delete(self, image_id: str) -> None:
        if self.store.delete([image_id]) == 0:
            raise UnknownIdError(image_id)

    def remove(self, ids: Sequence[str]) -> int:
        return self.store.delete(ids)

    def file_location(self, image_id: str) -> FileLocation:
        payload = self.get(image_id)
        for key in ("file", "uri"):
            value = str(payload.get(key) or "")
            if value and not urlparse(value).scheme and Path(value).is_file():
                return FileLocation(path=Path(value))
        uri = str(payload.get("uri") or "")
        if urlparse(uri).scheme in ("http", "https"):
            return FileLocation(url=uri)
        raise UnknownIdError(image_id)  # indexed, but its original is gone

    def browse(self, offset: int, limit: int) -> list[tuple[str, Payload]]:
        return self.store.page(offset, limit)

    def thumbnail(self, image_id: str) -> Path:
        """A small JPEG of the image (long side 256 px), made once and cached by content hash, so
        a gallery never ships multi-megabyte originals. Only for originals on this machine."""
        payload = self.get(image_id)
        location = self.file_location(image_id)
        if location.path is None or self._thumbnails is None:
            raise UnknownIdError(image_id)
        digest = str(payload.get("hash") or content_hash(location.path.read_bytes()))
        target = self._thumbnails / digest[:2] / f"{digest}.jpg"
        if target.exists():
            return target
        image = decode_image(location.path.read_bytes(), self.limits, image_id, THUMBNAIL_SIDE)
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{threading.get_ident()}.tmp")
        image.save(partial, "JPEG", quality=85)
        os.replace(partial, target)  # whole or not at all, even with two requests at once
        return target

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
    ) -> list[SearchResult]:
        """Search with the plain query's `vector`; with `views` (default: the service's
        `query_views`) "adaptive", when that finds no copy, search again with the extra views of
        `imagefinder.views` (7 more encoder runs)."""
        threshold = self.copy_threshold
        hits = self._hits(vector, k, where)
        # Settled: a copy was found, or there is nothing to find (an empty collection, a filter
        # that matches nothing), where more views cannot help.
        settled = not hits or hits[0].score >= threshold
        if (views or self._query_views) == "adaptive" and not settled:
            images, penalties = zip(*extra_views(query.image), strict=True)
            vectors = np.concatenate([vector[None], embed_images(self.encoder, images)])
            hits = self._hits(vectors, k, where, (0.0, *penalties))
        return _results(hits, k, min_score, None, threshold)

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
        return getattr(self.encoder, "embed_texts", None) is not None

    def search_text(
        self, text: str, k: int, min_score: float | None = None, where: Filter | None = None
    ) -> list[SearchResult]:
        """Images matching a description ("red bicycle"), for CLIP-family encoders. The copy
        flag is for image queries, so text results never carry it."""
        embed_texts = getattr(self.encoder, "embed_texts", None)
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

    def search_id(
        self,
        image_id: str,
        k: int,
        min_score: float | None = None,
        exclude_self: bool = True,
        where: Filter | None = None,
    ) -> list[SearchResult]:
        """ "More like this": reuses the stored vector, no image is decoded or embedded."""
        vector = self.store.get_vector(image_id)
        if vector is None:
            raise UnknownIdError(image_id)
        return self.search_vector(vector, k, min_score, image_id if exclude_self else None, where)

    def fetch_url(self, url: str) -> bytes:
        """Download a query image with the service's fetcher (and its address policy)."""
        return self._fetch(url)

    def count(self) -> int:
        return self.store.count()

    def close(self) -> None:
        self.store.close()

    def _fetch(self, url: str) -> bytes:
        if self._fetcher is None:
            raise ImageFinderError("this service fetches no URLs")
        return self._fetcher.fetch(url)


# What an index records about the model and the MLflow run that built it (see record_provenance).
PROVENANCE_KEYS = ("model_uri", "model_registry_version", "model_sha256", "index_run_id")


def recorded_provenance(store: VectorStore) -> dict[str, str | None]:
    return {key: store.get_meta(key) for key in PROVENANCE_KEYS}


def validate_id(image_id: str) -> None:
    problem = id_problem(image_id)
    if problem:
        raise InvalidIdError(problem)


def _results(
    hits: Sequence[Hit], k: int, min_score: float | None, exclude_id: str | None, copy_threshold: float
) -> list[SearchResult]:
    kept = (hit for hit in hits if hit.id != exclude_id and (min_score is None or hit.score >= min_score))
    return [_result(hit, copy_threshold) for hit in kept][:k]


def _result(hit: Hit, copy_threshold: float) -> SearchResult:
    return SearchResult(hit.id, hit.score, str(hit.payload.get("uri", "")), hit.score >= copy_threshold)
