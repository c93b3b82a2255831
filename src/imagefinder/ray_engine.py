"""The Ray engine: an index run's preparation spread over a Ray cluster (`index --engine ray`).

The driver (the `imagefinder index` process) lists the source, asks the store what it already
has, and keeps the run's rules (`indexer.Indexer`): duplicates, failures, batches, the writer. The
cluster does the heavy part, in chunks of items:

- a Ray *task* per chunk reads each image (a file on storage every node sees, or a URL), hashes
  it, and decodes it at the reduced size the encoder needs;
- an *actor pool* embeds the decoded chunks: each actor holds one encoder, built once from the
  same settings as the driver's (and refused if its name, version or dim differ), on a GPU when
  the cluster has GPUs;
- at most `in_flight` chunks are between the driver and the cluster (back-pressure), and results
  come back in the source's order, so "first wins" for duplicate content exactly as in the
  single-process run.

Actors are restarted and their calls retried by Ray when a worker dies; tasks are retried too.
Nothing is written by the cluster: a row is acknowledged only when the driver's writer has it.

Ray is an optional extra (`pip install imagefinder[ray]`), imported only here.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imagefinder.blobs import BlobStore
from imagefinder.encoders.base import Encoder, EncoderInfo
from imagefinder.errors import EngineError, FetchError, ImageError
from imagefinder.fetch import FetchSettings, HttpFetcher
from imagefinder.images import ImageLimits, content_hash, decode_image
from imagefinder.preparation import Failed, Outcome, Prepared, Unchanged, failure_category, known_outcome
from imagefinder.sources import SourceItem, read_file
from imagefinder.stores.base import Payload, VectorStore

# Ray's switch for "this machine only": every Ray process then binds to 127.0.0.1 instead of the
# machine's network address. Read when Ray is imported, so it is set before.
_LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray restarts a dead actor and retries a failed call this many times; a chunk that kills its
# actor every time (a native crash on one image) then stops the run instead of looping for ever.
RETRIES = 3
# How long the encoder actors may take to be placed and build their encoder.
READY_TIMEOUT_S = 600


@dataclass(frozen=True)
class RayOptions:
    # A running cluster (ray://host:10001, host:6379, or "auto"); None starts a local one.
    address: str | None = None
    # CPUs of the local cluster (None: this machine's cores); ignored with an address.
    cpus: int | None = None
    # Encoder actors (None: one per GPU of the cluster, else one per 4 CPUs, at least one).
    encoders: int | None = None
    chunk: int = 32  # images per task and per actor call


@dataclass(frozen=True)
class ClusterResources:
    cpus: float
    gpus: float


@dataclass(frozen=True)
class RayContext:
    """A connected cluster and how this run uses it."""

    options: RayOptions
    cluster: ClusterResources


@contextmanager
def ray_cluster(options: RayOptions) -> Iterator[RayContext]:
    """Connect to `options.address`, or start a local Ray on this machine bound to 127.0.0.1;
    disconnect (and stop the local one) at the end."""
    if options.address is None or _on_this_machine(options.address):
        os.environ.setdefault(_LOCAL_ONLY, "0")
    if options.address is None:
        os.environ.pop("RAY_ADDRESS", None)  # ray.init() would connect there instead
    try:
        import ray
        from ray._private import ray_constants
    except ImportError:
        raise EngineError("the Ray engine needs Ray: pip install 'imagefinder[ray]'") from None
    if options.address is None and ray_constants.ENABLE_RAY_CLUSTER:
        # Ray was imported before the switch was set: a local cluster would listen on the network.
        raise EngineError(f"Ray was imported before {_LOCAL_ONLY}=0 was set; set it before starting")
    try:
        if options.address is None:
            ray.init(
                num_cpus=options.cpus or len(os.sched_getaffinity(0)),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        else:
            ray.init(address=options.address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = options.address or "a local one"
        raise EngineError(f"cannot start or reach the Ray cluster ({where}): {exc}") from None
    try:
        resources = ray.cluster_resources()
        cluster = ClusterResources(float(resources.get("CPU", 0)), float(resources.get("GPU", 0)))
        yield RayContext(options, cluster)
    finally:
        ray.shutdown()


def _on_this_machine(address: str) -> bool:
    """A head on 127.0.0.1 (or localhost): Ray would otherwise turn that into this machine's
    network address, where a head bound to the loopback is not listening."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "::1", "[::1]")


def encoder_count(options: RayOptions, cluster: ClusterResources) -> int:
    """Encoder actors: as asked, but never more than the cluster's GPUs when they use GPUs (an
    actor that can never be placed would hold its chunks for ever)."""
    if cluster.gpus >= 1:
        return min(options.encoders or int(cluster.gpus), int(cluster.gpus))
    return options.encoders or max(1, int(cluster.cpus) // 4)


@dataclass(frozen=True)
class _Row:
    """What a task needs to read one item: plain data, so it pickles to any node."""

    uri: str
    remote: bool
    known_hash: str | None


class RayPreparation:
    """A `preparation.Preparation` on the connected Ray cluster (see the module's docstring)."""

    def __init__(
        self,
        store: VectorStore,
        limits: ImageLimits,
        fetch: FetchSettings,
        build_encoder: Callable[[], Encoder],
        info: EncoderInfo,
        min_short_side: int,
        encoders: int,
        gpus_per_encoder: float = 0.0,
        chunk: int = 32,
        in_flight: int | None = None,
    ) -> None:
        self._store = store
        self._limits = limits
        self._fetch = fetch
        self._build_encoder = build_encoder
        self._info = info
        self._min_short_side = min_short_side
        self._encoders = encoders
        self._gpus = gpus_per_encoder
        self._chunk = chunk
        self._in_flight = in_flight or 2 * encoders + 2

    def outcomes(
        self, items: Iterable[SourceItem], refresh: bool, keep: BlobStore | None
    ) -> Iterator[Outcome]:
        import ray

        prepare = ray.remote(num_cpus=1, max_retries=RETRIES)(_prepare_chunk)
        actor_class = ray.remote(
            num_cpus=0, num_gpus=self._gpus, max_restarts=RETRIES, max_task_retries=RETRIES
        )(_EncoderActor)
        actors = [actor_class.remote(self._build_encoder, self._info) for _ in range(self._encoders)]
        self._wait_until_ready(actors)
        keep_root = str(keep.root) if keep is not None else None
        pending: deque[tuple[list[Outcome | tuple[SourceItem, Payload | None]], Any]] = deque()
        slots: list[Outcome | tuple[SourceItem, Payload | None]] = []
        sent = 0

        def submit() -> None:
            nonlocal sent, slots
            rows = [_row(slot) for slot in slots if isinstance(slot, tuple)]
            ref = None
            if rows:
                decoded = prepare.remote(rows, self._limits, self._fetch, self._min_short_side, keep_root)
                ref = actors[sent % len(actors)].embed.remote(decoded)
                sent += 1
            pending.append((slots, ref))
            slots = []

        def receive() -> Iterator[Outcome]:
            chunk, ref = pending.popleft()
            results = iter(_get(ref) if ref is not None else [])
            for slot in chunk:
                yield _outcome(slot, next(results)) if isinstance(slot, tuple) else slot

        try:
            for item in items:
                try:
                    known = known_outcome(self._store, item, refresh)
                except Exception as exc:  # as in a local run: that item fails, the run goes on
                    known = Failed(item, "error", f"{type(exc).__name__}: {exc}")
                slots.append(known if isinstance(known, Prepared | Unchanged | Failed) else (item, known))
                if len(slots) >= 4 * self._chunk or sum(isinstance(s, tuple) for s in slots) >= self._chunk:
                    submit()
                    while len(pending) >= self._in_flight:
                        yield from receive()
            if slots:
                submit()
            while pending:
                yield from receive()
        finally:
            for actor in actors:
                ray.kill(actor)

    def _wait_until_ready(self, actors: list[Any]) -> None:
        """Every actor built its encoder, or a clear error: one that cannot be placed (no free GPU,
        a busy cluster) or whose node cannot build the encoder stops the run here."""
        import ray
        from ray.exceptions import GetTimeoutError

        try:
            ray.get([actor.ready.remote() for actor in actors], timeout=READY_TIMEOUT_S)
        except GetTimeoutError:
            raise EngineError(
                f"the Ray cluster did not start {len(actors)} encoder actor(s) within "
                f"{READY_TIMEOUT_S} s (not enough free CPUs or GPUs?)"
            ) from None
        except ray.exceptions.RayError as exc:
            raise EngineError(f"an encoder actor failed to start: {_cause(exc)}") from None


def _get(ref: Any) -> Any:
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        gave_up = f"the Ray cluster gave up on a chunk after {RETRIES} retries"
        raise EngineError(f"{gave_up}: {_cause(exc)}") from None


def _cause(exc: Exception) -> str:
    """The first line of what went wrong on the worker, without Ray's traceback."""
    cause = getattr(exc, "cause", None) or exc
    return str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__


def _row(slot: tuple[SourceItem, Payload | None]) -> _Row:
    item, known = slot
    known_hash = str(known["hash"]) if known is not None and "hash" in known else None
    return _Row(item.uri, item.remote, known_hash)


def _outcome(slot: tuple[SourceItem, Payload | None], result: dict[str, Any]) -> Outcome:
    item, known = slot
    if "failed" in result:
        category, reason = result["failed"]
        return Failed(item, category, reason)
    if "unchanged" in result:
        assert known is not None
        return Unchanged(item, result["unchanged"], known)
    return Prepared(
        item,
        result["hash"],
        result["size"],
        result["width"],
        result["height"],
        None,
        result["kept"],
        result["read_s"],
        result["decode_s"],
        vector=result["vector"],
    )


@lru_cache(maxsize=4)
def _fetcher(settings: FetchSettings) -> HttpFetcher:
    return HttpFetcher(settings)  # one connection pool per worker process


def _prepare_chunk(
    rows: list[_Row], limits: ImageLimits, fetch: FetchSettings, min_short_side: int, keep_root: str | None
) -> list[dict[str, Any]]:
    """A Ray task: read, hash and decode each row. One row's failure is that row's result."""
    keep = BlobStore(Path(keep_root)) if keep_root is not None else None
    results: list[dict[str, Any]] = []
    for row in rows:
        try:
            results.append(_prepare_row(row, limits, fetch, min_short_side, keep))
        except Exception as exc:  # a bug or an odd file must not stop the run
            results.append({"failed": ("error", f"{type(exc).__name__}: {exc}")})
    return results


def _prepare_row(
    row: _Row, limits: ImageLimits, fetch: FetchSettings, min_short_side: int, keep: BlobStore | None
) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        data = _fetcher(fetch).fetch(row.uri) if row.remote else read_file(Path(row.uri), fetch.max_bytes)
    except FetchError as exc:
        return {"failed": ("fetch", str(exc))}
    digest = content_hash(data)
    if digest == row.known_hash:
        return {"unchanged": digest}
    t1 = time.perf_counter()
    try:
        image = decode_image(data, limits, row.uri, min_short_side)
    except ImageError as exc:
        return {"failed": (failure_category(exc), exc.reason)}
    kept = str(keep.put(data, digest)) if keep is not None else None
    return {
        "hash": digest,
        "size": len(data),
        "width": image.width,
        "height": image.height,
        "kept": kept,
        "image": np.asarray(image),
        "read_s": t1 - t0,
        "decode_s": time.perf_counter() - t1,
    }


class _EncoderActor:
    """One encoder per actor, built once; embeds the decoded rows of a chunk."""

    def __init__(self, build_encoder: Callable[[], Encoder], expected: EncoderInfo) -> None:
        self._encoder = build_encoder()
        if self._encoder.info != expected:
            raise EngineError(
                f"a Ray worker built the encoder {self._encoder.info}, not the driver's {expected}: "
                "install the same ImageFinder and model on every node"
            )

    def ready(self) -> bool:
        return True

    def embed(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        decoded, pixels = [], []
        for result in results:
            if "image" not in result:
                continue
            image = Image.fromarray(result.pop("image"))
            try:
                pixels.append(self._encoder.preprocess(image))
            except ImageError as exc:
                result.clear()
                result["failed"] = (failure_category(exc), exc.reason)
            except Exception as exc:  # one image the preprocessing refuses fails alone, as locally
                result.clear()
                result["failed"] = ("error", f"{type(exc).__name__}: {exc}")
            else:
                decoded.append(result)
        if decoded:
            t1 = time.perf_counter()
            for result, vector in zip(decoded, self._encoder.embed_arrays(np.stack(pixels)), strict=True):
                result["vector"] = vector
                result["decode_s"] += (t1 - t0) / len(decoded)
        return results
