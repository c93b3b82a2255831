"""The index use case: index one source as one tracked run, and say what happened.

Read -> embed -> write is the service's (`ImageFinder.index`, over `indexer.Indexer`); around it
this records the run: its parameters, metrics and report files in MLflow, the encoder registered
as a model version, and the run and version remembered with the index (provenance). The report
files are written beside the index whether tracking is on or not. The CLI's `index` command is a
thin shell over it; nothing here prints.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagefinder.blobs import BlobStore
from imagefinder.errors import ModelUnavailableError
from imagefinder.indexer import IndexReport
from imagefinder.service import ImageFinder
from imagefinder.sources import Source
from imagefinder.tracking import ModelRecord, Tracker

REPORT_NAME = "last_index_report.json"
FAILURES_NAME = "last_index_failures.csv"


@dataclass(frozen=True)
class IndexOptions:
    prune: bool = True  # remove images of this source that it no longer lists
    refresh: bool = False  # download URLs again
    keep_files: Path | None = None  # keep the originals here, named by content hash


@dataclass(frozen=True)
class IndexRunResult:
    report: IndexReport
    count: int  # images in the index afterwards
    report_path: Path
    failures_path: Path
    run_id: str | None
    model: ModelRecord | None
    # Why the encoder could not be registered, when it could not (not an error of the run).
    warnings: list[str] = field(default_factory=list)


class IndexRun:
    def __init__(self, service: ImageFinder, tracker: Tracker, report_dir: Path) -> None:
        self._service = service
        self._tracker = tracker
        self._report_dir = report_dir

    def __call__(
        self,
        source: Source,
        options: IndexOptions,
        params: Mapping[str, Any],
        progress: Callable[[int], None] | None = None,
        on_commit: Callable[[Sequence[str]], None] | None = None,
    ) -> IndexRunResult:
        """Index `source`; `params` are what the run records about the configuration."""
        service = self._service
        self._report_dir.mkdir(parents=True, exist_ok=True)
        report_path = self._report_dir / REPORT_NAME
        failures_path = self._report_dir / FAILURES_NAME
        warnings: list[str] = []
        with self._tracker.run("index", f"index {source.name}") as run:
            run.log_params(
                {
                    **params,
                    "source": source.name,
                    "prune": options.prune,
                    "refresh": options.refresh,
                    "keep_files": options.keep_files is not None,
                }
            )
            report = service.index(
                source,
                progress=progress,
                on_commit=on_commit,
                prune_source=source.name if options.prune else None,
                refresh=options.refresh,
                keep_files=BlobStore(options.keep_files.resolve()) if options.keep_files else None,
            )
            count = service.count()
            write_atomically(report_path, json.dumps(report.to_dict(), indent=1))
            write_atomically(failures_path, problems_csv(report.problems))
            run.log_metrics(index_metrics(report, count, service.copy_threshold))
            run.set_tags({f"index.{k}": str(v) for k, v in service.store.index_stats().items()})
            run.log_artifact(report_path)
            run.log_artifact(failures_path)
            try:
                model = self._tracker.register_encoder(service.encoder, run)
            except ModelUnavailableError as exc:  # a model that cannot be registered still indexes
                model = None
                warnings.append(str(exc))
            # The run that last changed the index is the one that built what is served.
            changed = bool(report.indexed or report.pruned)
            service.maintenance.record_provenance(run.run_id if changed else None, model)
        return IndexRunResult(report, count, report_path, failures_path, run.run_id, model, warnings)


def index_metrics(report: IndexReport, count: int, copy_threshold: float) -> dict[str, float]:
    metrics: dict[str, float] = {
        "seen": report.seen,
        "indexed": report.indexed,
        "unchanged": report.unchanged,
        "duplicates": report.duplicates,
        "failed": report.failed,
        "pruned": report.pruned,
        "images_in_index": count,
        "seconds": report.seconds,
        "images_per_s": report.images_per_s,
        "copy_threshold": copy_threshold,
    }
    for reason, n in report.failed_by_reason.items():
        metrics[f"failed.{reason}"] = n
    for stage, seconds in report.stage_seconds.items():
        metrics[f"stage.{stage}.seconds"] = seconds
        if seconds > 0:
            metrics[f"stage.{stage}.images_per_s"] = report.indexed / seconds
    return metrics


def problems_csv(problems: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["where", "category", "reason"])
    writer.writeheader()
    writer.writerows(problems)
    return buffer.getvalue()


def write_atomically(path: Path, text: str) -> None:
    """Written whole or not at all: a kill while writing leaves the previous file."""
    partial = path.with_suffix(path.suffix + ".tmp")
    partial.write_text(text)
    os.replace(partial, path)
