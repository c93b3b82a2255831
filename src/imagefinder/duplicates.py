"""The near-duplicates of a collection: which images are copies of each other, in groups a person
can review, each with a suggested keeper.

1. Pairs. Every image's stored vector searches the index for its k nearest images (many at once,
   through `VectorStore.similar`); a pair scoring at least the threshold is kept. Memory holds
   the pairs above the threshold, never the whole similarity matrix.
2. A second look (small collections). An image that found no copy this way is read again from
   its recorded source and searched with the extra views of a query (turned, corners, centre:
   `imagefinder.views`), as a search with `views=adaptive` does: pasted, screenshotted and
   rotated copies score low as whole images. It costs 8 encoder runs per image without a copy,
   so it runs by default only up to `VIEWS_UP_TO` images.
3. Groups, without chaining. A group is one image, its centre, and the images that are copies of
   *it*: every member scores at least the threshold with the centre itself. Centres are taken
   in order of how many copies they have (then their total score, then id), and each claims the
   copies not yet claimed. A chain of borderline pairs a-b-c-d-e, where a and e have nothing in
   common, cannot become one group: no image joins through another member, only through the
   centre (connected components of the pairs would merge the whole chain).
4. A keeper per group by a rule (`KEEP_RULES`); the summary says what removing the others frees.

Incremental (with a `ScanMemory`): a later scan with the same basis (search space, filter,
neighbours; `duplicates_memory.ScanBasis`) and a threshold at or above the remembered pairs'
floor queries only the images added or changed since, keeps the earlier pairs whose two images
are unchanged, and groups again. Only scans without the second look and without
`across`/`against` are incremental: an image looked at again would have to be looked at again
whenever any image is added (a new photo may be pasted in an old one), and a directed scan would
have to query the old `across` images against every new `against` one. Whitened collections
below `maintenance.REFIT_ALWAYS_UP_TO` images learn a new projection at every index run, so the
next scan starts over; those collections are the small, fast ones.
"""

from __future__ import annotations

import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from imagefinder.duplicates_memory import (
    MARGIN,
    PreviousScan,
    ScanBasis,
    ScanMemory,
    fingerprint,
    sorted_prints,
)
from imagefinder.errors import InvalidFilterError, InvalidScanError
from imagefinder.stores.base import Filter, Hit, Payload, VectorStore
from imagefinder.stores.filters import conditions, filterable_fields

# Nearest images each image is compared with first; an image whose every one of them scores
# above the threshold (a large group of copies) is searched again for more, up to MAX_NEIGHBOURS,
# so no pair is cut off by the count. That also makes a scan that carries on from the last one
# find what a full scan finds: a new image's search reaches every old image it pairs with.
NEIGHBOURS = 16
MAX_NEIGHBOURS = 256
VIEWS_UP_TO = 20_000
BATCH = 2048
KeepRule = Literal["resolution", "size", "earliest"]
KEEP_RULES: tuple[KeepRule, ...] = ("resolution", "size", "earliest")
Views = Literal["single", "adaptive", "auto"]
# Another look at an image that found no copy: (id, score) of its k best matches over more views,
# among the images matching the filter; None when the image can no longer be read.
LookAgain = Callable[[str, Payload, int, Filter | None], list[tuple[str, float]] | None]


@dataclass(frozen=True)
class Member:
    id: str
    score: float  # with the group's keeper (1.0 for the keeper itself), at or above the threshold
    width: int | None
    height: int | None
    bytes: int | None
    added_at: str | None
    uri: str | None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value is not None}


@dataclass
class Group:
    centre: str
    keeper: str
    members: list[Member]  # keeper first, then by score with the centre
    pairs: list[tuple[str, str, float]]  # the pairs of members the scan found at or above the threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "keeper": self.keeper,
            "centre": self.centre,
            "members": [member.to_dict() for member in self.members],
            "pairs": [{"a": a, "b": b, "score": round(score, 4)} for a, b, score in self.pairs],
        }


@dataclass
class DuplicateReport:
    threshold: float
    threshold_source: str  # "calibrated" or "given"
    keep: KeepRule
    views: str
    groups: list[Group]
    scanned: int
    looked_again: int
    unreadable: int  # images the second look could not read again (gone from their source)
    seconds: float
    across: Filter | None = None
    against: Filter | None = None
    queried: int | None = None  # images searched this time; fewer than scanned when incremental
    kept_pairs: int = 0  # pairs carried over from the last scan
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        removable = [m for g in self.groups for m in g.members if m.id != g.keeper]
        self.summary = {
            "groups": len(self.groups),
            "images_in_groups": sum(len(g.members) for g in self.groups),
            "removable_images": len(removable),
            "removable_bytes": sum(m.bytes or 0 for m in removable),
            "threshold": round(self.threshold, 4),
            "threshold_source": self.threshold_source,
            "keep": self.keep,
            "views": self.views,
            "scanned": self.scanned,
            "looked_again": self.looked_again,
            "unreadable": self.unreadable,
            "seconds": round(self.seconds, 2),
            "incremental": self.queried is not None and self.queried < self.scanned,
            "queried": self.scanned if self.queried is None else self.queried,
            "kept_pairs": self.kept_pairs,
            **({"across": dict(self.across)} if self.across else {}),
            **({"against": dict(self.against)} if self.against else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"groups": [g.to_dict() for g in self.groups], "summary": self.summary}


class DuplicateFinder:
    def __init__(
        self,
        store: VectorStore,
        look_again: LookAgain | None = None,
        neighbours: int = NEIGHBOURS,
        batch: int = BATCH,
        memory: ScanMemory | None = None,
        encoder: str = "",
    ) -> None:
        self._store = store
        self._look_again = look_again
        self._k = neighbours
        self._batch = batch
        self._memory = memory  # None: every scan is a full one
        self._encoder = encoder  # which encoder's vectors the remembered pairs scored

    def find(
        self,
        threshold: float | None = None,
        where: Filter | None = None,
        across: Filter | None = None,
        against: Filter | None = None,
        keep: KeepRule = "resolution",
        views: Views = "auto",
        progress: Callable[[int, int], None] | None = None,
        full: bool = False,
    ) -> DuplicateReport:
        """Groups of copies among the images matching `where`; with `across` and `against`, the
        copies of the `across` images among the `against` images instead. `threshold` None: the
        collection's calibrated duplicate threshold. `full`: query every image, even when the
        last scan could be carried on (see the module's docstring)."""
        started = time.perf_counter()
        if threshold is not None and not -1.0 <= threshold <= 1.0:
            raise InvalidScanError(f"a threshold is a cosine score in [-1, 1], not {threshold}")
        if keep not in KEEP_RULES:
            raise InvalidScanError(f"keep must be one of {', '.join(KEEP_RULES)}, not {keep!r}")
        if (across is None) != (against is None):
            raise InvalidScanError("across and against go together: the copies of one part found in another")
        source = "given" if threshold is not None else "calibrated"
        space = self._store.search_space
        threshold = float(space.in_collection_threshold if threshold is None else threshold)
        queries = {**(where or {}), **(across or {})}
        candidates = {**(where or {}), **(against or {})} or None
        named = {**queries, **(candidates or {})}
        for name, value in named.items():
            conditions({name: value})  # the filter grammar's own errors first
        total = self._store.count()
        looking = views == "adaptive" or (views == "auto" and total <= VIEWS_UP_TO)
        if looking and self._look_again is None:
            looking = False

        remembering = self._memory is not None and across is None and not looking
        basis = ScanBasis(dict(where or {}), space.projection_id, self._encoder, self._k)
        previous = self._memory.load() if remembering and not full and self._memory is not None else None
        if previous is not None and (previous.basis != basis or threshold < previous.floor):
            previous = None
        # Kept pairs need both images unchanged: the current fingerprints of the ids they name.
        paired = {image_id for pair in previous.pairs for image_id in pair} if previous is not None else set()
        now: dict[str, int] = {}
        # Remembered pairs go down to a floor below the threshold (see duplicates_memory).
        floor = threshold - MARGIN if remembering else threshold
        prints = array("Q")

        pairs: dict[tuple[str, str], float] = {}
        lonely: list[tuple[str, Payload]] = []
        seen_fields: set[str] = set()
        wanted = conditions(queries) if queries else ()
        scanned = 0
        queried = 0
        for rows in self._store.items():
            chosen = []
            for image_id, vector, payload in rows:
                if named:  # reading every payload's fields costs seconds at a million images
                    fields = dict(filterable_fields(payload))
                    seen_fields.update(fields)
                    if not all(fields.get(name) == value for name, value in wanted):
                        continue
                scanned += 1
                print_ = fingerprint(image_id, payload)
                if print_:
                    prints.append(print_)
                if image_id in paired:
                    now[image_id] = print_
                if previous is None or not print_ or not previous.knows(print_):
                    chosen.append((image_id, vector, payload))
            queried += len(chosen)
            for start in range(0, len(chosen), self._batch):
                part = chosen[start : start + self._batch]
                found = self._neighbours(np.stack([vector for _, vector, _ in part]), floor, candidates)
                for (image_id, _, payload), hits in zip(part, found, strict=True):
                    others = [(hit.id, hit.score) for hit in hits if hit.id != image_id]
                    _add_pairs(pairs, image_id, others, across is not None)
                    if not any(score >= threshold for _, score in others) and looking:
                        lonely.append((image_id, payload))
            if progress:
                progress(scanned, total)
        unknown = [name for name in named if name not in seen_fields] if total else []
        if unknown:
            raise InvalidFilterError(f"no image of this collection has the field {', '.join(unknown)}")

        looked_again = 0
        unreadable = 0
        if looking and self._look_again is not None:
            for image_id, payload in lonely:
                found = self._look_again(image_id, payload, self._k, candidates)
                if found is None:
                    unreadable += 1
                    continue
                others = [
                    (other, score) for other, score in found if other != image_id and score >= threshold
                ]
                _add_pairs(pairs, image_id, others, across is not None)
                looked_again += 1

        carried: set[tuple[str, str]] = set()
        if previous is not None:
            for (a, b), score in previous.pairs.items():
                if previous.knows(now.get(a, 0)) and previous.knows(now.get(b, 0)) and (a, b) not in pairs:
                    pairs[(a, b)] = score
                    carried.add((a, b))
            floor = max(floor, previous.floor)  # the kept pairs are whole only down to their floor
        if remembering and self._memory is not None:
            remembered = {pair: score for pair, score in pairs.items() if score >= floor}
            self._memory.save(PreviousScan(basis, floor, sorted_prints(prints), remembered))
        pairs = {pair: score for pair, score in pairs.items() if score >= threshold}
        kept = len(carried.intersection(pairs))

        groups = [self._group(centre, members, pairs, keep, threshold) for centre, members in stars(pairs)]
        groups.sort(key=lambda g: (-len(g.members), g.keeper))
        return DuplicateReport(
            threshold,
            source,
            keep,
            "adaptive" if looking else "single",
            groups,
            scanned,
            looked_again,
            unreadable,
            time.perf_counter() - started,
            across,
            against,
            queried,
            kept,
        )

    def _neighbours(
        self, vectors: NDArray[np.float32], floor: float, candidates: Filter | None
    ) -> list[list[Hit]]:
        """Each vector's nearest images scoring at least `floor`: the k nearest, or more (up to
        MAX_NEIGHBOURS) for a vector whose k nearest all score that high."""
        k = self._k + 1  # the image itself is among them
        found = self._store.similar(vectors, k, floor, candidates)
        full = [i for i, hits in enumerate(found) if len(hits) >= k]
        while full and k < MAX_NEIGHBOURS + 1:
            k = min(4 * k, MAX_NEIGHBOURS + 1)
            again = self._store.similar(vectors[full], k, floor, candidates)
            for i, hits in zip(full, again, strict=True):
                found[i] = hits
            full = [i for i, hits in zip(full, again, strict=True) if len(hits) >= k]
        return found

    def _group(
        self,
        centre: str,
        members: list[tuple[str, float]],
        pairs: Mapping[tuple[str, str], float],
        keep: KeepRule,
        threshold: float,
    ) -> Group:
        payloads = {image_id: self._store.get(image_id) or {} for image_id, _ in members}
        ids = list(payloads)
        scores = self._scores(ids, pairs)
        # The keeper is chosen by the rule among the members every other member is a copy of (the
        # centre always is): removing "the others" then never removes an image that is no copy
        # of the one kept (a member may be a copy of the centre and not of another member).
        covering = [i for i in ids if all(scores[i][j] >= threshold for j in ids if j != i)] or [centre]
        keeper = min((_member(i, 0.0, payloads[i]) for i in covering), key=_keep_order(keep)).id
        described = [_member(i, 1.0 if i == keeper else scores[keeper][i], payloads[i]) for i in ids]
        described.sort(key=lambda m: (m.id != keeper, -m.score, m.id))
        joined = sorted(
            ((a, b, score) for (a, b), score in pairs.items() if a in payloads and b in payloads),
            key=lambda p: -p[2],
        )
        return Group(centre, keeper, described, joined)

    def _scores(self, ids: list[str], pairs: Mapping[tuple[str, str], float]) -> dict[str, dict[str, float]]:
        """Every member's score with every other: the stored vectors' cosine in the search space,
        or the pair's score when the scan found it higher (a second look's extra views)."""
        space = self._store.search_space
        vectors = {i: self._store.get_vector(i) for i in ids}
        present = [i for i in ids if vectors[i] is not None]
        matrix = np.full((len(ids), len(ids)), -1.0, dtype=np.float32)
        if present:
            projected = space.project(np.stack([vectors[i] for i in present]))
            rows = [ids.index(i) for i in present]
            matrix[np.ix_(rows, rows)] = projected @ projected.T
        scores = {a: {b: float(matrix[x, y]) for y, b in enumerate(ids)} for x, a in enumerate(ids)}
        for (a, b), score in pairs.items():
            if a in scores and b in scores:
                scores[a][b] = scores[b][a] = max(scores[a][b], score)
        return scores


def _add_pairs(
    pairs: dict[tuple[str, str], float], image_id: str, others: Iterable[tuple[str, float]], directed: bool
) -> None:
    """Directed (across/against): the pair keeps its order, query first."""
    for other, score in others:
        key = (image_id, other) if directed else (min(image_id, other), max(image_id, other))
        pairs[key] = max(score, pairs.get(key, -1.0))


def stars(pairs: Mapping[tuple[str, str], float]) -> list[tuple[str, list[tuple[str, float]]]]:
    """Groups from pairs at or above the threshold: (centre, [(member, score with the centre)]),
    the centre first with score 1.0. See the module's docstring for why stars and not chains."""
    links: dict[str, dict[str, float]] = defaultdict(dict)
    for (a, b), score in pairs.items():
        links[a][b] = score
        links[b][a] = score
    order = sorted(links, key=lambda node: (-len(links[node]), -sum(links[node].values()), node))
    claimed: set[str] = set()
    groups = []
    for centre in order:
        if centre in claimed:
            continue
        members = [(other, score) for other, score in links[centre].items() if other not in claimed]
        if not members:
            continue
        claimed.add(centre)
        claimed.update(other for other, _ in members)
        groups.append((centre, [(centre, 1.0), *sorted(members, key=lambda m: (-m[1], m[0]))]))
    return groups


def _member(image_id: str, score: float, payload: Payload) -> Member:
    def number(name: str) -> int | None:
        value = payload.get(name)
        return int(value) if isinstance(value, int | float) else None

    added = payload.get("added_at")
    uri = payload.get("uri")
    return Member(
        image_id,
        round(float(score), 4),
        number("width"),
        number("height"),
        number("bytes"),
        added if isinstance(added, str) else None,
        uri if isinstance(uri, str) else None,
    )


def _keep_order(rule: KeepRule) -> Callable[[Member], tuple[Any, ...]]:
    """Sort key: the first member is the keeper. Ties fall to the next criteria, then the id."""

    def pixels(m: Member) -> int:
        return (m.width or 0) * (m.height or 0)

    if rule == "resolution":
        return lambda m: (-pixels(m), -(m.bytes or 0), m.added_at or "~", m.id)
    if rule == "size":
        return lambda m: (-(m.bytes or 0), -pixels(m), m.added_at or "~", m.id)
    return lambda m: (m.added_at or "~", -pixels(m), -(m.bytes or 0), m.id)
