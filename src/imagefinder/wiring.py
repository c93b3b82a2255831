"""Build the real parts from `Settings`. The only place that knows which classes are the defaults."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagefinder.blobs import BlobStore
from imagefinder.collection import Collection
from imagefinder.config import Settings
from imagefinder.duplicates import DuplicateFinder
from imagefinder.duplicates_memory import FileScanMemory, ScanMemory
from imagefinder.encoders import Encoder, build_encoder
from imagefinder.errors import FetchError, ImageError, SourceError
from imagefinder.fetch import FetchSettings, HttpFetcher
from imagefinder.generations import Generations, IndexGenerations
from imagefinder.images import ImageLimits
from imagefinder.indexer import Indexer
from imagefinder.maintenance import Maintenance
from imagefinder.reindex import SERVE_WITH, Reindexer
from imagefinder.service import ImageFinder, QueryViews
from imagefinder.stores.base import Filter, Payload, VectorStore
from imagefinder.stores.embedded import EmbeddedStore
from imagefinder.tracking import MODEL_URI_PREFIX, MlflowTracker, NoTracker, Tracker
from imagefinder.training.data import ImageReader
from imagefinder.view_gate import encoder_key
from imagefinder.whitening import DEFAULT_DIMS, DEFAULT_POWER
from imagefinder.writers import ParallelWriter

if TYPE_CHECKING:
    from imagefinder.ray_engine import RayContext


def image_limits(settings: Settings) -> ImageLimits:
    return ImageLimits(max_pixels=settings.images.max_pixels, max_bytes=settings.images.max_bytes)


def open_store(settings: Settings) -> VectorStore:
    """The served generation of the configured index: a folder under `store.path`, or a Milvus
    collection when `store.uri` names one."""
    return open_store_at(served_location(settings), settings)


def served_location(settings: Settings) -> str:
    with closing(generations(settings)) as served:
        return served.current().location


def generations(settings: Settings) -> IndexGenerations:
    """The configured index's generations (see `imagefinder.generations`)."""
    return generations_at(settings.store.uri or str(settings.store_dir))


def generations_at(location: str) -> IndexGenerations:
    if location.startswith(("milvus://", "milvuss://")):
        from imagefinder.stores.milvus import parse_milvus_uri
        from imagefinder.stores.milvus_generations import MilvusGenerations

        return MilvusGenerations(*parse_milvus_uri(location))
    return Generations(Path(location).expanduser())


def serving_token(settings: Settings) -> Callable[[], str]:
    """What changes when another generation is switched in, for a server to follow it. Connects
    on first use, so a server starts (and says it is not ready) while Milvus is unreachable."""
    opened: list[IndexGenerations] = []

    def token() -> str:
        if not opened:
            opened.append(generations(settings))
        return opened[0].token()

    return token


def open_store_at(location: str, settings: Settings) -> VectorStore:
    """A store named by a folder path or a milvus:// URI (for `--store` and `migrate`)."""
    if location.startswith(("milvus://", "milvuss://")):
        from imagefinder.stores.milvus import MilvusStore, parse_milvus_uri

        server, collection = parse_milvus_uri(location)
        return MilvusStore(server, collection)
    return EmbeddedStore(
        Path(location).expanduser(), exact_below=settings.store.exact_below, nprobe=settings.store.nprobe
    )


def build_fetcher(settings: Settings, allow_private: bool) -> HttpFetcher:
    """Collections listed by the operator (CLI) may live on private hosts; URLs sent by API
    clients may not, unless `api.allow_private_urls` says so (server-side request forgery)."""
    return HttpFetcher(fetch_settings(settings, allow_private))


def fetch_settings(settings: Settings, allow_private: bool) -> FetchSettings:
    return FetchSettings(
        max_bytes=settings.images.max_bytes,
        timeout_s=settings.fetch.timeout_s,
        retries=settings.fetch.retries,
        allow_private=allow_private,
    )


def image_reader(settings: Settings) -> ImageReader:
    """Reads indexed images again from where the index recorded them (fine-tuning, reindex)."""
    return ImageReader(image_limits(settings), build_fetcher(settings, allow_private=True).fetch)


def duplicate_finder(
    service: ImageFinder, reader: ImageReader, memory: ScanMemory | None = None
) -> DuplicateFinder:
    """A duplicates scan over the service's store, whose second look reads images with `reader`;
    with `memory`, a later scan carries on from the last one (see `duplicates`)."""

    def look_again(
        image_id: str, payload: Payload, k: int, where: Filter | None
    ) -> list[tuple[str, float]] | None:
        try:
            data = reader.read(image_id, payload)
            found = service.search_all_views(data, image_id, k, exclude_id=image_id, where=where)
        except (SourceError, FetchError, ImageError):
            return None
        return [(result.id, result.score) for result in found]

    return DuplicateFinder(
        service.store, look_again, memory=memory, encoder=encoder_key(service.encoder.info)
    )


def scan_memory(settings: Settings) -> FileScanMemory:
    """Where `imagefinder duplicates` remembers its last scan of the served index: one file per
    index location (a new generation starts over)."""
    return FileScanMemory(scan_memory_path(settings, served_location(settings)))


def scan_memory_path(settings: Settings, location: str) -> Path:
    digest = hashlib.sha256(location.encode("utf-8")).hexdigest()[:16]
    return settings.home_dir / "scans" / f"duplicates-{digest}.npz"


def build_tracker(settings: Settings) -> Tracker:
    return mlflow_tracker(settings) if settings.tracking.enabled else NoTracker()


def mlflow_tracker(settings: Settings) -> MlflowTracker:
    """The configured tracking store: `tracking.uri`, else MLFLOW_TRACKING_URI, else a SQLite
    file in the data directory (no server needed)."""
    uri = settings.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    artifact_root = None
    if not uri:
        settings.home_dir.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{(settings.home_dir / 'mlflow.db').resolve()}"
        artifact_root = settings.home_dir / "mlartifacts"
    return MlflowTracker(uri, artifact_root, settings.tracking.experiment, settings.tracking.registered_model)


def build_configured_encoder(settings: Settings) -> Encoder:
    if settings.encoder.startswith(MODEL_URI_PREFIX):
        # A registered version: loaded from the registry even when tracking of runs is off.
        return mlflow_tracker(settings).load_encoder(settings.encoder)  # type: ignore[no-any-return]
    return build_encoder(settings.encoder, settings.model_cache_dir, settings.hf_pooling, settings.device)


def encoder_recipe(settings: Settings, store: VectorStore) -> Callable[[], Encoder]:
    """How to build the encoder that serves `store`, as a picklable call (the Ray engine's actors
    build theirs with it). Unless an encoder is asked for, an index that records the registered
    model serving it (a fine-tuned version switched in by `reindex`) is served with that model."""
    serve_with = store.get_meta(SERVE_WITH)
    if serve_with and "encoder" not in settings.model_fields_set:
        return functools.partial(_registered_encoder, settings, serve_with)
    return functools.partial(build_configured_encoder, settings)


def _registered_encoder(settings: Settings, uri: str) -> Encoder:
    return mlflow_tracker(settings).load_encoder(uri)  # type: ignore[no-any-return]


def build_service(settings: Settings, ray: RayContext | None = None) -> ImageFinder:
    """The service over the configured index; with `ray`, its index runs prepare and embed the
    images on that Ray cluster (see `imagefinder.ray_engine`)."""
    location = served_location(settings)
    store = open_store_at(location, settings)
    try:
        recipe = encoder_recipe(settings, store)
        encoder = recipe()
        indexer = None if ray is None else ray_indexer(settings, ray, encoder, store, recipe, location)
        return service_for(settings, encoder, store, indexer)
    except BaseException:
        store.close()
        raise


def ray_indexer(
    settings: Settings,
    ray: RayContext,
    encoder: Encoder,
    store: VectorStore,
    recipe: Callable[[], Encoder],
    location: str,
) -> Indexer:
    """An indexer whose preparation runs on the Ray cluster; a Milvus index is written by
    several writers at once (an embedded one by this process alone: it is one machine's file)."""
    from imagefinder.config import ApiSettings
    from imagefinder.ray_engine import RayPreparation, encoder_count

    limits = image_limits(settings)
    if isinstance(recipe, functools.partial):
        # The recipe travels to every worker: without the API's keys, which workers do not need.
        safe = settings.model_copy(update={"api": ApiSettings()})
        recipe = functools.partial(recipe.func, safe, *recipe.args[1:])
    preparation = RayPreparation(
        store,
        limits,
        fetch_settings(settings, allow_private=True),
        recipe,
        encoder.info,
        encoder.min_short_side,
        encoder_count(ray.options, ray.cluster),
        gpus_per_encoder=1.0 if ray.cluster.gpus >= 1 else 0.0,
        chunk=ray.options.chunk,
    )
    writer = None
    if location.startswith(("milvus://", "milvuss://")):
        writer = ParallelWriter(lambda: open_store_at(location, settings), encoder.info, MILVUS_WRITERS)
    return Indexer(encoder, store, limits, settings.batch_size, preparation=preparation, writer=writer)


# Upserts to Milvus in flight at once from an index run on Ray.
MILVUS_WRITERS = 4


def service_for(
    settings: Settings, encoder: Encoder, store: VectorStore, indexer: Indexer | None = None
) -> ImageFinder:
    """A service over a given encoder and store (evaluation runs reuse one encoder for several
    temporary stores), configured from `settings`; `indexer` replaces the in-process one."""
    return compose_service(
        encoder,
        store,
        image_limits(settings),
        batch_size=settings.batch_size,
        decode_workers=settings.decode_workers,
        fetch_workers=settings.fetch.workers,
        fetcher=build_fetcher(settings, settings.api.allow_private_urls),
        blobs=BlobStore(settings.files_dir),
        query_views=settings.query_views,
        thumbnails=settings.home_dir / "thumbnails",
        whitening=settings.whitening,
        search_dims=settings.search_dims,
        indexer=indexer,
    )


def compose_service(
    encoder: Encoder,
    store: VectorStore,
    limits: ImageLimits,
    *,
    batch_size: int = 32,
    decode_workers: int = 2,
    fetch_workers: int = 8,
    fetcher: HttpFetcher | None = None,
    blobs: BlobStore | None = None,
    query_views: QueryViews = "adaptive",
    thumbnails: Path | None = None,
    whitening: float = DEFAULT_POWER,
    search_dims: int = DEFAULT_DIMS,
    indexer: Indexer | None = None,
) -> ImageFinder:
    """The service and its parts over one encoder and store: the indexer, the collection of single
    images and the maintenance of the search space and provenance."""
    return ImageFinder(
        encoder,
        store,
        limits,
        indexer or Indexer(encoder, store, limits, batch_size, decode_workers, fetch_workers),
        Collection(encoder, store, limits, fetcher, blobs, thumbnails),
        Maintenance(
            encoder, store, whitening, search_dims, ImageReader(limits, fetcher.fetch if fetcher else None)
        ),
        query_views,
    )


def index_run_params(
    settings: Settings, service: ImageFinder, ray: RayContext | None = None
) -> dict[str, Any]:
    """What an index run records in MLflow: enough to rebuild the same index."""
    info = service.encoder.info
    engine: dict[str, Any] = {"engine": "local"}
    if ray is not None:
        from imagefinder.ray_engine import encoder_count

        engine = {
            "engine": "ray",
            "ray.address": ray.options.address or "local",
            "ray.cpus": ray.cluster.cpus,
            "ray.gpus": ray.cluster.gpus,
            "ray.encoders": encoder_count(ray.options, ray.cluster),
            "ray.chunk": ray.options.chunk,
        }
    return {
        **engine,
        "encoder.name": info.name,
        "encoder.version": info.version,
        "encoder.dim": info.dim,
        "encoder.preprocessing": info.preprocessing,
        "encoder.runtime": getattr(service.encoder, "runtime", "onnx"),
        "encoder.setting": settings.encoder,
        "store.kind": "milvus" if settings.store.uri else "embedded",
        "store.path": settings.store.uri or str(settings.store_dir),
        "store.exact_below": settings.store.exact_below,
        "store.nprobe": settings.store.nprobe,
        "search_dims": settings.search_dims,
        "whitening": settings.whitening,
        "query_views": settings.query_views,
        "batch_size": settings.batch_size,
        "decode_workers": settings.decode_workers,
        "fetch.workers": settings.fetch.workers,
        "fetch.timeout_s": settings.fetch.timeout_s,
        "fetch.retries": settings.fetch.retries,
        "images.max_pixels": settings.images.max_pixels,
        "images.max_bytes": settings.images.max_bytes,
    }


def build_reindexer(settings: Settings, current: VectorStore) -> Reindexer:
    """Re-embeds the collection of `current` into a new generation of the configured index."""
    return Reindexer(
        generations(settings),
        current,
        image_reader(settings),
        lambda location: open_store_at(location, settings),
        lambda encoder, store: service_for(settings, encoder, store),
        settings.store.keep_generations,
        lambda retired: forget_scan(settings, retired.location),
    )


def forget_scan(settings: Settings, location: str) -> None:
    """Remove what `imagefinder duplicates` remembers of the index at `location` (best effort:
    a file left behind is only a stale cache, never read for another location)."""
    try:
        scan_memory_path(settings, location).unlink(missing_ok=True)
    except OSError:
        pass
