"""Build the real parts from `Settings`. The only place that knows which classes are the defaults."""

from __future__ import annotations

from imagefinder.blobs import BlobStore
from imagefinder.config import Settings
from imagefinder.encoders import Encoder, build_encoder
from imagefinder.fetch import FetchSettings, HttpFetcher
from imagefinder.images import ImageLimits
from imagefinder.service import ImageFinder
from imagefinder.stores.base import VectorStore
from imagefinder.stores.embedded import EmbeddedStore


def image_limits(settings: Settings) -> ImageLimits:
    return ImageLimits(max_pixels=settings.images.max_pixels, max_bytes=settings.images.max_bytes)


def open_store(settings: Settings) -> EmbeddedStore:
    return EmbeddedStore(
        settings.store_dir, exact_below=settings.store.exact_below, nprobe=settings.store.nprobe
    )


def build_fetcher(settings: Settings, allow_private: bool) -> HttpFetcher:
    """Collections listed by the operator (CLI) may live on private hosts; URLs sent by API
    clients may not, unless `api.allow_private_urls` says so (server-side request forgery)."""
    return HttpFetcher(
        FetchSettings(
            max_bytes=settings.images.max_bytes,
            timeout_s=settings.fetch.timeout_s,
            retries=settings.fetch.retries,
            allow_private=allow_private,
        )
    )


def build_configured_encoder(settings: Settings) -> Encoder:
    return build_encoder(settings.encoder, settings.model_cache_dir, settings.hf_pooling, settings.device)


def build_service(settings: Settings) -> ImageFinder:
    encoder = build_configured_encoder(settings)
    return service_for(settings, encoder, open_store(settings))


def service_for(settings: Settings, encoder: Encoder, store: VectorStore) -> ImageFinder:
    """A service over a given encoder and store (evaluation runs reuse one encoder for several
    temporary stores), configured from `settings`."""
    return ImageFinder(
        encoder,
        store,
        image_limits(settings),
        batch_size=settings.batch_size,
        decode_workers=settings.decode_workers,
        fetch_workers=settings.fetch.workers,
        fetcher=build_fetcher(settings, settings.api.allow_private_urls),
        blobs=BlobStore(settings.files_dir),
        rotated_queries=settings.rotated_queries,
        thumbnails=settings.home_dir / "thumbnails",
        whitening=settings.whitening,
        search_dims=settings.search_dims,
    )
