"""Ingestion: a CSV of URLs served by a real local HTTP server, re-runs, kept files, folder sync.
The encoder is the deterministic fake: what is tested here is the bookkeeping."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imagefinder.blobs import BlobStore
from imagefinder.fetch import FetchSettings, HttpFetcher
from imagefinder.images import ImageLimits
from imagefinder.service import ImageFinder
from imagefinder.sources import CsvSource, FolderSource
from imagefinder.stores.embedded import EmbeddedStore
from tests.factories import FakeEncoder, encode, gradient
from tests.http_server import ImageServer

LIMITS = ImageLimits(max_pixels=4_000_000, max_bytes=2_000_000)
IMAGES = {f"p{i}.jpg": encode(gradient(i, (160, 120))) for i in range(12)}
IMAGES["same-as-p0.jpg"] = IMAGES["p0.jpg"]


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with ImageServer(IMAGES, slow_s=2.0) as running:
        yield running


def service_at(path: Path) -> ImageFinder:
    return ImageFinder(FakeEncoder(), EmbeddedStore(path), LIMITS, batch_size=4)


def fetcher() -> HttpFetcher:
    return HttpFetcher(FetchSettings(max_bytes=LIMITS.max_bytes, timeout_s=0.5, retries=1, backoff_s=0.01))


def write_csv(path: Path, server: ImageServer) -> Path:
    rows = ["url,id,shop"]
    rows += [f"{server.url(f'/img/p{i}.jpg')},img{i},north" for i in range(8)]
    rows += [
        f"{server.url('/flaky/p8.jpg')},img8,south",  # 500 once, then fine
        f"{server.url('/redirect/p9.jpg')},img9,",  # a redirect, then fine
        f"{server.url('/img/p10.jpg')},img1,",  # duplicate id (line 12)
        f"{server.url('/img/p1.jpg')},other,",  # duplicate url (line 13)
        f"{server.url('/img/same-as-p0.jpg')},copy,",  # duplicate content of img0
        f"{server.url('/missing')},gone,",  # 404
        f"{server.url('/always500')},broken,",  # 500 after every retry
        f"{server.url('/html')},page,",  # text/html
        f"{server.url('/html-as-jpeg')},liar,",  # HTML sent as image/jpeg
        f"{server.url('/truncated.jpg')},cut,",  # a truncated JPEG
        f"{server.url('/slow/p11.jpg')},slow,",  # times out
        f"{server.url('/img/p11.jpg')},,",  # empty id (line 21)
        "http:///nohost.jpg,nohost,",  # malformed url
        "ftp://example.org/a.jpg,ftp,",  # unsupported scheme
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_of_urls_indexes_good_rows_once_and_reports_the_rest(tmp_path: Path, server: ImageServer) -> None:
    service = service_at(tmp_path / "index")
    report = service.index(CsvSource(write_csv(tmp_path / "list.csv", server), LIMITS.max_bytes, fetcher()))
    store = service.store
    assert sorted(store.ids()) == sorted([f"img{i}" for i in range(10)])  # type: ignore[attr-defined]
    assert (report.seen, report.indexed, report.duplicates, report.failed) == (22, 10, 3, 9)
    assert dict(report.failed_by_reason) == {"fetch": 5, "corrupt": 1, "invalid_row": 3}
    by_where = {p["where"]: p for p in report.problems}
    assert "duplicate id 'img1'" in by_where["list.csv line 12"]["reason"]
    assert "duplicate url" in by_where["list.csv line 13"]["reason"]
    assert "same content as 'img0'" in by_where[server.url("/img/same-as-p0.jpg")]["reason"]
    assert "HTTP 404" in by_where[server.url("/missing")]["reason"]
    assert "content-type text/html" in by_where[server.url("/html")]["reason"]
    assert "no image signature" in by_where[server.url("/html-as-jpeg")]["reason"]
    assert "Timeout" in by_where[server.url("/slow/p11.jpg")]["reason"]
    assert by_where["list.csv line 21"]["reason"] == "empty url or id"
    assert "no host" in by_where["list.csv line 22"]["reason"]
    assert "unsupported url scheme 'ftp'" in by_where["list.csv line 23"]["reason"]
    assert server.hits["/missing"] == 1 and server.hits["/flaky/p8.jpg"] == 2
    payload = store.get("img8")
    assert payload is not None and payload["meta"] == {"shop": "south"}
    assert payload["uri"] == server.url("/flaky/p8.jpg") and len(payload["hash"]) == 64


def test_rerunning_a_csv_downloads_nothing_already_indexed(tmp_path: Path, server: ImageServer) -> None:
    csv_path = write_csv(tmp_path / "list.csv", server)
    service = service_at(tmp_path / "index")
    service.index(CsvSource(csv_path, LIMITS.max_bytes, fetcher()))
    before = sum(server.hits[f"/img/p{i}.jpg"] for i in range(8))
    again = service.index(CsvSource(csv_path, LIMITS.max_bytes, fetcher()))
    assert (again.indexed, again.unchanged) == (0, 10)
    assert sum(server.hits[f"/img/p{i}.jpg"] for i in range(8)) == before
    refreshed = service.index(CsvSource(csv_path, LIMITS.max_bytes, fetcher()), refresh=True)
    assert (refreshed.indexed, refreshed.unchanged) == (0, 10)
    assert sum(server.hits[f"/img/p{i}.jpg"] for i in range(8)) == before + 8
    assert service.count() == 10


def test_keep_files_keeps_each_original_once(tmp_path: Path, server: ImageServer) -> None:
    service = service_at(tmp_path / "index")
    kept = BlobStore(tmp_path / "kept")
    service.index(
        CsvSource(write_csv(tmp_path / "list.csv", server), LIMITS.max_bytes, fetcher()), keep_files=kept
    )
    files = sorted((tmp_path / "kept").rglob("*.jpg"))
    assert len(files) == 10
    payload = service.store.get("img3")
    assert payload is not None and Path(payload["file"]).read_bytes() == IMAGES["p3.jpg"]


def test_folder_sync_adds_changes_and_prunes(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        (folder / f"p{i}.jpg").write_bytes(IMAGES[f"p{i}.jpg"])
    (folder / "sub" / "s.jpg").write_bytes(IMAGES["p5.jpg"])
    service = service_at(tmp_path / "index")
    source = FolderSource(folder, LIMITS.max_bytes)
    first = service.index(source, prune_source=source.name)
    assert (first.indexed, first.pruned) == (6, 0)

    (folder / "p1.jpg").unlink()  # deleted
    (folder / "sub" / "s.jpg").unlink()
    (folder / "p2.jpg").write_bytes(IMAGES["p6.jpg"])  # changed
    (folder / "new.jpg").write_bytes(IMAGES["p7.jpg"])  # added
    (folder / "moved.jpg").write_bytes(IMAGES["p5.jpg"])  # s.jpg moved: same bytes, new path
    second = service.index(source, prune_source=source.name)
    assert (second.indexed, second.unchanged, second.pruned, second.duplicates) == (3, 3, 2, 0)
    assert sorted(service.store.ids()) == ["moved.jpg", "new.jpg", "p0.jpg", "p2.jpg", "p3.jpg", "p4.jpg"]  # type: ignore[attr-defined]
    assert service.search_bytes(IMAGES["p6.jpg"], k=1)[0].id == "p2.jpg"


def test_pruning_touches_only_its_own_folder(tmp_path: Path) -> None:
    service = service_at(tmp_path / "index")
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / f"{name}.jpg").write_bytes(IMAGES["p1.jpg" if name == "a" else "p2.jpg"])
        source = FolderSource(folder, LIMITS.max_bytes)
        service.index(source, prune_source=source.name)
    (tmp_path / "a" / "a.jpg").unlink()
    source = FolderSource(tmp_path / "a", LIMITS.max_bytes)
    assert service.index(source, prune_source=source.name).pruned == 1
    assert service.store.ids() == ["b.jpg"]  # type: ignore[attr-defined]


def test_unchanged_files_are_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        (folder / f"p{i}.jpg").write_bytes(IMAGES[f"p{i}.jpg"])
    service = service_at(tmp_path / "index")
    service.index(FolderSource(folder, LIMITS.max_bytes))
    reads: list[Path] = []
    import imagefinder.sources as sources

    original = sources.read_file
    monkeypatch.setattr(sources, "read_file", lambda path, limit: reads.append(path) or original(path, limit))
    report = service.index(FolderSource(folder, LIMITS.max_bytes))
    assert report.unchanged == 4 and reads == []
