"""The near-duplicates of a collection: groups on real photos with known copies, no chaining
through borderline pairs, the across/against mode, the CLI (with its MLflow run) and the API, and
bad input refused clearly."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from imagefinder.api import create_app
from imagefinder.config import ApiSettings
from imagefinder.duplicates import DuplicateFinder, stars
from imagefinder.duplicates_memory import FileScanMemory, PreviousScan, ScanBasis
from imagefinder.encoders.base import EncoderInfo, l2_normalise
from imagefinder.encoders.onnx_runtime import OnnxEncoder
from imagefinder.errors import InvalidFilterError, InvalidScanError
from imagefinder.images import ImageLimits
from imagefinder.sources import FolderSource
from imagefinder.stores.embedded import EmbeddedStore
from imagefinder.wiring import compose_service
from tests.test_cli import run_cli
from tests.test_real_model import edited_copy

COPIED = ("rocket.jpg", "coffee.png", "chelsea.png")


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, photos: Path) -> Path:
    """The demo photos, a smaller and a cropped copy of three of them, and one re-saved twice."""
    folder = tmp_path_factory.mktemp("with-copies")
    for photo in photos.iterdir():
        shutil.copy(photo, folder / photo.name)
    for name in COPIED:
        stem = Path(name).stem
        (folder / f"{stem}-crop.jpg").write_bytes(edited_copy(photos / name, "crop"))
        (folder / f"{stem}-small.jpg").write_bytes(edited_copy(photos / name, "recompress"))
    return folder


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, real_encoder: OnnxEncoder, collection: Path):  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("dup-home")
    built = compose_service(
        real_encoder, EmbeddedStore(home / "index"), ImageLimits(), thumbnails=home / "thumbnails"
    )
    built.index(FolderSource(collection, 10**8))
    yield built
    built.close()


def true_groups() -> set[frozenset[str]]:
    made = {
        frozenset({name, f"{Path(name).stem}-crop.jpg", f"{Path(name).stem}-small.jpg"}) for name in COPIED
    }
    # scikit-image's stereo pair: two frames of one scene a few centimetres apart, near-identical.
    return made | {frozenset({"motorcycle_left.png", "motorcycle_right.png"})}


def test_groups_of_real_copies_are_found_with_the_largest_kept(service) -> None:  # type: ignore[no-untyped-def]
    report = DuplicateFinder(service.store).find(views="single")
    found = {frozenset(m.id for m in group.members) for group in report.groups}
    assert found == true_groups(), found
    for group in report.groups:
        keeper = next(m for m in group.members if m.id == group.keeper)
        assert group.members[0].id == keeper.id and keeper.score == pytest.approx(1.0, abs=1e-4)
        # The original is the largest of its copies: kept by the default rule.
        assert "-" not in keeper.id and "crop" not in keeper.id
        assert group.pairs and all(score >= report.threshold for _, _, score in group.pairs)
    summary = report.summary
    assert summary["groups"] == 4 and summary["images_in_groups"] == 11 and summary["removable_images"] == 7
    assert summary["removable_bytes"] == sum(
        m.bytes or 0 for g in report.groups for m in g.members if m.id != g.keeper
    )
    assert summary["threshold_source"] == "calibrated"


def test_the_keeper_rule_is_configurable(service) -> None:  # type: ignore[no-untyped-def]
    by_size = DuplicateFinder(service.store).find(keep="size", views="single")
    by_date = DuplicateFinder(service.store).find(keep="earliest", views="single")
    for group in by_size.groups:
        assert max(group.members, key=lambda m: m.bytes or 0).id == group.keeper
    for group in by_date.groups:
        assert min(m.added_at or "" for m in group.members) == next(
            m.added_at for m in group.members if m.id == group.keeper
        )


def test_a_chain_of_borderline_pairs_does_not_become_one_group(tmp_path: Path) -> None:
    """Nine images, each a borderline copy of the next; the ends have nothing in common. The
    pairs connect all nine (connected components: one group); stars keep groups of at most three,
    each member a copy of its centre."""
    rng = np.random.default_rng(3)
    steps = l2_normalise(rng.normal(size=(9, 512)).astype(np.float32))
    chain = l2_normalise(np.stack([steps[i] + steps[i + 1] for i in range(8)] + [steps[8]]))
    store = EmbeddedStore(tmp_path)
    store.bind_encoder(EncoderInfo("t", "1", 512, ""))
    ids = [f"link{i}" for i in range(9)]
    store.upsert(ids, chain, [{"uri": i} for i in ids])
    consecutive = [float(chain[i] @ chain[i + 1]) for i in range(8)]
    threshold = min(consecutive) - 0.01  # every consecutive pair passes, barely
    assert float(chain[0] @ chain[8]) < threshold - 0.3
    report = DuplicateFinder(store).find(threshold=threshold, views="single")
    assert report.groups and max(len(g.members) for g in report.groups) <= 3
    for group in report.groups:
        centre = chain[ids.index(group.centre)]
        assert all(float(chain[ids.index(m.id)] @ centre) >= threshold for m in group.members)
    # What the pairs alone would have joined:
    assert len(stars({(ids[i], ids[i + 1]): consecutive[i] for i in range(8)})) >= 3
    store.close()


def test_the_keeper_is_a_copy_of_every_other_member(tmp_path: Path) -> None:
    """b is a copy of a and of c, which have little in common; a has the most pixels. Keeping a
    and removing "the others" would remove c, no copy of a: the keeper is b."""
    rng = np.random.default_rng(4)
    a, noise = rng.normal(size=(2, 512))
    a /= np.linalg.norm(a)
    other = noise - (noise @ a) * a  # a direction at right angles to a
    c = 0.62 * a + np.sqrt(1 - 0.62**2) * other / np.linalg.norm(other)
    b = (a + c) / np.linalg.norm(a + c)  # 0.9 with each
    store = EmbeddedStore(tmp_path)
    store.bind_encoder(EncoderInfo("t", "1", 512, ""))
    sizes = {"a": 4000, "b": 1000, "c": 2000}
    vectors = np.stack([a, b, c]).astype(np.float32)
    store.upsert(["a", "b", "c"], vectors, [{"width": w, "height": w} for w in sizes.values()])
    (group,) = DuplicateFinder(store).find(threshold=0.85, views="single").groups
    assert {m.id for m in group.members} == {"a", "b", "c"} and group.keeper == "b"
    assert all(m.score >= 0.85 for m in group.members)
    store.close()


def test_across_against_finds_the_copies_of_one_part_in_the_other(
    tmp_path: Path, real_encoder: OnnxEncoder, photos: Path
) -> None:
    """Test images that leak into a training set, told apart by their source folder."""
    train, test = tmp_path / "train", tmp_path / "test"
    train.mkdir()
    test.mkdir()
    for photo in sorted(photos.iterdir())[:8]:
        shutil.copy(photo, train / photo.name)
    leaked = sorted(photos.iterdir())[2]
    (test / "leak.jpg").write_bytes(edited_copy(leaked, "crop"))
    (test / "leak-again.jpg").write_bytes(edited_copy(leaked, "recompress"))
    shutil.copy(sorted(photos.iterdir())[-1], test / "unseen.png")  # in no training folder
    service = compose_service(real_encoder, EmbeddedStore(tmp_path / "index"), ImageLimits())
    service.index(FolderSource(train, 10**8))
    service.index(FolderSource(test, 10**8))
    finder = DuplicateFinder(service.store)
    report = finder.find(
        across={"collection": str(test.resolve())},
        against={"collection": str(train.resolve())},
        views="single",
    )
    members = {m.id for g in report.groups for m in g.members}
    assert members == {"leak.jpg", "leak-again.jpg", leaked.name}, members
    # Pairs always go across: the two test copies are not reported as a pair of their own.
    assert all({a, b} != {"leak.jpg", "leak-again.jpg"} for g in report.groups for a, b, _ in g.pairs)
    with pytest.raises(InvalidScanError):
        finder.find(across={"collection": str(test)})
    service.close()


def test_bad_input_is_refused_clearly(service) -> None:  # type: ignore[no-untyped-def]
    finder = DuplicateFinder(service.store)
    with pytest.raises(InvalidScanError, match=r"\[-1, 1\]"):
        finder.find(threshold=1.5)
    with pytest.raises(InvalidFilterError, match="no image of this collection has the field"):
        finder.find(where={"nosuch": "x"})
    with pytest.raises(InvalidFilterError):
        finder.find(where={"bad field!": "x"})


def test_the_cli_writes_json_and_csv_and_records_an_mlflow_run(
    tmp_path: Path, collection: Path, model_cache: Path
) -> None:
    shutil.copytree(model_cache, tmp_path / "models")
    run_cli(tmp_path, "index", str(collection), "--quiet")
    out = run_cli(
        tmp_path,
        "duplicates",
        "--json",
        str(tmp_path / "d.json"),
        "--csv",
        str(tmp_path / "d.csv"),
        tracking=True,
    ).stdout
    assert "4 groups, 11 images in them" in out and "mlflow: run" in out
    document = json.loads((tmp_path / "d.json").read_text())
    assert {frozenset(m["id"] for m in g["members"]) for g in document["groups"]} == true_groups()
    assert all(g["keeper"] in {m["id"] for m in g["members"]} for g in document["groups"])
    assert document["summary"]["removable_images"] == 7
    rows = list(csv.DictReader((tmp_path / "d.csv").open()))
    assert len(rows) == 11 and sum(row["keeper"] == "True" for row in rows) == 4

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("imagefinder")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`imagefinder.kind` = 'duplicates'")
    assert run.data.metrics["groups"] == 4 and float(run.data.params["threshold_used"]) > 0
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "duplicates.json" in artifacts

    for bad in (("--threshold", "1.5"), ("--threshold", "high"), ("--where", "nosuch=1"), ("--where", "x")):
        refused = run_cli(tmp_path, "duplicates", *bad, check=False)
        assert refused.returncode == 1 and "Error:" in refused.stderr and "Traceback" not in refused.stderr


@pytest.fixture(scope="module")
def client(service) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(create_app(service, ApiSettings())) as test_client:
        yield test_client


def test_the_api_pages_through_the_groups(client: TestClient) -> None:
    first = client.get("/duplicates", params={"limit": 2, "views": "single"})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["total"] == 4 and len(body["groups"]) == 2 and body["summary"]["groups"] == 4
    rest = client.get("/duplicates", params={"limit": 2, "offset": 2, "views": "single"}).json()
    groups = body["groups"] + rest["groups"]
    assert {frozenset(m["id"] for m in g["members"]) for g in groups} == true_groups()
    member = groups[0]["members"][0]
    assert member["keeper"] and client.get(member["thumbnail_url"]).status_code == 200


def test_the_api_refuses_bad_parameters_with_the_error_shape(client: TestClient) -> None:
    for params, code in (
        ({"threshold": 1.5}, "invalid_request"),
        ({"keep": "biggest"}, "invalid_request"),
        ({"where": "nosuch=1"}, "invalid_filter"),
        ({"across": "collection=x"}, "invalid_request"),
    ):
        answer = client.get("/duplicates", params=params)
        assert answer.status_code == 422 and answer.json()["error"]["code"] == code, (params, answer.text)


# -- incremental scans ----------------------------------------------------------------------------


def planted_store(
    path: Path, rng: np.random.Generator, originals: int = 200
) -> tuple[EmbeddedStore, np.ndarray]:
    """Random images and, for the first ten, a near copy each (about 0.95 with its original)."""
    base = l2_normalise(rng.normal(size=(originals, 64)).astype(np.float32))
    copies = l2_normalise(base[:10] + 0.3 * l2_normalise(rng.normal(size=(10, 64)).astype(np.float32)))
    store = EmbeddedStore(path)
    store.bind_encoder(EncoderInfo("t", "1", 64, ""))
    ids = [f"o{i:03d}" for i in range(originals)] + [f"c{i:03d}" for i in range(10)]
    store.upsert(ids, np.concatenate([base, copies]), [{"hash": f"h-{i}"} for i in ids])
    return store, base


def group_sets(report) -> set[frozenset[str]]:  # type: ignore[no-untyped-def]
    return {frozenset(m.id for m in g.members) for g in report.groups}


def test_a_later_scan_searches_only_what_was_added_or_changed_and_matches_a_full_scan(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    store, base = planted_store(tmp_path / "index", rng)
    memory = FileScanMemory(tmp_path / "scan.npz")
    finder = DuplicateFinder(store, memory=memory)
    first = finder.find(threshold=0.8, views="single")
    assert first.summary["incremental"] is False and first.summary["queried"] == 210
    assert group_sets(first) == {frozenset({f"o{i:03d}", f"c{i:03d}"}) for i in range(10)}

    # Two new copies of old images, three new unrelated images, one copy removed, and one old
    # image replaced under its id by a copy of another.
    new = l2_normalise(base[[20, 21]] + 0.3 * l2_normalise(rng.normal(size=(2, 64)).astype(np.float32)))
    unrelated = l2_normalise(rng.normal(size=(3, 64)).astype(np.float32))
    store.upsert(["n0", "n1", "u0", "u1", "u2"], np.concatenate([new, unrelated]), [{"hash": "x"}] * 5)
    store.delete(["c003"])
    replaced = l2_normalise(base[[30]] + 0.3 * l2_normalise(rng.normal(size=(1, 64)).astype(np.float32)))
    store.upsert(["c004"], replaced, [{"hash": "h-c004-new"}])

    later = finder.find(threshold=0.8, views="single")
    assert later.summary["incremental"] is True
    assert later.summary["queried"] == 6  # the five new images and the replaced one
    assert later.summary["kept_pairs"] == 8  # the pairs of the ten copies, less c003's and c004's
    full = DuplicateFinder(store).find(threshold=0.8, views="single")
    assert group_sets(later) == group_sets(full)
    assert frozenset({"o020", "n0"}) in group_sets(later) and frozenset({"o030", "c004"}) in group_sets(later)
    assert not any("c003" in group or frozenset({"o004", "c004"}) == group for group in group_sets(later))
    store.close()


def test_a_scan_starts_over_when_its_basis_changed(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    store, _ = planted_store(tmp_path / "index", rng)
    memory = FileScanMemory(tmp_path / "scan.npz")
    finder = DuplicateFinder(store, memory=memory)
    finder.find(threshold=0.8, views="single")
    # A threshold that moved a little (a recalibration) is within the remembered floor.
    assert finder.find(threshold=0.78, views="single").summary["incremental"] is True
    # Below the floor, or another filter, or asked to: a full scan.
    assert finder.find(threshold=0.6, views="single").summary["incremental"] is False
    assert finder.find(threshold=0.6, views="single", full=True).summary["queried"] == 210
    assert finder.find(threshold=0.6, views="single").summary["incremental"] is True
    # A new projection scores every pair anew.
    matrix = np.eye(64, dtype=np.float32)[:, :48]
    store.set_search_space(store.search_space.fitted((np.zeros(64, np.float32), matrix), 210, "test"))
    assert finder.find(threshold=0.6, views="single").summary["incremental"] is False
    # A memory file that cannot be read is a scan to start over, never an error.
    (tmp_path / "scan.npz").write_bytes(b"not gzip")
    report = finder.find(threshold=0.6, views="single")
    assert report.summary["incremental"] is False and len(report.groups) == 10
    store.close()


def test_the_cli_carries_a_scan_on_after_an_index_run_that_kept_the_space(
    tmp_path: Path, collection: Path, model_cache: Path, photos: Path
) -> None:
    shutil.copytree(model_cache, tmp_path / "models")
    folder = tmp_path / "photos"
    shutil.copytree(collection, folder)
    run_cli(tmp_path, "index", str(folder), "--quiet")
    first = run_cli(tmp_path, "duplicates", "--views", "single", "--quiet").stdout
    assert "4 groups" in first and "carried on" not in first
    again = run_cli(tmp_path, "duplicates", "--views", "single", "--quiet").stdout
    assert "4 groups" in again and "carried on from the last scan: 0 new or changed images searched" in again
    assert "carried on" not in run_cli(tmp_path, "duplicates", "--views", "single", "--full").stdout
    # Under 50 images the space is raw cosines (no projection to learn again): after an index
    # run that adds a copy, the next scan searches with that one image and finds its group. (A
    # new projection starts the scan over: test_a_scan_starts_over_when_its_basis_changed.)
    (folder / "astronaut-small.jpg").write_bytes(edited_copy(photos / "astronaut.png", "recompress"))
    run_cli(tmp_path, "index", str(folder), "--quiet")
    after = run_cli(tmp_path, "duplicates", "--views", "single", "--quiet").stdout
    assert "5 groups" in after and "carried on from the last scan: 1 new or changed images searched" in after
    full = run_cli(tmp_path, "duplicates", "--views", "single", "--full", "--quiet").stdout
    assert full.splitlines()[0].split(". threshold")[0] == after.splitlines()[0].split(". threshold")[0]


def test_a_group_larger_than_the_neighbours_is_found_whole_in_full_and_in_later_scans(tmp_path: Path) -> None:
    """Forty copies of one image: each one's 16 nearest all score above the threshold, so it is
    searched again for more. A new copy added later finds the whole group from its side, as a
    full scan does."""
    rng = np.random.default_rng(8)
    centre = l2_normalise(rng.normal(size=(1, 64)).astype(np.float32))
    burst = l2_normalise(centre + 0.15 * l2_normalise(rng.normal(size=(40, 64)).astype(np.float32)))
    store, _ = planted_store(tmp_path / "index", rng, originals=50)
    store.upsert([f"b{i:02d}" for i in range(40)], burst, [{"hash": f"b{i}"} for i in range(40)])
    finder = DuplicateFinder(store, memory=FileScanMemory(tmp_path / "scan.npz"))
    first = finder.find(threshold=0.8, views="single")
    assert frozenset(f"b{i:02d}" for i in range(40)) in group_sets(first)
    late = l2_normalise(centre + 0.15 * l2_normalise(rng.normal(size=(1, 64)).astype(np.float32)))
    store.upsert(["b40"], late, [{"hash": "b40"}])
    later = finder.find(threshold=0.8, views="single")
    assert later.summary["queried"] == 1
    assert group_sets(later) == group_sets(DuplicateFinder(store).find(threshold=0.8, views="single"))
    assert frozenset(f"b{i:02d}" for i in range(41)) in group_sets(later)
    store.close()


def test_a_memory_file_corrupt_inside_is_a_scan_to_start_over(tmp_path: Path) -> None:
    path = tmp_path / "scan.npz"
    scan = PreviousScan(
        ScanBasis({}, "p", "e", 16), 0.75, np.arange(1, 1000, dtype=np.uint64), {("a", "b"): 0.9}
    )
    FileScanMemory(path).save(scan)
    loaded = FileScanMemory(path).load()
    assert loaded is not None and loaded.pairs == {("a", "b"): pytest.approx(0.9)} and loaded.knows(500)
    # The archive's directory intact, a member's compressed bytes overwritten.
    data = bytearray(path.read_bytes())
    data[200:400] = bytes(200)
    path.write_bytes(bytes(data))
    assert FileScanMemory(path).load() is None
