"""Evaluation runs: index a collection (or use the current index), search every query, score.

Two kinds of ground truth:
- a CSV `query_file,expected_collection_file` (several rows per query allowed) with a folder of
  query images; file names are compared by basename, as the dev benchmark's scorer does;
- a labelled folder (one subfolder per class): leave-one-out, every image queries all the others,
  and the relevant ones are those of its class.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imagefinder.errors import SourceError
from imagefinder.evaluation.metrics import Ranked, full_report
from imagefinder.images import IMAGE_SUFFIXES
from imagefinder.service import ImageFinder
from imagefinder.sources import FolderSource

ServiceFactory = Callable[[Path], ImageFinder]  # store folder -> service using it

# Full rankings give exact mAP; past this many results the tail changes mAP by a negligible amount.
MAX_RANKED = 1000


@dataclass
class Evaluation:
    metrics: dict[str, object]
    truth: dict[str, set[str]]
    rankings: dict[str, Ranked]
    query_paths: dict[str, Path]
    collection_paths: dict[str, Path]
    seconds: dict[str, float] = field(default_factory=dict)


def read_ground_truth(path: Path) -> dict[str, set[str]]:
    truth: dict[str, set[str]] = defaultdict(set)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not {"query_file", "expected_collection_file"} <= set(reader.fieldnames or []):
            raise SourceError(f"{path}: needs the columns query_file,expected_collection_file")
        for row in reader:
            truth[os.path.basename(row["query_file"].strip())].add(
                os.path.basename(row["expected_collection_file"].strip())
            )
    return dict(truth)


def read_groups(path: Path, column: str) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if column not in (reader.fieldnames or []) or "query_file" not in (reader.fieldnames or []):
            raise SourceError(f"{path}: needs the columns query_file and {column}")
        return {os.path.basename(row["query_file"]): row[column] for row in reader}


def image_files(folder: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            found[path.relative_to(folder).as_posix()] = path
    return found


def evaluate_ground_truth(
    make_service: ServiceFactory,
    collection: Path | None,
    queries: Path,
    ground_truth: Path,
    groups: dict[str, str] | None = None,
) -> Evaluation:
    """Index `collection` into a temporary store given to `make_service` (when `collection` is
    None, `make_service` returns the service over an existing index), search with every query of
    the ground truth, and score."""
    truth = read_ground_truth(ground_truth)
    query_paths = {os.path.basename(name): path for name, path in image_files(queries).items()}
    with tempfile.TemporaryDirectory(prefix="imagefinder-eval-") as scratch:
        service = make_service(Path(scratch) / "index")
        try:
            seconds = _index(service, collection)
            started = time.perf_counter()
            k = min(service.count(), MAX_RANKED)
            rankings: dict[str, Ranked] = {}
            for name in sorted(truth):
                path = query_paths.get(name)
                if path is None:
                    continue  # a missing query scores 0, as in the dev benchmark's scorer
                results = service.search_bytes(path.read_bytes(), k, str(path))
                rankings[name] = [(os.path.basename(r.id), r.score) for r in results]
            seconds["search"] = time.perf_counter() - started
            collection_paths = _collection_paths(service, collection)
        finally:
            service.close()
    metrics = full_report(truth, rankings, groups)
    return Evaluation(metrics, truth, rankings, query_paths, collection_paths, seconds)


def evaluate_labelled(make_service: ServiceFactory, labelled: Path) -> Evaluation:
    """Leave-one-out over a folder with one subfolder per class."""
    files = image_files(labelled)
    label = {name: name.split("/", 1)[0] for name in files if "/" in name}
    if len(set(label.values())) < 2:
        raise SourceError(f"{labelled} needs at least two class subfolders with images")
    members: dict[str, set[str]] = defaultdict(set)
    for name, cls in label.items():
        members[cls].add(name)
    truth = {name: members[cls] - {name} for name, cls in label.items() if len(members[cls]) > 1}
    with tempfile.TemporaryDirectory(prefix="imagefinder-eval-") as scratch:
        service = make_service(Path(scratch) / "index")
        try:
            seconds = _index(service, labelled)
            started = time.perf_counter()
            k = min(service.count() - 1, MAX_RANKED)
            rankings = {
                name: [(r.id, r.score) for r in service.search_id(name, k, exclude_self=True)]
                for name in sorted(truth)
            }
            seconds["search"] = time.perf_counter() - started
        finally:
            service.close()
    metrics = full_report(truth, rankings, {name: label[name] for name in truth})
    return Evaluation(metrics, truth, rankings, dict(files), dict(files), seconds)


def _index(service: ImageFinder, collection: Path | None) -> dict[str, float]:
    if collection is None:
        return {"index": 0.0}
    report = service.index(FolderSource(collection, service.limits.max_bytes))
    return {"index": report.seconds, "images": float(report.indexed)}


def _collection_paths(service: ImageFinder, collection: Path | None) -> dict[str, Path]:
    if collection is not None:
        return {os.path.basename(name): path for name, path in image_files(collection).items()}
    paths = {}
    for image_id in service.store.ids():  # type: ignore[attr-defined]
        payload = service.store.get(image_id) or {}
        uri = str(payload.get("uri", ""))
        if uri and os.path.isfile(uri):
            paths[os.path.basename(image_id)] = Path(uri)
    return paths
