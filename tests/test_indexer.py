"""Indexing logic with a deterministic fake encoder and real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagefinder.images import ImageLimits
from imagefinder.service import ImageFinder
from imagefinder.sources import CsvSource, FolderSource
from imagefinder.stores.embedded import EmbeddedStore
from imagefinder.wiring import compose_service
from tests.factories import FakeEncoder, encode, gradient, png_bomb

LIMITS = ImageLimits(max_pixels=1_000_000, max_bytes=2_000_000)


def make_service(tmp_path: Path, batch_size: int = 4) -> tuple[ImageFinder, FakeEncoder]:
    encoder = FakeEncoder()
    return compose_service(encoder, EmbeddedStore(tmp_path / "index"), LIMITS, batch_size=batch_size), encoder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    for i in range(6):
        (root / f"p{i}.jpg").write_bytes(encode(gradient(i)))
    (root / "sub" / "s.png").write_bytes(encode(gradient(10), "PNG"))
    (root / "sub" / "deeper" / "copy.jpg").write_bytes((root / "p0.jpg").read_bytes())  # same bytes
    (root / "sub" / "broken.jpg").write_bytes(encode(gradient(11))[:200])
    (root / "sub" / "bomb.png").write_bytes(png_bomb())
    (root / "notes.txt").write_text("not an image, and not an image suffix")
    (root / ".hidden.jpg").write_bytes(encode(gradient(12)))
    return root


def test_indexes_folder_recursively_and_reports_every_skip(tmp_path: Path, folder: Path) -> None:
    service, encoder = make_service(tmp_path)
    report = service.index(FolderSource(folder, LIMITS.max_bytes))
    assert report.seen == 10
    assert (report.indexed, report.duplicates, report.failed) == (7, 1, 2)
    assert service.count() == 7
    assert max(encoder.calls) <= 4  # batched at batch_size
    reasons = {p["where"].rsplit("/", 1)[-1]: p["reason"] for p in report.problems}
    assert "copy.jpg" in reasons and "p0.jpg" in reasons["copy.jpg"]
    assert "broken.jpg" in reasons and "cannot" in reasons["broken.jpg"]
    assert "bomb.png" in reasons and "pixels, limit is" in reasons["bomb.png"]
    # ids are paths relative to the folder; the payload says where the file is.
    payload = service.store.get("sub/s.png")
    assert payload is not None and payload["uri"].endswith("sub/s.png")
    assert payload["model"] == "fake" and payload["width"] == 96 and len(payload["hash"]) == 64


def test_an_image_finds_itself_first(tmp_path: Path, folder: Path) -> None:
    service, _ = make_service(tmp_path)
    service.index(FolderSource(folder, LIMITS.max_bytes))
    results = service.search_bytes((folder / "p3.jpg").read_bytes(), k=3)
    # 1e-4: the stored vector is float16, the query float32
    assert results[0].id == "p3.jpg" and results[0].score == pytest.approx(1.0, abs=1e-4)
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)


def test_rerun_skips_unchanged_and_reembeds_changed(tmp_path: Path, folder: Path) -> None:
    service, encoder = make_service(tmp_path)
    service.index(FolderSource(folder, LIMITS.max_bytes))
    encoder.calls.clear()
    again = service.index(FolderSource(folder, LIMITS.max_bytes))
    assert (again.indexed, again.unchanged) == (0, 7) and encoder.calls == []
    (folder / "p1.jpg").write_bytes(encode(gradient(99)))
    third = service.index(FolderSource(folder, LIMITS.max_bytes))
    assert (third.indexed, third.unchanged) == (1, 6)
    assert service.search_bytes(encode(gradient(99)), k=1)[0].id == "p1.jpg"


def test_csv_source_reports_bad_and_duplicate_rows(tmp_path: Path, folder: Path) -> None:
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(
        "url,id,source\n"
        f"{folder / 'p0.jpg'},first,shop\n"
        "photos/p1.jpg,second,\n"  # relative to the CSV's folder
        f"{folder / 'p2.jpg'},first,\n"  # duplicate id
        f"{folder / 'p0.jpg'},third,\n"  # duplicate url
        ",empty-url,\n"
        f"{folder / 'missing.jpg'},missing,\n"
        f"file://{folder / 'p4.jpg'},fourth,\n"
    )
    service, _ = make_service(tmp_path)
    report = service.index(CsvSource(csv_path, LIMITS.max_bytes))
    assert sorted(service.store.ids() if hasattr(service.store, "ids") else []) == [
        "first",
        "fourth",
        "second",
    ]
    assert (report.indexed, report.duplicates, report.failed) == (3, 2, 2)
    wheres = [p["where"] for p in report.problems]
    assert "list.csv line 4" in wheres and "list.csv line 5" in wheres and "list.csv line 6" in wheres
    first = service.store.get("first")
    assert first is not None and first["meta"] == {"source": "shop"}


def test_csv_without_url_column_is_refused(tmp_path: Path) -> None:
    from imagefinder.errors import SourceError

    bad = tmp_path / "bad.csv"
    bad.write_text("path,name\na.jpg,a\n")
    with pytest.raises(SourceError, match="url and id"):
        CsvSource(bad, 1000)


def test_remove(tmp_path: Path, folder: Path) -> None:
    service, _ = make_service(tmp_path)
    service.index(FolderSource(folder, LIMITS.max_bytes))
    assert service.collection.remove(["p0.jpg", "nope"]) == 1
    assert all(r.id != "p0.jpg" for r in service.search_bytes((folder / "p0.jpg").read_bytes(), k=10))


def test_files_renamed_in_a_ring_keep_every_image(tmp_path: Path) -> None:
    """f0 takes f1's bytes, f1 takes f2's, ..., the last takes f0's: each new content is held by
    another stored image whose own content is being replaced in the same run; none is a duplicate."""
    root = tmp_path / "ring"
    root.mkdir()
    contents = [encode(gradient(40 + i)) for i in range(8)]
    for i, data in enumerate(contents):
        (root / f"f{i}.jpg").write_bytes(data)
    service, _ = make_service(tmp_path)
    service.index(FolderSource(root, LIMITS.max_bytes))
    for i in range(8):
        (root / f"f{i}.jpg").write_bytes(contents[(i + 1) % 8])
    report = service.index(FolderSource(root, LIMITS.max_bytes))
    assert (report.indexed, report.duplicates, report.failed) == (8, 0, 0)
    assert service.count() == 8
    for i in range(8):
        assert service.search_bytes(contents[(i + 1) % 8], k=1)[0].id == f"f{i}.jpg"


def test_a_folder_of_parquet_parts_is_a_parquet_source(tmp_path: Path, folder: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from imagefinder.sources import ParquetSource, open_source

    lake = tmp_path / "lake"
    lake.mkdir()
    rows = {"url": [str(folder / "p1.jpg"), str(folder / "p2.jpg")], "id": [1, 2], "tag": ["a", "b"]}
    pq.write_table(pa.table(rows), lake / "part-0.PARQUET")
    (lake / "_SUCCESS").write_text("")  # as Spark writes it
    pq.write_table(pa.table(rows), lake / "_metadata")
    source = open_source(lake, LIMITS.max_bytes)
    assert isinstance(source, ParquetSource)
    service, _ = make_service(tmp_path)
    report = service.index(source)
    assert (report.indexed, report.failed) == (2, 0)
    assert service.store.get("1")["meta"] == {"tag": "a"}  # numeric ids read as text
    # A folder of images that also holds a Parquet file is a folder of images.
    (folder / "list.parquet").write_bytes((lake / "part-0.PARQUET").read_bytes())
    assert not isinstance(open_source(folder, LIMITS.max_bytes), ParquetSource)
