"""What a store query becomes on Milvus: the filter as a boolean expression on the JSON payload,
how many candidates to ask for, and the candidates' scores in the search space (Milvus ranks by
raw inner product; a whitened space re-scores them from their stored vectors)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from imagefinder.search_space import SearchSpace
from imagefinder.stores.base import Payload
from imagefinder.stores.filters import Conditions


def expression(checked: Conditions) -> str:
    """Filter conditions (`stores.filters`) -> a Milvus boolean expression on the JSON payload.
    Values compare as in the embedded store: as text, and numbers/booleans also as JSON values."""
    clauses = []
    for name, text in checked:
        # Milvus reads string literals as they are written, without \uXXXX escapes.
        path = "payload" + "".join(f"[{literal(part)}]" for part in name.split(".", 1))
        options = [f"{path} == {literal(text)}"]
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


def literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


@dataclass(frozen=True)
class Candidate:
    distance: float  # Milvus's inner product, or that less the view's penalty
    payload: Payload
    vector: NDArray[np.float32] | None  # when asked for (a whitened space re-scores from it)


def limit(k: int, space: SearchSpace, rerank: int) -> int:
    """How many to ask Milvus for: a few more than k, so that images tied at the cut can be
    ordered by id like the embedded store does (Milvus returns an arbitrary subset of a tie);
    more when the candidates are re-scored in a whitened space."""
    return min(16384, max(k + 16, rerank if space.projection is not None else 0))


def scores(
    found: dict[str, Candidate],
    queries: NDArray[np.float32],
    offsets: NDArray[np.float64],
    space: SearchSpace,
) -> dict[str, float]:
    """Each candidate's score in the search space: the index's own in a raw space, re-scored
    exactly from the stored vectors in a whitened one."""
    if space.projection is None or not found:
        return {image_id: candidate.distance for image_id, candidate in found.items()}
    ids = list(found)
    stored = np.stack([found[i].vector for i in ids])  # type: ignore[arg-type]
    exact = space.project(stored) @ space.project(queries).T - offsets.astype(np.float32)
    return dict(zip(ids, exact.max(axis=1).tolist(), strict=True))


def hits(found: dict[str, Candidate], scores: dict[str, float]) -> Iterator[tuple[str, float, Payload]]:
    return ((image_id, score, found[image_id].payload) for image_id, score in scores.items())
