"""The store contract (vectors with ids and payloads; upsert, delete, search, count) and what
every backend shares: the encoder record, the schema-version check, the order of results."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import numpy as np
from numpy.typing import NDArray

from imagefinder.encoders import setting_for
from imagefinder.encoders.base import EncoderInfo
from imagefinder.errors import EncoderMismatchError, InvalidFilterError, StoreVersionError
from imagefinder.search_space import SearchSpace

Payload = Mapping[str, Any]
# Payload field -> required value, e.g. {"source": "holidays"}: every field must match.
Filter = Mapping[str, str | int | float | bool]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: Payload


class VectorStore(Protocol):
    location: str  # where the index is, as `imagefinder info` shows it

    @property
    def encoder_info(self) -> EncoderInfo | None:
        """The encoder the stored vectors came from; None for a new, empty store."""
        ...

    def bind_encoder(self, info: EncoderInfo) -> None:
        """Record `info` on an empty store; on a non-empty one, raise `EncoderMismatchError`
        unless it is the encoder that built it."""
        ...

    def upsert(
        self, ids: Sequence[str], vectors: NDArray[np.float32], payloads: Sequence[Payload]
    ) -> None: ...

    def delete(self, ids: Sequence[str]) -> int: ...

    def search(
        self,
        vector: NDArray[np.float32],
        k: int,
        penalties: NDArray[np.float32] | None = None,
        where: Filter | None = None,
    ) -> list[Hit]:
        """Best first. A (views, dim) query scores each image by its best view minus penalty.
        `where` is applied during the search: k matches are returned when k exist."""
        ...

    def similar(
        self, vectors: NDArray[np.float32], k: int, min_score: float, where: Filter | None = None
    ) -> list[list[Hit]]:
        """Many one-view queries at once (a duplicates scan): for each row of `vectors`, its best
        matches up to k that score at least `min_score`, best first, among images matching `where`."""
        ...

    def optimise(self) -> None:
        """After a bulk change: let the store reorganise its index (build, retrain, snapshot)."""
        ...

    def checkpoint(self) -> None:
        """Make what was written durable in the store's own form (a snapshot), if it has one."""
        ...

    @property
    def search_space(self) -> SearchSpace:
        """The space searches run in (see `imagefinder.search_space`), as last set by any process;
        cheap to read on every query."""
        ...

    def set_search_space(self, space: SearchSpace, replacing: str | None = None) -> None:
        """Search through `space` from now on; kept with the index. With `replacing` (the
        version `space` was computed from), only if the stored space still has that version:
        otherwise nothing is written and SearchSpaceChangedError is raised, so a refit and a
        calibration in two processes cannot undo each other."""
        ...

    def get(self, image_id: str) -> Payload | None: ...

    def get_vector(self, image_id: str) -> NDArray[np.float32] | None: ...

    def find_by_hash(self, content_hash: str) -> str | None:
        """The id of an image whose payload has this content hash, if any."""
        ...

    def payload_items(self) -> Iterator[tuple[str, Payload]]: ...

    def page(self, offset: int, limit: int) -> list[tuple[str, Payload]]: ...

    def items(self) -> Iterator[list[tuple[str, NDArray[np.float32], Payload]]]:
        """Every (id, vector as the encoder made it, payload), in batches."""
        ...

    def ids(self) -> list[str]: ...

    def vectors(self, limit: int | None = None) -> NDArray[np.float32]:
        """All vectors as the encoder made them, or a random sample of at most `limit`."""
        ...

    def get_meta(self, key: str) -> str | None:
        """A small fact the index records about itself (provenance, the model that serves it)."""
        ...

    def set_meta(self, key: str, value: str) -> None: ...

    def count(self) -> int: ...

    def index_stats(self) -> dict[str, Any]:
        """How searches run (kind: exact or an approximate index, with its parameters)."""
        ...

    def close(self) -> None: ...


# -- shared by every store ---------------------------------------------------------------------


def same_encoder(current: EncoderInfo | None, info: EncoderInfo) -> bool:
    """Whether `info` makes vectors comparable with those of `current` (name, version, dim)."""
    return current is not None and (current.name, current.version, current.dim) == (
        info.name,
        info.version,
        info.dim,
    )


ENCODER_KEYS = ("encoder_name", "encoder_version", "encoder_dim", "encoder_preprocessing")


def encoder_record(info: EncoderInfo) -> dict[str, str]:
    """How every store writes the encoder that built it."""
    return {
        "encoder_name": info.name,
        "encoder_version": info.version,
        "encoder_dim": str(info.dim),
        "encoder_preprocessing": info.preprocessing,
    }


def encoder_from_record(record: Mapping[str, str]) -> EncoderInfo | None:
    if "encoder_name" not in record:
        return None
    return EncoderInfo(
        name=record["encoder_name"],
        version=record.get("encoder_version", ""),
        dim=int(record.get("encoder_dim", "0")),
        preprocessing=record.get("encoder_preprocessing", ""),
    )


def check_schema_version(found: str | None, understood: int, where: str) -> None:
    """Refuse an index written by a newer ImageFinder, whose layout this one cannot know."""
    if found is not None and int(found) > understood:
        raise StoreVersionError(
            f"the index at {where} has schema version {found}, newer than this ImageFinder "
            f"understands ({understood}); upgrade ImageFinder"
        )


def ranked(scored: Iterable[tuple[str, float, Payload]], k: int) -> list[Hit]:
    """The k best, best first; equal scores in id order, so results are stable between calls and
    the same on every backend."""
    ordered = sorted(scored, key=lambda item: (-item[1], item[0]))
    return [Hit(image_id, score, payload) for image_id, score, payload in ordered[:k]]


def refuse_other_encoder(current: EncoderInfo, info: EncoderInfo, where: str, instead: str) -> NoReturn:
    setting = setting_for(current)
    keep = f"set IMAGEFINDER_ENCODER={setting} (--model {setting}) to use it, " if setting else ""
    raise EncoderMismatchError(
        f"the index at {where} was built with encoder {current.name} v{current.version} "
        f"({current.dim}-d) and cannot be searched or extended with {info.name} v{info.version} "
        f"({info.dim}-d); {keep}use {instead} or rebuild the index"
    )


def checked_upsert(
    encoder: EncoderInfo | None, ids: Sequence[str], vectors: NDArray[np.float32], payloads: Sequence[Payload]
) -> NDArray[np.float32]:
    """The checks every store's upsert makes; the vectors as contiguous float32."""
    if not (len(ids) == len(vectors) == len(payloads)):
        raise ValueError("ids, vectors and payloads differ in length")
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate ids in one upsert")
    if encoder is None:
        raise RuntimeError("bind_encoder must be called before the first upsert")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(ids) and vectors.shape[1] != encoder.dim:
        raise ValueError(f"vectors are {vectors.shape[1]}-d, the index is {encoder.dim}-d")
    return vectors


def parse_where(conditions: Sequence[str]) -> dict[str, str]:
    """["source=holidays", "year=2020"] (CLI --where, API where=) -> {"source": "holidays", ...}."""
    fields: dict[str, str] = {}
    for condition in conditions:
        name, equals, value = condition.partition("=")
        if not equals or not name:
            raise InvalidFilterError(f"where={condition!r}: expected field=value")
        fields[name] = value
    return fields
