"""The scale-out store: the same contract as the embedded store, on a Milvus server.

Milvus's client API is the same against a standalone server and a sharded, replicated cluster,
so `--store milvus://host:port/collection` serves a laptop and a cluster alike. One collection
holds the images (id, content hash, vector, payload as JSON); a small `imagefinder_meta`
collection holds what each index records about itself (encoder, schema version, user facts).

- Consistency level Session: a search waits until every write this process made is visible, so
  an image added through the API is found by the next search, and a search with no write of its
  own does not wait. Strong also waits for writes of other processes, but it makes *every*
  search wait for Milvus's time tick: 400 ms per query measured on this machine with Milvus
  2.3.5, against a few ms with Session (bench/results/index.json). Writes of another process
  (a CLI run while the server serves) become visible within about a second.
- Index: HNSW on inner product (the vectors are L2-normalised, so scores are cosines), M=16,
  efConstruction=200, ef at search max(64, 2k); configurable.
- No whitening: Milvus searches the stored vectors as they are, so the collection-learned
  projection of the embedded store is not applied here (see README).
- Writes go in batches; transient errors (server restarting, timeouts) are retried with backoff;
  a server that stays unreachable raises StoreUnavailableError naming the URI (API: 503).

pymilvus is imported only in this module.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from imagefinder.encoders.base import EncoderInfo
from imagefinder.errors import (
    InvalidFilterError,
    StoreError,
    StoreUnavailableError,
    StoreVersionError,
)
from imagefinder.stores.base import (
    Filter,
    Hit,
    Payload,
    checked_upsert,
    refuse_other_encoder,
    same_encoder,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# One small collection per server holds what each index records about itself (keys are
# "<collection>/<key>"): creating a collection costs Milvus seconds, so not one per index.
META_COLLECTION = "imagefinder_meta"
ID_MAX_BYTES = 2048  # ids are at most 512 characters, up to 4 bytes each in UTF-8
_FIELD_NAME = re.compile(r"^[A-Za-z0-9_ .-]{1,64}$")
_HEX = re.compile(r"^[0-9a-f]{1,128}$")
T = TypeVar("T")


def parse_milvus_uri(uri: str) -> tuple[str, str]:
    """milvus://host:port/collection -> ("http://host:port", "collection")."""
    match = re.fullmatch(r"milvus(s?)://([^/]+)/([A-Za-z_][A-Za-z0-9_]{0,200})", uri)
    if match is None:
        raise StoreError(f"{uri!r}: expected milvus://host:port/collection (collection: letters, digits, _)")
    scheme = "https" if match.group(1) else "http"
    return f"{scheme}://{match.group(2)}", match.group(3)


class MilvusStore:
    def __init__(
        self,
        server: str,
        collection: str,
        index_params: dict[str, Any] | None = None,
        ef: int = 64,
        consistency: str = "Session",
        batch_size: int = 1000,
        retries: int = 3,
        timeout_s: float = 10.0,
    ) -> None:
        self.server = server
        self.collection = collection
        self.path = f"{server}/{collection}"  # what `imagefinder info` shows as the location
        self._index_params = index_params or {"M": 16, "efConstruction": 200}
        self._ef = ef
        self._consistency = consistency
        # pymilvus advances the Session timestamp on inserts and upserts but not on deletes: the
        # first read after a delete runs at Strong, so that the deletion is visible to it.
        self._deleted_since_read = False
        self._batch_size = batch_size
        self._retries = retries
        self._timeout_s = timeout_s
        self._meta_name = META_COLLECTION
        try:
            from pymilvus import MilvusClient

            self._client = MilvusClient(uri=server, timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001  (pymilvus raises several kinds on connect)
            raise StoreUnavailableError(f"cannot reach Milvus at {server}: {_first_line(exc)}") from None
        self._ensure_meta_collection()
        self._check_schema_version()
        self._encoder = self._read_encoder()
        if self._encoder is not None:
            self._ensure_collection(self._encoder.dim)

    # -- encoder binding -------------------------------------------------------------------

    @property
    def encoder_info(self) -> EncoderInfo | None:
        return self._encoder

    def bind_encoder(self, info: EncoderInfo) -> None:
        current = self._encoder
        if same_encoder(current, info):
            return
        if current is not None and self.count() > 0:
            refuse_other_encoder(current, info, self.path, "another collection")
        if self._call(self._client.has_collection, self.collection):
            self._call(self._client.drop_collection, self.collection)
        self._ensure_collection(info.dim)
        for key, value in (
            ("encoder_name", info.name),
            ("encoder_version", info.version),
            ("encoder_dim", str(info.dim)),
            ("encoder_preprocessing", info.preprocessing),
        ):
            self._put_meta(key, value)
        self._encoder = info

    # -- writes ----------------------------------------------------------------------------

    def upsert(self, ids: Sequence[str], vectors: NDArray[np.float32], payloads: Sequence[Payload]) -> None:
        vectors = checked_upsert(self._encoder, ids, vectors, payloads)
        rows = [
            {
                "id": image_id,
                "hash": str(payload.get("hash") or ""),
                "vector": vector.tolist(),
                "payload": dict(payload),
            }
            for image_id, vector, payload in zip(ids, vectors, payloads, strict=True)
        ]
        # Batches bound the size of one request; each call returns once Milvus has logged the
        # rows, which is the back-pressure on a bulk ingestion.
        for start in range(0, len(rows), self._batch_size):
            self._call(self._client.upsert, self.collection, rows[start : start + self._batch_size])

    def delete(self, ids: Sequence[str]) -> int:
        unique = list(dict.fromkeys(ids))
        if not unique or self._encoder is None:
            return 0
        present = [row["id"] for row in self._call(self._get, ids=unique, output_fields=["id"])]
        if present:
            self._call(self._client.delete, self.collection, ids=present)
            self._deleted_since_read = True
        return len(present)

    def optimise(self) -> None:
        """After a bulk change: seal the growing segments, so Milvus indexes them (searches of a
        growing segment scan it) and they are persisted in object storage, not only its log."""
        self._call(self._client.flush, self.collection)

    def checkpoint(self) -> None:
        """Nothing to do: Milvus logs every acknowledged write before answering."""

    # -- reads -----------------------------------------------------------------------------

    def search(
        self,
        vector: NDArray[np.float32],
        k: int,
        penalties: NDArray[np.float32] | None = None,
        where: Filter | None = None,
    ) -> list[Hit]:
        queries = np.atleast_2d(np.asarray(vector, dtype=np.float32))
        offsets = np.zeros(len(queries)) if penalties is None else np.asarray(penalties, dtype=np.float64)
        if k < 1 or self._encoder is None:
            return []
        expression = _expression(where) if where else ""
        answers = self._call(
            self._client.search,
            self.collection,
            data=queries.tolist(),
            # A few more than k, so that images tied at the cut can be ordered by id like the
            # embedded store does (Milvus returns an arbitrary subset of a tie).
            limit=min(16384, k + 16),
            filter=expression,
            output_fields=["payload"],
            search_params={"metric_type": "IP", "params": {"ef": max(self._ef, 2 * k)}},
            consistency_level=self._level(),
        )
        best: dict[str, tuple[float, Payload]] = {}
        for view, hits in enumerate(answers):
            for hit in hits:
                score = float(hit["distance"]) - float(offsets[view])
                if hit["id"] not in best or score > best[hit["id"]][0]:
                    best[hit["id"]] = (score, hit["entity"]["payload"])
        ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[:k]
        return [Hit(image_id, score, payload) for image_id, (score, payload) in ranked]

    def get(self, image_id: str) -> Payload | None:
        if self._encoder is None:
            return None
        rows = self._call(self._get, ids=[image_id], output_fields=["payload"])
        return rows[0]["payload"] if rows else None

    def get_vector(self, image_id: str) -> NDArray[np.float32] | None:
        if self._encoder is None:
            return None
        rows = self._call(self._get, ids=[image_id], output_fields=["vector"])
        return np.asarray(rows[0]["vector"], dtype=np.float32) if rows else None

    def find_by_hash(self, content_hash: str) -> str | None:
        if self._encoder is None or not _HEX.match(content_hash):
            return None
        rows = self._call(
            self._client.query,
            self.collection,
            filter=f'hash == "{content_hash}"',
            output_fields=["id"],
            limit=1,
        )
        return str(rows[0]["id"]) if rows else None

    def payload_items(self) -> Iterator[tuple[str, Payload]]:
        for rows in self._scan(["id", "payload"]):
            for row in rows:
                yield row["id"], row["payload"]

    def page(self, offset: int, limit: int) -> list[tuple[str, Payload]]:
        """Milvus has no ORDER BY: the ids are read and sorted here (O(n); for browsing)."""
        ids = sorted(row["id"] for rows in self._scan(["id"]) for row in rows)[offset : offset + limit]
        if not ids:
            return []
        rows = {r["id"]: r["payload"] for r in self._call(self._get, ids=ids, output_fields=["payload"])}
        return [(image_id, rows[image_id]) for image_id in ids if image_id in rows]

    def ids(self) -> list[str]:
        return sorted(row["id"] for rows in self._scan(["id"]) for row in rows)

    def items(self) -> Iterator[list[tuple[str, NDArray[np.float32], Payload]]]:
        """Every (id, vector, payload), in batches: for `imagefinder migrate`."""
        for rows in self._scan(["id", "vector", "payload"]):
            yield [(row["id"], np.asarray(row["vector"], dtype=np.float32), row["payload"]) for row in rows]

    def vectors(self, projected: bool = True, limit: int | None = None) -> NDArray[np.float32]:
        """All vectors, or a uniform random sample of at most `limit` (reservoir sampling)."""
        dim = self._encoder.dim if self._encoder else 0
        kept: list[NDArray[np.float32]] = []
        seen = 0
        rng = random.Random(0)
        for rows in self._scan(["vector"]):
            for row in rows:
                vector = np.asarray(row["vector"], dtype=np.float32)
                seen += 1
                if limit is None or len(kept) < limit:
                    kept.append(vector)
                elif (slot := rng.randrange(seen)) < limit:
                    kept[slot] = vector
        return np.stack(kept) if kept else np.zeros((0, dim), dtype=np.float32)

    def get_meta(self, key: str) -> str | None:
        return self._meta(f"user.{key}")

    def set_meta(self, key: str, value: str) -> None:
        self._put_meta(f"user.{key}", value)

    def count(self) -> int:
        if self._encoder is None:
            return 0
        rows = self._call(
            self._client.query,
            self.collection,
            filter="",
            output_fields=["count(*)"],
            consistency_level=self._level(),
        )
        return int(rows[0]["count(*)"])

    def index_stats(self) -> dict[str, Any]:
        return {
            "kind": "milvus",
            "server": self.server,
            "collection": self.collection,
            "index": "HNSW",
            "params": self._index_params,
            "ef": self._ef,
            "consistency": self._consistency,
            "dim": self._encoder.dim if self._encoder else 0,
        }

    def close(self) -> None:
        self._client.close()

    # -- internals -------------------------------------------------------------------------

    def _get(self, ids: list[str], output_fields: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._client.get(
            self.collection, ids=ids, output_fields=output_fields, consistency_level=self._level()
        )
        return rows

    def _level(self) -> str:
        if self._deleted_since_read:
            self._deleted_since_read = False
            return "Strong"
        return self._consistency

    def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one client call, retrying transient failures (unavailable, timeouts) with backoff."""
        from pymilvus.exceptions import MilvusException, MilvusUnavailableException

        for attempt in range(self._retries + 1):
            try:
                return function(*args, **kwargs)
            except (MilvusUnavailableException, ConnectionError, TimeoutError) as exc:
                failure: Exception = exc
            except MilvusException as exc:
                if not _transient(exc):
                    raise StoreError(
                        f"Milvus at {self.server} refused the request: {_first_line(exc)}"
                    ) from None
                failure = exc
            if attempt < self._retries:
                time.sleep(0.2 * 2**attempt)
        raise StoreUnavailableError(
            f"Milvus at {self.server} did not answer after {self._retries + 1} attempts: "
            f"{_first_line(failure)}"
        )

    def _scan(self, fields: list[str]) -> Iterator[list[dict[str, Any]]]:
        if self._encoder is None:
            return
        iterator = self._call(
            self._client.query_iterator,
            self.collection,
            batch_size=1000,
            filter="",
            output_fields=fields,
            consistency_level=self._level(),
        )
        try:
            while rows := self._call(iterator.next):
                yield rows
        finally:
            iterator.close()

    def _ensure_collection(self, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        if self._call(self._client.has_collection, self.collection):
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX_BYTES)
        schema.add_field("hash", DataType.VARCHAR, max_length=128)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("payload", DataType.JSON)
        index = self._client.prepare_index_params()
        index.add_index("vector", index_type="HNSW", metric_type="IP", params=self._index_params)
        self._call(
            self._client.create_collection,
            self.collection,
            schema=schema,
            index_params=index,
            consistency_level=self._consistency,
        )

    def _ensure_meta_collection(self) -> None:
        from pymilvus import DataType, MilvusClient

        if self._call(self._client.has_collection, self._meta_name):
            return
        # Milvus needs a vector field in every collection: a 2-d placeholder.
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=256)
        schema.add_field("value", DataType.VARCHAR, max_length=65535)
        schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=2)
        index = self._client.prepare_index_params()
        index.add_index("placeholder", index_type="FLAT", metric_type="L2")
        self._call(
            self._client.create_collection,
            self._meta_name,
            schema=schema,
            index_params=index,
            consistency_level=self._consistency,
        )

    def _meta(self, key: str) -> str | None:
        rows = self._call(
            self._client.get,
            self._meta_name,
            ids=[f"{self.collection}/{key}"],
            output_fields=["value"],
            consistency_level=self._consistency,
        )
        return str(rows[0]["value"]) if rows else None

    def _put_meta(self, key: str, value: str) -> None:
        row = {"key": f"{self.collection}/{key}", "value": value, "placeholder": [0.0, 0.0]}
        self._call(self._client.upsert, self._meta_name, [row])

    def _check_schema_version(self) -> None:
        found = self._meta("schema_version")
        if found is None:
            self._put_meta("schema_version", str(SCHEMA_VERSION))
        elif int(found) > SCHEMA_VERSION:
            raise StoreVersionError(
                f"the index at {self.path} has schema version {found}, newer than this ImageFinder "
                f"understands ({SCHEMA_VERSION}); upgrade ImageFinder"
            )

    def _read_encoder(self) -> EncoderInfo | None:
        name = self._meta("encoder_name")
        if name is None:
            return None
        return EncoderInfo(
            name=name,
            version=self._meta("encoder_version") or "",
            dim=int(self._meta("encoder_dim") or 0),
            preprocessing=self._meta("encoder_preprocessing") or "",
        )


def _expression(where: Filter) -> str:
    """{"source": "x", "meta.year": "1999"} -> a Milvus boolean expression on the JSON payload.
    Values compare as in the embedded store: as text, and numbers/booleans also as JSON values."""
    clauses = []
    for name, value in where.items():
        if not _FIELD_NAME.match(name):
            raise InvalidFilterError(
                f"cannot filter on {name!r}: field names are letters, digits, _ . - and space"
            )
        if not isinstance(value, str | int | float | bool):
            raise InvalidFilterError(
                f"cannot filter on {name!r} = {value!r}: values are strings, numbers or booleans"
            )
        path = "payload" + "".join(f"[{json.dumps(part)}]" for part in name.split(".", 1))
        text = value if isinstance(value, str) else json.dumps(value)
        options = [f"{path} == {json.dumps(text)}"]
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, bool):
            options.append(f"{path} == {'true' if parsed else 'false'}")
        elif isinstance(parsed, int | float):
            options.append(f"{path} == {json.dumps(parsed)}")
        clauses.append("(" + " or ".join(options) + ")")
    return " and ".join(clauses)


def _transient(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("unavailable", "timeout", "deadline", "connection", "not ready"))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
