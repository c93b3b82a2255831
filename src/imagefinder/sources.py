"""Collection sources: enumerate a folder or a CSV of `url,id` rows as items to index.

A source yields `SourceItem`s (an id, where the image lives, how to read its bytes, and a cheap
"stamp" that tells whether it changed since last time) and `SkippedRow`s for rows it cannot use
(missing or malformed url or id, duplicate id or url), each with where it was. Reading happens
later, in the indexer's workers.
"""

from __future__ import annotations

import csv
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from imagefinder.errors import FetchError, SourceError
from imagefinder.fetch import FetchSettings, HttpFetcher
from imagefinder.ids import id_problem
from imagefinder.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class SourceItem:
    id: str
    uri: str
    read: Callable[[], bytes]
    # The user's own columns (a CSV's extra columns), kept apart from ours under "meta".
    meta: Mapping[str, str] = field(default_factory=dict)
    # Which folder or CSV the item came from, so a folder sync prunes only its own images.
    collection: str | None = None
    # Cheap change detector known before reading: "mtime_ns:size" for files; None for URLs.
    stamp: str | None = None
    remote: bool = False
    # Payload fields carried over from an earlier index generation (its kept copy, when it
    # was first added), for a re-embedding that must not lose them.
    carried: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SkippedRow:
    where: str
    reason: str
    duplicate: bool = False
    # The source could not list everything (an unreadable subfolder): pruning must not run,
    # or it would delete the images it failed to see.
    incomplete: bool = False


SourceEntry = SourceItem | SkippedRow


def read_file(path: Path, max_bytes: int) -> bytes:
    """Read a regular file of at most `max_bytes` (not a FIFO or a device that never ends)."""
    try:
        # Check before opening: opening a FIFO would block until something writes to it.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise FetchError(f"{path}: not a regular file")
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise FetchError(f"{path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise FetchError(f"{path}: file is larger than the limit of {max_bytes} bytes")
    return data


def file_stamp(path: Path) -> str | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return f"{info.st_mtime_ns}:{info.st_size}"


class FolderSource:
    """Every image file under `root`, recursively, in a stable order. Id: path relative to root.

    `name` identifies the folder in payloads (`source`), so a sync can prune the images whose files
    were deleted without touching images that came from elsewhere."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        if not root.is_dir():
            raise SourceError(f"{root} is not a folder")
        self.root = root.resolve()
        self.name = str(self.root)
        self._max_bytes = max_bytes

    def __iter__(self) -> Iterator[SourceEntry]:
        unreadable: list[OSError] = []
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=unreadable.append):
            while unreadable:
                error = unreadable.pop()
                yield SkippedRow(str(error.filename), f"cannot list: {error.strerror}", incomplete=True)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                image_id = path.relative_to(self.root).as_posix()
                problem = id_problem(image_id)
                if problem:
                    yield SkippedRow(str(path).encode("utf-8", "replace").decode(), problem)
                    continue
                yield SourceItem(
                    image_id,
                    str(path),
                    lambda path=path: read_file(path, self._max_bytes),
                    collection=self.name,
                    stamp=file_stamp(path),
                )
        for error in unreadable:
            yield SkippedRow(str(error.filename), f"cannot list: {error.strerror}", incomplete=True)


class CsvSource:
    """A CSV with a header naming at least `url` and `id`. Other columns are kept as metadata.

    A url may be http(s), file://, or a local path (relative paths are relative to the CSV).
    The first row with a given id or url wins; later ones are reported as duplicates.
    """

    def __init__(self, path: Path, max_bytes: int, fetcher: HttpFetcher | None = None) -> None:
        # Absolute, so stored file paths still work for a server started elsewhere.
        self.path = path.resolve()
        self.name = str(self.path)
        self._items = _TableItems(self.path.parent, self.name, max_bytes, fetcher)
        try:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                header = next(csv.reader(handle), [])
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"cannot read {path}: {exc}") from None
        columns = {name.strip().lower() for name in header}
        if not {"url", "id"} <= columns:
            raise SourceError(f"{path}: the header must name the columns url and id, found {header}")

    def __iter__(self) -> Iterator[SourceEntry]:
        with open(self.path, newline="", encoding="utf-8-sig", errors="replace") as handle:
            reader = csv.DictReader(handle)
            reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
            rows = ((f"{self.path.name} line {reader.line_num}", row) for row in reader)
            yield from _entries(rows, self._items.item)


class ParquetSource:
    """A Parquet file, or a folder of Parquet files (read in name order), with columns `url` and
    `id`, for sources of many millions of rows: the same rules as a CSV, read in batches."""

    def __init__(self, path: Path, max_bytes: int, fetcher: HttpFetcher | None = None) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SourceError("Parquet sources need pyarrow: pip install 'imagefinder[parquet]'") from None
        self.path = path.resolve()
        self.name = str(self.path)
        self._parts = parquet_parts(self.path)
        base = self.path if self.path.is_dir() else self.path.parent
        self._items = _TableItems(base, self.name, max_bytes, fetcher)
        for part in self._parts:
            try:
                columns = {name.strip().lower() for name in pq.ParquetFile(part).schema_arrow.names}
            except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise SourceError(f"cannot read {part}: {exc}") from None
            if not {"url", "id"} <= columns:
                raise SourceError(f"{part}: the columns must include url and id, found {sorted(columns)}")

    def __iter__(self) -> Iterator[SourceEntry]:
        yield from _entries(self._rows(), self._items.item)

    def _rows(self) -> Iterator[tuple[str, dict[str, str]]]:
        import pyarrow.parquet as pq

        for part in self._parts:
            row_number = 0
            for batch in pq.ParquetFile(part).iter_batches(batch_size=8192):
                names = [name.strip().lower() for name in batch.schema.names]
                for values in zip(*(column.to_pylist() for column in batch.columns), strict=True):
                    row_number += 1
                    pairs = zip(names, values, strict=True)
                    # url and id may be stored as numbers; other columns are kept when they are
                    # text, as a CSV's are (binary or nested values are not metadata).
                    row = {
                        name: str(value) if name in ("url", "id") else value
                        for name, value in pairs
                        if value is not None and (name in ("url", "id") or isinstance(value, str))
                    }
                    yield f"{part.name} row {row_number}", row


def parquet_parts(path: Path) -> list[Path]:
    """A Parquet file, or the data files of a folder of parts, in name order."""
    if not path.is_dir():
        return [path]
    return sorted(
        part
        for part in path.iterdir()
        if part.is_file() and part.suffix.lower() == ".parquet" and not part.name.startswith((".", "_"))
    )


class _TableItems:
    """Items of a table's rows (CSV or Parquet): a url may be http(s), file://, or a local path,
    relative to the table's folder."""

    def __init__(self, base: Path, collection: str, max_bytes: int, fetcher: HttpFetcher | None) -> None:
        self._base = base
        self._collection = collection
        self._max_bytes = max_bytes
        self._fetcher = fetcher

    def item(self, image_id: str, url: str, meta: dict[str, str]) -> SourceItem:
        scheme = urlparse(url).scheme.lower()
        if scheme in ("http", "https"):
            fetcher = self._http()
            return SourceItem(image_id, url, lambda: fetcher.fetch(url), meta, self._collection, remote=True)
        path = Path(unquote(urlparse(url).path)) if scheme == "file" else Path(url)
        if not path.is_absolute():
            path = self._base / path
        return SourceItem(
            image_id,
            str(path),
            lambda: read_file(path, self._max_bytes),
            meta,
            self._collection,
            stamp=file_stamp(path),
        )

    def _http(self) -> HttpFetcher:
        if self._fetcher is None:
            self._fetcher = HttpFetcher(FetchSettings(max_bytes=self._max_bytes))
        return self._fetcher


def _entries(
    rows: Iterable[tuple[str, Mapping[str, str | None]]],
    item: Callable[[str, str, dict[str, str]], SourceItem],
) -> Iterator[SourceEntry]:
    """Rows of a table (where each is, its columns) -> entries: the first row with a given id or
    url wins; later ones are reported as duplicates; unusable rows are reported as skipped."""
    seen_ids: set[str] = set()
    seen_urls: set[str] = set()
    for where, row in rows:
        url = (row.get("url") or "").strip()
        image_id = (row.get("id") or "").strip()
        problem = _row_problem(url, image_id)
        if problem:
            yield SkippedRow(where, problem)
            continue
        if image_id in seen_ids:
            yield SkippedRow(where, f"duplicate id {image_id!r}", duplicate=True)
            continue
        if url in seen_urls:
            yield SkippedRow(where, f"duplicate url {url}", duplicate=True)
            continue
        seen_ids.add(image_id)
        seen_urls.add(url)
        meta = {
            key: value
            for key, value in row.items()
            if key and key not in ("url", "id") and isinstance(value, str) and value
        }
        yield item(image_id, url, meta)


def _row_problem(url: str, image_id: str) -> str | None:
    if not url or not image_id:
        return "empty url or id"
    problem = id_problem(image_id)
    if problem:
        return problem
    # Found by the property tests: a NUL in a local path made os.stat raise and stop the run.
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return f"the url {url!r} contains control characters"
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https") and not parsed.hostname:
        return f"malformed url {url!r} (no host)"
    if scheme not in ("", "http", "https", "file") and len(scheme) != 1:  # 1: a Windows drive
        return f"unsupported url scheme {scheme!r} in {url!r}"
    return None


Source = FolderSource | CsvSource | ParquetSource


def open_source(path: Path, max_bytes: int, fetcher: HttpFetcher | None = None) -> Source:
    """A folder of images, a `.csv` file, or a `.parquet` file or a folder holding only Parquet
    files, by what `path` is."""
    if path.is_dir():
        if _parquet_folder(path):
            return ParquetSource(path, max_bytes, fetcher)
        return FolderSource(path, max_bytes)
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".csv":
        return CsvSource(path, max_bytes, fetcher)
    if path.is_file() and suffix == ".parquet":
        return ParquetSource(path, max_bytes, fetcher)
    raise SourceError(f"{path} is neither a folder nor a .csv or .parquet file")


def _parquet_folder(path: Path) -> bool:
    """A folder of Parquet parts as Spark, Dask or `export --parquet` write them: at least one
    .parquet file, no image file (their `_SUCCESS` and `_metadata` files are not data)."""
    try:
        names = [entry.name.lower() for entry in os.scandir(path) if entry.is_file()]
    except OSError:
        return False
    images = any(Path(name).suffix in IMAGE_SUFFIXES for name in names)
    return not images and any(name.endswith(".parquet") and not name.startswith((".", "_")) for name in names)
