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
