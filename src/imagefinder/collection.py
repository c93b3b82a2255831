"""The collection as its users meet it one image at a time: add (bytes or a URL), look up,
delete, browse, and the originals and thumbnails behind the gallery.

Adding embeds the image with the index's encoder and writes it through the store; a whole
source (a folder, a CSV) goes through `indexer.Indexer` instead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from imagefinder.blobs import BlobStore
from imagefinder.encoders.base import Encoder
from imagefinder.errors import DuplicateImageError, ImageFinderError, InvalidIdError, UnknownIdError
from imagefinder.fetch import HttpFetcher
from imagefinder.ids import id_problem
from imagefinder.images import ImageLimits, content_hash, decode_image
from imagefinder.indexer import image_payload
from imagefinder.stores.base import Payload, VectorStore

THUMBNAIL_SIDE = 256


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


class Collection:
    def __init__(
        self,
        encoder: Encoder,
        store: VectorStore,
        limits: ImageLimits,
        fetcher: HttpFetcher | None = None,
        blobs: BlobStore | None = None,
        thumbnails: Path | None = None,
    ) -> None:
        self._encoder = encoder
        self._store = store
        self._limits = limits
        self._fetcher = fetcher
        self._blobs = blobs
        self._thumbnails = thumbnails
        self._add_lock = threading.Lock()

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
        image = decode_image(data, self._limits, uri or image_id, self._encoder.min_short_side)
        vector = self._encoder.embed_arrays(self._encoder.preprocess(image)[np.newaxis])
        added_at = datetime.now(UTC).isoformat(timespec="seconds")
        payload = image_payload(self._encoder.info, digest, len(data), image.size, added_at, collection="api")
        if meta:
            payload["meta"] = dict(meta)
        # Check and write under one lock: two concurrent adds of the same bytes must not both win.
        with self._add_lock:
            existing = self._store.find_by_hash(digest)
            if existing is not None:
                if existing == image_id:
                    return AddResult(existing, created=False)
                raise DuplicateImageError(existing)
            if self._blobs is not None:
                payload["file"] = str(self._blobs.put(data, digest))
            payload["uri"] = uri or payload.get("file", "")
            previous = self._store.get(image_id)
            self._store.upsert([image_id], vector, [payload])
        return AddResult(image_id, created=previous is None, replaced=previous is not None)

    def add_url(self, url: str, image_id: str | None = None) -> AddResult:
        return self.add_bytes(self.fetch_url(url), image_id, uri=url)

    def get(self, image_id: str) -> Payload:
        payload = self._store.get(image_id)
        if payload is None:
            raise UnknownIdError(image_id)
        return payload

    def delete(self, image_id: str) -> None:
        """Remove the image, and the original and thumbnail kept for it when no other image has
        the same bytes. Under the add lock: an add of the same bytes meanwhile would reuse the
        kept original that this would remove."""
        with self._add_lock:
            payload = self._store.get(image_id)
            if payload is None or self._store.delete([image_id]) == 0:
                raise UnknownIdError(image_id)
            digest = str(payload.get("hash") or "")
            if not digest or self._store.find_by_hash(digest) is not None:
                return
            kept = Path(str(payload.get("file") or ""))
            if self._blobs is not None and payload.get("file") and self._blobs.holds(kept):
                kept.unlink(missing_ok=True)
            if self._thumbnails is not None:
                (self._thumbnails / digest[:2] / f"{digest}.jpg").unlink(missing_ok=True)

    def remove(self, ids: Sequence[str]) -> int:
        return self._store.delete(ids)

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
        return self._store.page(offset, limit)

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
        image = decode_image(location.path.read_bytes(), self._limits, image_id, THUMBNAIL_SIDE)
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{threading.get_ident()}.tmp")
        image.save(partial, "JPEG", quality=85)
        os.replace(partial, target)  # whole or not at all, even with two requests at once
        return target

    def fetch_url(self, url: str) -> bytes:
        """Download a query image with the service's fetcher (and its address policy)."""
        return self._fetch(url)

    def _fetch(self, url: str) -> bytes:
        if self._fetcher is None:
            raise ImageFinderError("this service fetches no URLs")
        return self._fetcher.fetch(url)


def validate_id(image_id: str) -> None:
    problem = id_problem(image_id)
    if problem:
        raise InvalidIdError(problem)
