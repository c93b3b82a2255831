"""The duplicates use case: scan the collection for groups of copies as one tracked run, and
write the groups where a person (or a script) can act on them.

The scan is `duplicates.DuplicateFinder`'s; around it this records an MLflow run (the threshold,
the counts, the time, the groups as an artifact) and writes the groups as JSON and CSV. The CLI's
`duplicates` command is a thin shell over it; nothing here prints.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagefinder.duplicates import DuplicateFinder, DuplicateReport, KeepRule, Views
from imagefinder.stores.base import Filter
from imagefinder.tracking import Tracker

CSV_COLUMNS = ("group", "id", "keeper", "score", "width", "height", "bytes", "added_at", "uri")


@dataclass(frozen=True)
class DuplicatesOptions:
    threshold: float | None = None  # None: the collection's calibrated threshold
    where: Filter | None = None
    across: Filter | None = None
    against: Filter | None = None
    keep: KeepRule = "resolution"
    views: Views = "auto"
    full: bool = False  # query every image even when the last scan could be carried on


@dataclass(frozen=True)
class DuplicatesRunResult:
    report: DuplicateReport
    run_id: str | None


class DuplicatesRun:
    def __init__(self, finder: DuplicateFinder, tracker: Tracker) -> None:
        self._finder = finder
        self._tracker = tracker

    def __call__(
        self,
        options: DuplicatesOptions,
        json_path: Path | None = None,
        csv_path: Path | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> DuplicatesRunResult:
        with self._tracker.run("duplicates", "duplicates") as run:
            run.log_params(_params(options))
            report = self._finder.find(
                options.threshold,
                options.where,
                options.across,
                options.against,
                options.keep,
                options.views,
                progress,
                options.full,
            )
            summary = report.summary
            run.log_params(
                {
                    "threshold_used": summary["threshold"],
                    "views_used": summary["views"],
                    "incremental": summary["incremental"],
                }
            )
            run.log_metrics(
                {
                    key: float(summary[key])
                    for key in (
                        "groups",
                        "images_in_groups",
                        "removable_images",
                        "removable_bytes",
                        "scanned",
                        "looked_again",
                        "unreadable",
                        "seconds",
                        "queried",
                        "kept_pairs",
                    )
                }
            )
            document = json.dumps(report.to_dict(), indent=1)
            if json_path is not None:
                _write(json_path, document)
            if csv_path is not None:
                _write(csv_path, groups_csv(report))
            with tempfile.TemporaryDirectory() as scratch:
                artifact = Path(scratch) / "duplicates.json"
                artifact.write_text(document)
                run.log_artifact(artifact)
            return DuplicatesRunResult(report, run.run_id)


def groups_csv(report: DuplicateReport) -> str:
    """One row per member of every group, the keeper marked."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for number, group in enumerate(report.groups, 1):
        for member in group.members:
            writer.writerow(
                [
                    number,
                    member.id,
                    member.id == group.keeper,
                    member.score,
                    member.width,
                    member.height,
                    member.bytes,
                    member.added_at,
                    member.uri,
                ]
            )
    return out.getvalue()


def _params(options: DuplicatesOptions) -> dict[str, Any]:
    return {
        "threshold": "auto" if options.threshold is None else options.threshold,
        "keep": options.keep,
        "views": options.views,
        "full": options.full,
        "where": json.dumps(options.where or {}),
        "across": json.dumps(options.across or {}),
        "against": json.dumps(options.against or {}),
    }


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8", newline="") as handle:  # the CSV writer's own line ends
        handle.write(text)
    partial.replace(path)
