"""GET /duplicates: the groups of copies in the collection, a page at a time.

A scan reads every stored vector, so its result is kept for the next pages and the next visit
while the collection and its search space stay the same (see `ScanCache`; an add or a delete
through the API forgets every kept scan).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from imagefinder.api.deps import ReadAccess, Service
from imagefinder.api.errors import documented
from imagefinder.api.images import image_url
from imagefinder.api.schemas import WhereCondition
from imagefinder.duplicates import DuplicateFinder, DuplicateReport, KeepRule
from imagefinder.service import ImageFinder
from imagefinder.stores.base import parse_where
from imagefinder.training.data import ImageReader

router = APIRouter(tags=["duplicates"], dependencies=[ReadAccess])

# Scans kept per app: a few sets of parameters, each valid while its key holds, at most KEEP_S.
KEPT_SCANS = 4
KEEP_S = 300.0


class DuplicateMember(BaseModel):
    id: str
    score: float = Field(description="Cosine score with the group's keeper (1 for the keeper).")
    keeper: bool
    width: int | None = None
    height: int | None = None
    bytes: int | None = None
    added_at: str | None = None
    uri: str | None = None
    thumbnail_url: str
    file_url: str


class DuplicatePair(BaseModel):
    a: str
    b: str
    score: float


class DuplicateGroup(BaseModel):
    keeper: str = Field(description="The member suggested to keep, by the `keep` rule.")
    centre: str = Field(description="The image every other member is a copy of.")
    members: list[DuplicateMember] = Field(description="The keeper first, then by score.")
    pairs: list[DuplicatePair] = Field(description="Every pair of members at or above the threshold.")


class DuplicatePage(BaseModel):
    total: int = Field(description="Groups in the whole scan.")
    offset: int
    limit: int
    summary: dict[str, Any] = Field(
        description="groups, images_in_groups, removable_images and removable_bytes (what removing "
        "all but the keepers frees), threshold and its source, keep, views, scanned, seconds."
    )
    groups: list[DuplicateGroup]


class ScanCache:
    """The last few scans, by their parameters and the state of the collection they saw. One scan
    runs at a time (a scan reads every stored vector; the same request twice waits for the first);
    a scan that was running when the collection changed through this API is not kept; a kept scan
    is dropped after KEEP_S, so changes made by another process (the CLI) show within that time."""

    def __init__(self, size: int = KEPT_SCANS, keep_s: float = KEEP_S) -> None:
        self._size = size
        self._keep_s = keep_s
        self._scans: OrderedDict[tuple[Any, ...], tuple[float, DuplicateReport]] = OrderedDict()
        self._lock = threading.Lock()
        self._scanning = threading.Lock()
        self._generation = 0

    def get_or_scan(self, key: tuple[Any, ...], scan: Callable[[], DuplicateReport]) -> DuplicateReport:
        with self._scanning:
            with self._lock:
                kept = self._scans.get(key)
                if kept is not None and time.monotonic() - kept[0] < self._keep_s:
                    self._scans.move_to_end(key)
                    return kept[1]
                generation = self._generation
            report = scan()
            with self._lock:
                if generation == self._generation:
                    self._scans[key] = (time.monotonic(), report)
                    while len(self._scans) > self._size:
                        self._scans.popitem(last=False)
            return report

    def clear(self) -> None:
        with self._lock:
            self._scans.clear()
            self._generation += 1


@router.get(
    "/duplicates",
    response_model=DuplicatePage,
    summary="Groups of images that are copies of each other, each with a suggested keeper",
    responses=documented("unauthorized", "invalid_request", "invalid_filter", "not_ready", "store_error"),
)
async def duplicates(
    request: Request,
    service: Service,
    threshold: Annotated[
        float | None,
        Query(ge=-1, le=1, description="Default: the collection's calibrated duplicate threshold."),
    ] = None,
    keep: Annotated[
        KeepRule, Query(description="The keeper: largest resolution, largest file or earliest.")
    ] = ("resolution"),
    views: Annotated[
        Literal["auto", "single"],
        Query(
            description="auto: images without a copy are read again and searched with 7 more views, "
            "up to 20,000 images (`imagefinder duplicates --views adaptive` beyond); single: stored "
            "vectors only."
        ),
    ] = "auto",
    where: Annotated[list[WhereCondition] | None, Query(description="Only images with field=value.")] = None,
    across: Annotated[list[WhereCondition] | None, Query(description="With against: copies of these")] = None,
    against: Annotated[list[WhereCondition] | None, Query(description="... among these images.")] = None,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> DuplicatePage:
    filters = [parse_where(conditions or []) or None for conditions in (where, across, against)]
    space = await run_in_threadpool(lambda: service.store.search_space)
    count = await run_in_threadpool(service.count)
    key = (id(service), count, space.version, threshold, keep, views, *(_frozen(f) for f in filters))
    cache: ScanCache = request.app.state.duplicate_scans
    finder = _finder(service)
    where_, across_, against_ = filters
    report = await run_in_threadpool(
        cache.get_or_scan, key, lambda: finder.find(threshold, where_, across_, against_, keep, views)
    )
    groups = report.groups[offset : offset + limit]
    return DuplicatePage(
        total=len(report.groups),
        offset=offset,
        limit=limit,
        summary=report.summary,
        groups=[
            DuplicateGroup(
                keeper=group.keeper,
                centre=group.centre,
                members=[
                    DuplicateMember(
                        **member.to_dict(),
                        keeper=member.id == group.keeper,
                        thumbnail_url=image_url(member.id, "thumbnail"),
                        file_url=image_url(member.id, "file"),
                    )
                    for member in group.members
                ],
                pairs=[DuplicatePair(a=a, b=b, score=round(score, 4)) for a, b, score in group.pairs],
            )
            for group in groups
        ],
    )


def _finder(service: ImageFinder) -> DuplicateFinder:
    from imagefinder.wiring import duplicate_finder

    # Images are read again through the API's own fetcher (its address rules included).
    return duplicate_finder(service, ImageReader(service.limits, service.collection.fetch_url))


def _frozen(conditions: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((conditions or {}).items()))
