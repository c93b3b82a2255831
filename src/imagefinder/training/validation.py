"""Held-out checks that pick the epoch to keep and report before/after.

- `CopyValidation` (self-supervised): fixed edited views (their own seed, never the training
  stream) of held-out images, searched among every image of the collection; recall@1.
- `LabelValidation` (supervised): held-out labelled images searched among the training ones;
  mean average precision by label.
- `CombinedValidation`: the mean of both, when training with labels and without.

`split` chooses the held-out images deterministically (by a hash of the id and the seed),
stratified by label when there are labels, so the same data and seed always hold out the same
images.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagefinder.training.augment import RealWorldEdits

Embed = Callable[[Sequence[Image.Image]], NDArray[np.float32]]
T = TypeVar("T")


class Validation(Protocol):
    metric: str

    def score(self, embed: Embed) -> float: ...


class CopyValidation:
    metric = "copy_recall@1"

    def __init__(
        self,
        held_out: Sequence[Image.Image],
        database: Sequence[Image.Image],
        owner: Sequence[int],
        views_per_image: int = 2,
        seed: int = 0,
    ) -> None:
        """`owner[i]` is the position in `database` of `held_out[i]`."""
        rng = random.Random(f"validation-{seed}")
        edits = RealWorldEdits()
        self.queries = [edits(image, rng, database) for image in held_out for _ in range(views_per_image)]
        self.truth = np.repeat(np.asarray(owner), views_per_image)
        self.database = list(database)

    def score(self, embed: Embed) -> float:
        if not self.queries:
            return 0.0
        found = np.argmax(embed(self.queries) @ embed(self.database).T, axis=1)
        return float(np.mean(found == self.truth))


class LabelValidation:
    metric = "label_mAP"

    def __init__(
        self,
        queries: Sequence[Image.Image],
        query_labels: Sequence[int],
        database: Sequence[Image.Image],
        database_labels: Sequence[int],
    ) -> None:
        self.queries, self.query_labels = list(queries), np.asarray(query_labels)
        self.database, self.database_labels = list(database), np.asarray(database_labels)

    def score(self, embed: Embed) -> float:
        if not self.queries:
            return 0.0
        scores = embed(self.queries) @ embed(self.database).T
        return float(
            np.mean(
                [
                    average_precision(row, self.database_labels == label)
                    for row, label in zip(scores, self.query_labels, strict=True)
                ]
            )
        )


class CombinedValidation:
    metric = "copy_recall@1+label_mAP"

    def __init__(self, copies: CopyValidation, labels: LabelValidation) -> None:
        self.copies, self.labels = copies, labels

    def score(self, embed: Embed) -> float:
        return (self.copies.score(embed) + self.labels.score(embed)) / 2


def average_precision(scores: NDArray[np.float32], relevant: NDArray[np.bool_]) -> float:
    total = int(relevant.sum())
    if total == 0:
        return 0.0
    hits = relevant[np.argsort(-scores, kind="stable")]
    precision_at_hit = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
    return float(precision_at_hit.sum() / total)


def split(
    ids: Sequence[str], labels: Sequence[int | None], fraction: float, seed: int, at_most: int | None = None
) -> tuple[list[int], list[int]]:
    """(train positions, held-out positions). Per label (or over all when unlabelled), the
    `fraction` of images with the smallest hash of (seed, id) is held out; a label keeps at
    least one training image and holds out at least one when it has two or more."""
    groups: dict[int | None, list[int]] = defaultdict(list)
    for position, label in enumerate(labels):
        groups[label].append(position)
    held: list[int] = []
    for members in groups.values():
        ranked = sorted(members, key=lambda p: hashlib.sha256(f"{seed}:{ids[p]}".encode()).hexdigest())
        count = round(len(members) * fraction)
        if fraction > 0 and len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        held.extend(ranked[:count])
    if at_most is not None and len(held) > at_most:
        held = sorted(held, key=lambda p: hashlib.sha256(f"{seed}:{ids[p]}".encode()).hexdigest())[:at_most]
    held_set = set(held)
    return [p for p in range(len(ids)) if p not in held_set], sorted(held_set)
