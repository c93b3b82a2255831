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
from imagefinder.wiring import compose_service
from tests.factories import FakeEncoder, encode, gradient
from tests.http_server import ImageServer

LIMITS = ImageLimits(max_pixels=4_000_000, max_bytes=2_000_000)
IMAGES = {f"p{i}.jpg": encode(gradient(i, (160, 120))) for i in range(12)}
IMAGES["same-as-p0.jpg"] = IMAGES["p0.jpg"]


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with ImageServer(IMAGES, slow_s=5.0) as running:
        yield running


def service_at(path: Path) -> ImageFinder:
    return compose_service(FakeEncoder(), EmbeddedStore(path), LIMITS, batch_size=4)


def fetcher() -> HttpFetcher:
    return HttpFetcher(FetchSettings(max_bytes=LIMITS.max_bytes, timeout_s=1.5, retries=1, backoff_s=0.01))


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


def test_content_moving_between_ids_in_one_run_is_not_a_duplicate(tmp_path: Path) -> None:
    """previous.jpg takes latest.jpg's old bytes while latest.jpg gets new ones: both are
    indexed with their new content, nothing is reported as a duplicate."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "latest.jpg").write_bytes(IMAGES["p1.jpg"])
    (folder / "previous.jpg").write_bytes(IMAGES["p2.jpg"])
    service = service_at(tmp_path / "index")
    service.index(FolderSource(folder, LIMITS.max_bytes))
    (folder / "previous.jpg").write_bytes(IMAGES["p1.jpg"])
    (folder / "latest.jpg").write_bytes(IMAGES["p3.jpg"])
    report = service.index(FolderSource(folder, LIMITS.max_bytes))
    assert (report.indexed, report.duplicates) == (2, 0), report.problems
    assert service.search_bytes(IMAGES["p1.jpg"], k=1)[0].id == "previous.jpg"
    assert service.search_bytes(IMAGES["p3.jpg"], k=1)[0].id == "latest.jpg"


def test_odd_files_are_skipped_and_the_run_goes_on(tmp_path: Path) -> None:
    import os

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(IMAGES["p1.jpg"])
    latin1 = os.fsencode(str(folder)) + b"/caf\xe9.jpg"  # a name that is not UTF-8
    with open(latin1, "wb") as handle:
        handle.write(IMAGES["p2.jpg"])
    os.mkfifo(folder / "pipe.jpg")  # would block a naive reader for ever
    service = service_at(tmp_path / "index")
    report = service.index(FolderSource(folder, LIMITS.max_bytes))
    assert report.indexed == 1 and report.failed == 2
    reasons = " | ".join(p["reason"] for p in report.problems)
    assert "not valid UTF-8" in reasons and "not a regular file" in reasons


def test_an_unreadable_subfolder_blocks_pruning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "top.jpg").write_bytes(IMAGES["p1.jpg"])
    (folder / "sub" / "inner.jpg").write_bytes(IMAGES["p2.jpg"])
    service = service_at(tmp_path / "index")
    source = FolderSource(folder, LIMITS.max_bytes)
    service.index(source, prune_source=source.name)
    real_walk = os.walk

    def walk_failing_on_sub(top, onerror=None, **kwargs):  # type: ignore[no-untyped-def]
        # Tests run as root, for whom permissions do not fail: simulate an unreadable folder.
        for dirpath, dirnames, filenames in real_walk(top, onerror=onerror, **kwargs):
            if "sub" in dirnames:
                dirnames.remove("sub")
                onerror(PermissionError(13, "Permission denied", str(folder / "sub")))
            yield dirpath, dirnames, filenames

    monkeypatch.setattr("imagefinder.sources.os.walk", walk_failing_on_sub)
    report = service.index(source, prune_source=source.name)
    assert report.pruned == 0 and service.store.get("sub/inner.jpg") is not None
    assert report.failed_by_reason == {"unreadable": 1}


def test_moved_folder_and_edited_metadata_update_payloads_without_reembedding(
    tmp_path: Path, server: ImageServer
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(IMAGES["p1.jpg"])
    service = service_at(tmp_path / "index")
    encoder = service.encoder
    service.index(FolderSource(folder, LIMITS.max_bytes))
    moved = folder.rename(tmp_path / "moved")
    encoder.calls.clear()  # type: ignore[attr-defined]
    report = service.index(FolderSource(moved, LIMITS.max_bytes))
    assert report.unchanged == 1 and encoder.calls == []  # type: ignore[attr-defined]
    payload = service.store.get("a.jpg")
    assert payload is not None and payload["collection"] == str(moved.resolve())
    assert payload["uri"] == str(moved.resolve() / "a.jpg")

    csv_path = tmp_path / "list.csv"
    csv_path.write_text(f"url,id,shop\n{server.url('/img/p3.jpg')},x,north\n")
    service.index(CsvSource(csv_path, LIMITS.max_bytes, fetcher()))
    csv_path.write_text(f"url,id,shop\n{server.url('/img/p3.jpg')},x,south\n")
    again = service.index(CsvSource(csv_path, LIMITS.max_bytes, fetcher()))
    assert again.unchanged == 1 and service.store.get("x")["meta"] == {"shop": "south"}  # type: ignore[index]


def test_same_id_from_two_live_folders_is_a_clash_not_a_silent_replace(tmp_path: Path) -> None:
    service = service_at(tmp_path / "index")
    for name, image in (("one", "p1.jpg"), ("two", "p2.jpg")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.jpg").write_bytes(IMAGES[image])
    service.index(FolderSource(tmp_path / "one", LIMITS.max_bytes))
    report = service.index(FolderSource(tmp_path / "two", LIMITS.max_bytes))
    assert report.failed_by_reason == {"id_clash": 1} and "already used" in report.problems[0]["reason"]
    assert service.search_bytes(IMAGES["p1.jpg"], k=1)[0].id == "a.jpg"
