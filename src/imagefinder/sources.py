"""Collection sources: enumerate a folder or a CSV of `url,id` rows as items to index.

A source yields `SourceItem`s (an id, where the image lives, and how to read its bytes) and
`SkippedRow`s for rows it cannot use (missing id, duplicate id or url), so the indexer can report
every one of them. Reading happens later, in the indexer's workers.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from imagefinder.errors import FetchError, SourceError
from imagefinder.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class SourceItem:
    id: str
    uri: str
    read: Callable[[], bytes]
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SkippedRow:
    where: str
    reason: str
    duplicate: bool = False


SourceEntry = SourceItem | SkippedRow


def read_file(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise FetchError(f"{path}: file is {size} bytes, limit is {max_bytes}")
        return path.read_bytes()
    except OSError as exc:
        raise FetchError(f"{path}: {exc.strerror or exc}") from None


class FolderSource:
    """Every image file under `root`, recursively, in a stable order. Id: path relative to root."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        if not root.is_dir():
            raise SourceError(f"{root} is not a folder")
        self.root = root
        self._max_bytes = max_bytes

    def __iter__(self) -> Iterator[SourceEntry]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                image_id = path.relative_to(self.root).as_posix()
                yield SourceItem(
                    image_id,
                    str(path.resolve()),
                    lambda path=path: read_file(path, self._max_bytes),
                )


class HttpFetcher:
    """GET a URL with a timeout, a size cap and retries (with backoff) on 5xx and timeouts."""

    def __init__(self, max_bytes: int, timeout_s: float = 15.0, retries: int = 2) -> None:
        import httpx

        self._client = httpx.Client(timeout=timeout_s, follow_redirects=True)
        self._max_bytes = max_bytes
        self._retries = retries

    def fetch(self, url: str) -> bytes:
        import httpx

        for attempt in range(self._retries + 1):
            try:
                with self._client.stream("GET", url) as response:
                    if response.status_code >= 500 and attempt < self._retries:
                        time.sleep(0.5 * 2**attempt)
                        continue
                    if response.status_code >= 400:
                        raise FetchError(f"{url}: HTTP {response.status_code}")
                    chunks: list[bytes] = []
                    size = 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > self._max_bytes:
                            raise FetchError(f"{url}: larger than the limit of {self._max_bytes} bytes")
                        chunks.append(chunk)
                    return b"".join(chunks)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if attempt == self._retries:
                    raise FetchError(f"{url}: {type(exc).__name__} {exc}".rstrip()) from None
                time.sleep(0.5 * 2**attempt)
        raise FetchError(f"{url}: failed after {self._retries + 1} attempts")


class CsvSource:
    """A CSV with a header naming at least `url` and `id`. Other columns are kept as metadata.

    A url may be http(s), file://, or a local path (relative paths are relative to the CSV).
    The first row with a given id or url wins; later ones are reported as duplicates.
    """

    def __init__(self, path: Path, max_bytes: int, fetcher: HttpFetcher | None = None) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._fetcher = fetcher
        try:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                header = next(csv.reader(handle), [])
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"cannot read {path}: {exc}") from None
        columns = {name.strip().lower() for name in header}
        if not {"url", "id"} <= columns:
            raise SourceError(f"{path}: the header must name the columns url and id, found {header}")

    def __iter__(self) -> Iterator[SourceEntry]:
        seen_ids: set[str] = set()
        seen_urls: set[str] = set()
        with open(self.path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
            for row in reader:
                where = f"{self.path.name} line {reader.line_num}"
                url = (row.get("url") or "").strip()
                image_id = (row.get("id") or "").strip()
                if not url or not image_id:
                    yield SkippedRow(where, "empty url or id")
                    continue
                if image_id in seen_ids:
                    yield SkippedRow(where, f"duplicate id {image_id!r}", duplicate=True)
                    continue
                if url in seen_urls:
                    yield SkippedRow(where, f"duplicate url {url}", duplicate=True)
                    continue
                seen_ids.add(image_id)
                seen_urls.add(url)
                extra = {k: v for k, v in row.items() if k not in ("url", "id") and k and v}
                yield SourceItem(image_id, url, self._reader(url), extra)

    def _reader(self, url: str) -> Callable[[], bytes]:
        scheme = urlparse(url).scheme.lower()
        if scheme in ("http", "https"):
            if self._fetcher is None:
                self._fetcher = HttpFetcher(self._max_bytes)
            fetcher = self._fetcher
            return lambda: fetcher.fetch(url)
        if scheme == "file":
            path = Path(unquote(urlparse(url).path))
        elif scheme == "" or len(scheme) == 1:  # a plain path (or a Windows drive letter)
            path = Path(url)
            if not path.is_absolute():
                path = self.path.parent / path
        else:
            return lambda: _raise(FetchError(f"{url}: unsupported url scheme {scheme!r}"))
        return lambda: read_file(path, self._max_bytes)


def _raise(error: Exception) -> bytes:
    raise error


def open_source(path: Path, max_bytes: int) -> FolderSource | CsvSource:
    """A folder or a `.csv` file, by what `path` is."""
    if path.is_dir():
        return FolderSource(path, max_bytes)
    if path.is_file() and path.suffix.lower() == ".csv":
        return CsvSource(path, max_bytes)
    raise SourceError(f"{path} is neither a folder nor a .csv file")
