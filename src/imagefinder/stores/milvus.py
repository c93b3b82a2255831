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
- Index: HNSW on inner product (the vectors are L2-normalised, so scores are cosines), M=32,
  efConstruction=200, ef at search max(256, 2 x the candidates asked for); configurable. M=16
  found 0.88-0.96 of the true top 10 on overlapping data at 100k in three builds, M=32 0.977
  (docs/scaling.md, "Milvus"); an existing collection keeps the M it was built with.
- The search space (`imagefinder.search_space`) is honoured by re-scoring: Milvus keeps the
  encoder's vectors and finds `rerank` raw-cosine candidates per view, which are then scored in
  the space's whitened projection, so scores and the copy threshold mean what they mean in the
  embedded store. Stored vectors never depend on a fit: a refit rewrites nothing, and `migrate`
  moves the same vectors both ways. Why this and not projected vectors: docs/scaling.md, "Milvus".
- Writes go in batches; transient errors (server restarting, timeouts) are retried with backoff;
  a server that stays unreachable raises StoreUnavailableError naming the URI (API: 503).

pymilvus is imported only in this module.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imagefinder.encoders.base import EncoderInfo
from imagefinder.errors import SearchSpaceChangedError, StoreError
from imagefinder.search_space import SearchSpace, record_version
from imagefinder.stores import milvus_query as query
from imagefinder.stores.base import (
    Filter,
    Hit,
    Payload,
    checked_upsert,
    ranked,
    refuse_other_encoder,
    same_encoder,
)
from imagefinder.stores.filters import conditions
from imagefinder.stores.milvus_meta import MilvusCalls, MilvusMeta

log = logging.getLogger(__name__)

ID_MAX_BYTES = 2048  # ids are at most 512 characters, up to 4 bytes each in UTF-8
# HNSW's graph: M=16 lost a tenth of the true neighbours on overlapping data in some builds.
INDEX_PARAMS = {"M": 32, "efConstruction": 200}
# Raw-cosine candidates per query view that are re-scored in a whitened search space.
RERANK_CANDIDATES = 50
# A duplicates scan asks for this many hits per request at most (rows x limit), and for fewer
# when the hits carry their vectors (a whitened space): at most this many floats, which pymilvus
# hands over as Python floats (about 32 bytes each).
SIMILAR_HITS_PER_REQUEST = 4096
SIMILAR_FLOATS_PER_REQUEST = 1_000_000
# How long a process trusts its copy of the search space before asking the server again: other
# processes' writes become visible within about a second anyway.
SPACE_CHECK_S = 1.0
_HEX = re.compile(r"^[0-9a-f]{1,128}$")


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
        ef: int = 256,
        consistency: str = "Session",
        batch_size: int = 1000,
        retries: int = 3,
        timeout_s: float = 10.0,
        rerank: int = RERANK_CANDIDATES,
    ) -> None:
        self.server = server
        self.collection = collection
        self.location = f"{server}/{collection}"
        self._rerank = rerank
        self._index_params = index_params or dict(INDEX_PARAMS)
        self._ef = ef
        self._consistency = consistency
        # pymilvus advances the Session timestamp on inserts and upserts but not on deletes: the
        # first read after a delete runs at Strong, so that the deletion is visible to it.
        self._deleted_since_read = False
        self._batch_size = batch_size
        self._call = MilvusCalls(server, retries, timeout_s)
        self._client = self._call.client
        self._meta = MilvusMeta(self._call, collection, self.location, consistency)
        self._encoder = self._meta.encoder()
        if self._encoder is not None:
            self._ensure_collection(self._encoder.dim)
        self._space = SearchSpace()
        self._space_record = ""
        self._space_checked = -float("inf")

    # -- encoder binding -------------------------------------------------------------------

    @property
    def encoder_info(self) -> EncoderInfo | None:
        return self._encoder

    def bind_encoder(self, info: EncoderInfo) -> None:
        current = self._encoder
        if same_encoder(current, info):
            return
        if current is not None and self.count() > 0:
            refuse_other_encoder(current, info, self.location, "another collection")
        if self._call(self._client.has_collection, self.collection):
            self._call(self._client.drop_collection, self.collection)
        self._ensure_collection(info.dim)
        self._meta.put_encoder(info)
        self._encoder = info
        self.set_search_space(SearchSpace().fitted(None, 0, ""))  # the old encoder's space is void

    @property
    def search_space(self) -> SearchSpace:
        """The stored space, asked for again at most every SPACE_CHECK_S: not one round trip per
        query for the copy threshold."""
        now = time.monotonic()
        if now - self._space_checked >= SPACE_CHECK_S:
            record = self._meta.space_record()
            if record != self._space_record:
                self._space = self._meta.read_space(record, self._space)
                self._space_record = record
            self._space_checked = now
        return self._space

    def set_search_space(self, space: SearchSpace, replacing: str | None = None) -> None:
        # The stored space as it is now, not this process's copy of up to a second ago: the
        # arrays of the projection being replaced are removed by name.
        # Strong: another process's last write too, not only this session's. Milvus has no
        # compare-and-set: a change written between this read and the write below is still lost.
        current = self._meta.space_record("Strong")
        if replacing is not None and record_version(current) != replacing:
            # The next read starts from the stored space, not this process's copy of up to a
            # second ago, so a change made again is made on it.
            self._space, self._space_record = self._meta.read_space(current, self._space), current
            self._space_checked = time.monotonic()
            raise SearchSpaceChangedError(
                f"the search space of {self.location} changed meanwhile "
                f"({replacing or 'none'} -> {record_version(current) or 'none'})"
            )
        record = self._meta.write_space(space, self._meta.read_space(current, self._space))
        self._space, self._space_record, self._space_checked = space, record, time.monotonic()

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

    def similar(
        self, vectors: NDArray[np.float32], k: int, min_score: float, where: Filter | None = None
    ) -> list[list[Hit]]:
        """Many rows per request (a duplicates scan sends thousands), each answered on its own."""
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        expression = query.expression(conditions(where)) if where else ""  # a bad filter fails first
        if k < 1 or self._encoder is None:
            return [[] for _ in range(len(queries))]
        space = self.search_space
        results: list[list[Hit]] = []
        hits = SIMILAR_HITS_PER_REQUEST
        if space.projection is not None:
            hits = min(hits, SIMILAR_FLOATS_PER_REQUEST // self._encoder.dim)
        rows_per_request = max(1, hits // query.limit(k, space, self._rerank))
        for start in range(0, len(queries), rows_per_request):
            chunk = queries[start : start + rows_per_request]
            for row, found in zip(chunk, self._candidates(chunk, k, expression, space), strict=True):
                best = query.scores(found, row[None, :], np.zeros(1), space)
                results.append([hit for hit in ranked(query.hits(found, best), k) if hit.score >= min_score])
        return results

    def search(
        self,
        vector: NDArray[np.float32],
        k: int,
        penalties: NDArray[np.float32] | None = None,
        where: Filter | None = None,
    ) -> list[Hit]:
        """One query of one or more views: an image's best score over the views, each view's
        score lowered by its penalty."""
        queries = np.atleast_2d(np.asarray(vector, dtype=np.float32))
        offsets = np.zeros(len(queries)) if penalties is None else np.asarray(penalties, dtype=np.float64)
        expression = query.expression(conditions(where)) if where else ""  # a bad filter fails first
        if k < 1 or self._encoder is None:
            return []
        space = self.search_space
        found: dict[str, query.Candidate] = {}
        for view, hits in enumerate(self._candidates(queries, k, expression, space)):
            for image_id, candidate in hits.items():
                score = candidate.distance - float(offsets[view])
                kept = found.get(image_id)
                if kept is None or score > kept.distance:
                    found[image_id] = query.Candidate(score, candidate.payload, candidate.vector)
        return ranked(query.hits(found, query.scores(found, queries, offsets, space)), k)

    def _candidates(
        self, queries: NDArray[np.float32], k: int, expression: str, space: SearchSpace
    ) -> list[dict[str, query.Candidate]]:
        """For each row of `queries`, the index's nearest images (raw inner products), in one
        request; with their stored vectors when the space is whitened, for re-scoring."""
        whitened = space.projection is not None
        limit = query.limit(k, space, self._rerank)
        answers = self._call(
            self._client.search,
            self.collection,
            data=queries.tolist(),
            limit=limit,
            filter=expression,
            output_fields=["payload", "vector"] if whitened else ["payload"],
            search_params={"metric_type": "IP", "params": {"ef": max(self._ef, 2 * limit)}},
            consistency_level=self._level(),
        )
        return [
            {
                hit["id"]: query.Candidate(
                    float(hit["distance"]),
                    hit["entity"]["payload"],
                    np.asarray(hit["entity"]["vector"], dtype=np.float32) if whitened else None,
                )
                for hit in hits
            }
            for hits in answers
        ]

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

    def vectors(self, limit: int | None = None) -> NDArray[np.float32]:
        """All vectors as the encoder made them, or a uniform random sample of at most `limit`
        (reservoir sampling)."""
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
        return self._meta.get(f"user.{key}")

    def set_meta(self, key: str, value: str) -> None:
        self._meta.put(f"user.{key}", value)

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
