"""`imagefinder duplicates`: the groups of copies in the collection (a thin shell over
`duplicates_run.DuplicatesRun`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from imagefinder.cli_support import _settings, _user_errors
from imagefinder.duplicates import KEEP_RULES, VIEWS_UP_TO
from imagefinder.errors import InvalidFilterError, InvalidScanError

_FILTER_HELP = "FIELD=VALUE (repeat: all must match)"


@click.command()
@click.option(
    "--threshold",
    default="auto",
    show_default=True,
    help="auto: the collection's calibrated duplicate threshold; or a cosine score in [-1, 1].",
)
@click.option("--where", multiple=True, metavar="FIELD=VALUE", help=f"Only images matching {_FILTER_HELP}.")
@click.option(
    "--across",
    multiple=True,
    metavar="FIELD=VALUE",
    help=f"With --against: the copies of the images matching {_FILTER_HELP} ...",
)
@click.option(
    "--against",
    multiple=True,
    metavar="FIELD=VALUE",
    help="... found among the images matching these, e.g. --across meta.split=test "
    "--against meta.split=train (test images that leak into a training set; a CSV's columns are "
    "under meta.) or collection=<folder> for a source folder.",
)
@click.option(
    "--keep",
    type=click.Choice(KEEP_RULES),
    default="resolution",
    show_default=True,
    help="Which member of a group to suggest keeping: the largest resolution, the largest file, "
    "or the earliest added (ties go to the next rule, then the id).",
)
@click.option(
    "--views",
    type=click.Choice(["auto", "single", "adaptive"]),
    default="auto",
    show_default=True,
    help=f"adaptive: an image that finds no copy by its stored vector is read again and searched with "
    f"7 more views (finds pasted, screenshotted, rotated copies; 8 encoder runs each). auto: adaptive "
    f"up to {VIEWS_UP_TO:,} images, single beyond.",
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the groups here."
)
@click.option(
    "--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Write one row per member."
)
@click.option(
    "--full",
    is_flag=True,
    help="Search with every image again. By default a scan with the last scan's search space, "
    "filter and a threshold near its own searches only the images added or changed since and "
    "keeps the pairs it found (scans without the second look and without --across only).",
)
@click.option("--quiet", is_flag=True, help="Print the summary only.")
@click.pass_context
@_user_errors
def duplicates(
    ctx: click.Context,
    threshold: str,
    where: tuple[str, ...],
    across: tuple[str, ...],
    against: tuple[str, ...],
    keep: Any,
    views: Any,
    json_path: Path | None,
    csv_path: Path | None,
    full: bool,
    quiet: bool,
) -> None:
    """Find the groups of images that are copies of each other (edited, cropped, recompressed),
    each with a suggested keeper. Nothing is removed: remove with `imagefinder remove` or the
    page's Duplicates view."""
    from imagefinder.duplicates_run import DuplicatesOptions, DuplicatesRun
    from imagefinder.wiring import build_service, build_tracker, duplicate_finder, image_reader, scan_memory

    options = DuplicatesOptions(
        threshold=_threshold(threshold),
        where=_filter("where", where),
        across=_filter("across", across),
        against=_filter("against", against),
        keep=keep,
        views=views,
        full=full,
    )
    settings = _settings(ctx)
    service = build_service(settings)
    try:
        finder = duplicate_finder(service, image_reader(settings), scan_memory(settings))
        result = DuplicatesRun(finder, build_tracker(settings))(options, json_path, csv_path)
    finally:
        service.close()
    report = result.report
    if not quiet:
        for number, group in enumerate(report.groups, 1):
            click.echo(f"group {number}: {len(group.members)} images, keep {group.keeper}")
            for member in group.members:
                mark = "keep" if member.id == group.keeper else "    "
                size = f"{member.width}x{member.height}" if member.width and member.height else "?"
                click.echo(f"  {mark}  {member.score:.4f}  {size:>11}  {member.id}")
    summary = report.summary
    click.echo(
        f"{summary['groups']} groups, {summary['images_in_groups']} images in them; removing all but "
        f"the keepers frees {summary['removable_images']} images ({summary['removable_bytes']:,} bytes). "
        f"threshold {summary['threshold']} ({summary['threshold_source']}), views {summary['views']}, "
        f"{summary['scanned']} images scanned in {summary['seconds']} s"
    )
    if summary["incremental"]:
        click.echo(
            f"carried on from the last scan: {summary['queried']} new or changed images searched, "
            f"{summary['kept_pairs']} pairs kept (--full to search with every image)"
        )
    for path in (json_path, csv_path):
        if path is not None:
            click.echo(f"written to {path}")
    if result.run_id:
        click.echo(f"mlflow: run {result.run_id}")


def _threshold(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidScanError(f"--threshold is auto or a cosine score in [-1, 1], not {text!r}") from None
    if not -1.0 <= value <= 1.0:
        raise InvalidScanError(f"--threshold is a cosine score in [-1, 1], not {value}")
    return value


def _filter(option: str, conditions: tuple[str, ...]) -> dict[str, str] | None:
    from imagefinder.stores.base import parse_where

    try:
        return parse_where(conditions) or None
    except InvalidFilterError as exc:
        raise InvalidFilterError(f"--{option}: {exc}") from None
