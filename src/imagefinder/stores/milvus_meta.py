"""The Milvus store's supporting rooms: calls to the server with retries, and the meta collection
where each index records what it knows about itself (schema version, encoder, search space).

pymilvus is imported only here and in `stores.milvus`.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from imagefinder.encoders.base import EncoderInfo
from imagefinder.errors import StoreError, StoreUnavailableError
from imagefinder.search_space import MATRIX_KEY, MEAN_KEY, RECORD_KEY, SearchSpace, projection_from
from imagefinder.stores.base import ENCODER_KEYS, check_schema_version, encoder_from_record, encoder_record

SCHEMA_VERSION = 1
# One small collection per server holds what each index records about itself (keys are
# "<collection>/<key>"): creating a collection costs Milvus seconds, so not one per index.
META_COLLECTION = "imagefinder_meta"
_VALUE_CHARS = 60_000  # below the meta collection's 65,535-character values
T = TypeVar("T")


class MilvusCalls:
    """One client to one server; every call retried on transient failures (unavailable,
    timeouts) with backoff, and a server that stays unreachable named in the error (API: 503)."""

    def __init__(self, server: str, retries: int, timeout_s: float) -> None:
        self.server = server
        self._retries = retries
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise StoreError("the Milvus store needs its client: pip install 'imagefinder[milvus]'") from None
        try:
            self.client = MilvusClient(uri=server, timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001  (pymilvus raises several kinds on connect)
            raise StoreUnavailableError(f"cannot reach Milvus at {server}: {first_line(exc)}") from None

    def __call__(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        from pymilvus.exceptions import MilvusException, MilvusUnavailableException

        for attempt in range(self._retries + 1):
            try:
                return function(*args, **kwargs)
            except (MilvusUnavailableException, ConnectionError, TimeoutError) as exc:
                failure: Exception = exc
            except MilvusException as exc:
                if not _transient(exc):
                    raise StoreError(
                        f"Milvus at {self.server} refused the request: {first_line(exc)}"
                    ) from None
                failure = exc
            if attempt < self._retries:
                time.sleep(0.2 * 2**attempt)
        raise StoreUnavailableError(
            f"Milvus at {self.server} did not answer after {self._retries + 1} attempts: "
            f"{first_line(failure)}"
        )

    def close(self) -> None:
        self.client.close()


class MilvusMeta:
    """The facts of one collection, as rows "<collection>/<key>" of the shared meta collection."""

    def __init__(self, calls: MilvusCalls, collection: str, location: str, consistency: str) -> None:
        self._calls = calls
        self._collection = collection
        self._consistency = consistency
        self._ensure_collection()
        found = self.get("schema_version")
        if found is None:
            self.put("schema_version", str(SCHEMA_VERSION))
        check_schema_version(found, SCHEMA_VERSION, location)

    def get(self, key: str, consistency: str | None = None) -> str | None:
        rows = self._calls(
            self._calls.client.get,
            META_COLLECTION,
            ids=[self._key(key)],
            output_fields=["value"],
            consistency_level=consistency or self._consistency,
        )
        return str(rows[0]["value"]) if rows else None

    def put(self, key: str, value: str) -> None:
        self._put_rows({key: value})

    def delete(self, key: str) -> None:
        self._calls(self._calls.client.delete, META_COLLECTION, ids=[self._key(key)])

    # -- the encoder and the search space ---------------------------------------------------

    def encoder(self) -> EncoderInfo | None:
        found = {key: self.get(key) for key in ENCODER_KEYS}
        return encoder_from_record({key: value for key, value in found.items() if value is not None})

    def put_encoder(self, info: EncoderInfo) -> None:
        self._put_rows(encoder_record(info))

    def space_record(self, consistency: str | None = None) -> str:
        return self.get(RECORD_KEY, consistency) or ""

    def read_space(self, record: str, cached: SearchSpace) -> SearchSpace:
        """The space of `record` (reusing `cached`'s arrays when it has the same projection)."""
        if not record:
            # Written before spaces had a record: raw cosines, and the threshold it kept.
            threshold = self.get("user.copy_threshold")
            return SearchSpace(copy_threshold=float(threshold)) if threshold else SearchSpace()
        projection_id = json.loads(record)["projection_id"]
        if projection_id == cached.projection_id:
            return SearchSpace.from_record(record, cached.projection)
        arrays = {}
        for name in (MEAN_KEY, MATRIX_KEY):
            data = self._get_blob(f"{RECORD_KEY}.{projection_id}.{name}")
            if data is not None:
                arrays[name] = data
        return SearchSpace.from_record(record, projection_from(arrays))

    def write_space(self, space: SearchSpace, previous: SearchSpace) -> str:
        """The arrays go first under keys of their own fit, then the record that points to them:
        a reader sees the old space or the whole new one. Returns the record."""
        new_projection = space.projection_id != previous.projection_id
        if new_projection:
            for name, data in space.arrays().items():
                self._put_blob(f"{RECORD_KEY}.{space.projection_id}.{name}", data)
        record = space.record()
        self.put(RECORD_KEY, record)
        if new_projection:
            for name in previous.arrays():
                self._delete_blob(f"{RECORD_KEY}.{previous.projection_id}.{name}")
        return record

    # -- internals ---------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return f"{self._collection}/{key}"

    def _put_rows(self, values: dict[str, str]) -> None:
        rows = [{"key": self._key(k), "value": v, "placeholder": [0.0, 0.0]} for k, v in values.items()]
        self._calls(self._calls.client.upsert, META_COLLECTION, rows)

    def _put_blob(self, key: str, data: bytes) -> None:
        """Bytes longer than one value, as base64 in numbered parts."""
        text = base64.b64encode(data).decode("ascii")
        parts = [text[start : start + _VALUE_CHARS] for start in range(0, len(text), _VALUE_CHARS)]
        self._put_rows({f"{key}.{n}": part for n, part in enumerate(parts)})
        self.put(f"{key}.parts", str(len(parts)))

    def _get_blob(self, key: str) -> bytes | None:
        parts = self.get(f"{key}.parts", "Strong")
        if parts is None:
            return None
        ids = [self._key(f"{key}.{n}") for n in range(int(parts))]
        rows = self._calls(
            self._calls.client.get,
            META_COLLECTION,
            ids=ids,
            output_fields=["value"],
            consistency_level="Strong",
        )
        by_key = {row["key"]: row["value"] for row in rows}
        return base64.b64decode("".join(by_key[i] for i in ids))

    def _delete_blob(self, key: str) -> None:
        parts = self.get(f"{key}.parts")
        if parts is not None:
            ids = [self._key(f"{key}.{n}") for n in range(int(parts))] + [self._key(f"{key}.parts")]
            self._calls(self._calls.client.delete, META_COLLECTION, ids=ids)

    def _ensure_collection(self) -> None:
        from pymilvus import DataType, MilvusClient

        client = self._calls.client
        if self._calls(client.has_collection, META_COLLECTION):
            return
        # Milvus needs a vector field in every collection: a 2-d placeholder.
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=256)
        schema.add_field("value", DataType.VARCHAR, max_length=65535)
        schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=2)
        index = client.prepare_index_params()
        index.add_index("placeholder", index_type="FLAT", metric_type="L2")
        self._calls(
            client.create_collection,
            META_COLLECTION,
            schema=schema,
            index_params=index,
            consistency_level=self._consistency,
        )


def _transient(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("unavailable", "timeout", "deadline", "connection", "not ready"))


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
