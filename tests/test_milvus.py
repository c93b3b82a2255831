"""The Milvus backend end to end: the CLI against a real Milvus server (index, search, migrate
there and back without re-embedding), and a clear error when the server is unreachable."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imagefinder.api import create_app
from imagefinder.config import ApiSettings
from imagefinder.errors import StoreUnavailableError
from imagefinder.images import ImageLimits
from tests.test_cli import run_cli


def milvus_uri(server: str, collection: str) -> str:
    return f"milvus://{server.removeprefix('http://')}/{collection}"


def test_index_search_and_migrate_between_embedded_and_milvus(
    tmp_path: Path, photos: Path, model_cache: Path, milvus_server: str
) -> None:
    shutil.copytree(model_cache, tmp_path / "models")
    run_cli(tmp_path, "index", str(photos), "--quiet")
    query = str(photos / "rocket.jpg")
    embedded = json.loads(run_cli(tmp_path, "search", query, "-k", "3", "--json").stdout)["results"]

    target = milvus_uri(milvus_server, f"migrated_{int(time.time())}")
    moved = run_cli(tmp_path, "migrate", "--from", str(tmp_path / "index"), "--to", target)
    count = len(list(photos.iterdir()))
    assert f"copied {count} images" in moved.stdout and f"holds {count} images" in moved.stdout
    in_milvus = json.loads(run_cli(tmp_path, "--store", target, "search", query, "-k", "3", "--json").stdout)
    # 17 images are too few to whiten: raw cosines on both backends, the same best match.
    assert in_milvus["results"][0]["id"] == embedded[0]["id"] == "rocket.jpg"
    assert in_milvus["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    info = json.loads(run_cli(tmp_path, "--store", target, "info", "--json").stdout)
    assert info["images"] == count and info["search"]["kind"] == "milvus"
    assert info["encoder"]["name"] == "efficientnet-lite0"
    text = run_cli(tmp_path, "--store", target, "info").stdout
    assert f"images:  {count}" in text and "Milvus HNSW" in text

    # Adding through the CLI to Milvus: an acknowledged add is visible to the next search.
    extra = tmp_path / "extra"
    extra.mkdir()
    # Re-encoded, so not byte-identical (identical bytes are dropped as duplicates).
    for name in ("coffee", "astronaut"):
        Image.open(photos / f"{name}.png").convert("RGB").save(extra / f"{name}-again.jpg", quality=90)
    run_cli(tmp_path, "--store", target, "index", str(extra), "--quiet", "--no-prune")
    found = json.loads(
        run_cli(tmp_path, "--store", target, "search", str(photos / "coffee.png"), "--json").stdout
    )
    assert "coffee-again.jpg" in [r["id"] for r in found["results"]]

    back = tmp_path / "back"
    returned = run_cli(tmp_path, "migrate", "--from", target, "--to", str(back))
    assert f"holds {count + 2} images" in returned.stdout
    again = json.loads(run_cli(tmp_path, "--store", str(back), "search", query, "--json").stdout)
    assert again["results"][0]["id"] == "rocket.jpg"


def test_an_unreachable_milvus_is_named_by_the_cli(tmp_path: Path, photos: Path) -> None:
    result = run_cli(tmp_path, "--store", "milvus://127.0.0.1:9/nothing", "info", check=False)
    assert result.returncode == 1 and "127.0.0.1:9" in result.stderr
    bad = run_cli(tmp_path, "--store", "milvus://no-port-or-collection", "info", check=False)
    assert bad.returncode == 1 and "milvus://host:port/collection" in bad.stderr


def test_the_api_answers_503_while_the_store_is_unreachable() -> None:
    def unreachable() -> None:
        raise StoreUnavailableError("cannot reach Milvus at http://127.0.0.1:9: connection refused")

    app = create_app(unreachable, ApiSettings(), ImageLimits())  # type: ignore[arg-type]
    with TestClient(app) as client:
        for _ in range(50):
            ready = client.get("/ready")
            if "cannot load" in ready.text:
                break
            time.sleep(0.1)
        assert ready.status_code == 503 and "127.0.0.1:9" in ready.json()["detail"]
        search = client.post("/search", json={"id": "x"})
        assert search.status_code == 503


def test_migration_carries_the_search_space_so_copies_are_judged_alike(
    tmp_path: Path, photos: Path, model_cache: Path, milvus_server: str
) -> None:
    """embedded -> Milvus -> embedded: each search, over each store, finds the same images with
    the same scores and the same `is_copy`, in a collection large enough to be whitened (a
    threshold calibrated in the whitened space, judged against raw cosines, was the bug)."""
    from PIL import ImageFilter, ImageOps

    from imagefinder.encoders.lite0 import lite0_encoder
    from imagefinder.images import ImageLimits
    from imagefinder.stores.embedded import EmbeddedStore
    from imagefinder.stores.milvus import MilvusStore
    from imagefinder.wiring import compose_service

    shutil.copytree(model_cache, tmp_path / "models")
    collection = tmp_path / "collection"
    collection.mkdir()
    for path in sorted(photos.iterdir()):  # 17 photos -> 85 images: whole, mirrored, 3 corners
        with Image.open(path) as opened:
            whole = opened.convert("RGB")
        w, h = whole.size
        views = {"": whole, "_m": ImageOps.mirror(whole)}
        for n, (left, top) in enumerate(((0, 0), (w // 2, 0), (0, h // 2))):
            views[f"_q{n}"] = whole.crop((left, top, left + w // 2, top + h // 2))
        for suffix, view in views.items():
            view.save(collection / f"{path.stem}{suffix}.jpg", quality=90)
    run_cli(tmp_path, "index", str(collection), "--quiet")
    target = milvus_uri(milvus_server, f"space_{int(time.time())}")
    run_cli(tmp_path, "migrate", "--from", str(tmp_path / "index"), "--to", target)
    back = tmp_path / "back"
    run_cli(tmp_path, "migrate", "--from", target, "--to", str(back))

    queries = []
    for path in sorted(photos.iterdir())[:8]:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        edited = image.filter(ImageFilter.GaussianBlur(2)).resize((image.width // 2, image.height // 2))
        for variant in (edited, ImageOps.grayscale(image).convert("RGB").rotate(8)):
            buffer = io.BytesIO()
            variant.save(buffer, "JPEG", quality=40)
            queries.append(buffer.getvalue())

    encoder = lite0_encoder(tmp_path / "models")
    server, name = milvus_server, target.rsplit("/", 1)[1]
    stores = {
        "embedded": EmbeddedStore(next(p for p in (tmp_path / "index").rglob("images.sqlite")).parent),
        "milvus": MilvusStore(server, name),
        "back": EmbeddedStore(back),
    }
    answers = {}
    for label, store in stores.items():
        space = store.search_space
        assert space.projection is not None, f"{label}: the collection was not whitened"
        service = compose_service(encoder, store, ImageLimits(), query_views="single")
        answers[label] = [
            [(r.id, round(r.score, 3), r.is_copy) for r in service.search_bytes(data, k=3)]
            for data in queries
        ]
        store.close()
    flags = [is_copy for answer in answers["embedded"] for _, _, is_copy in answer]
    assert any(flags) and not all(flags), "the queries must test both sides of the threshold"
    for label in ("milvus", "back"):
        for ours, theirs in zip(answers["embedded"], answers[label], strict=True):
            assert [(i, c) for i, _, c in ours] == [(i, c) for i, _, c in theirs], label
            assert [s for _, s, _ in ours] == pytest.approx([s for _, s, _ in theirs], abs=2e-3), label

    # The duplicates scan (Milvus answers its rows many per request) finds the same groups.
    groups = {}
    for label, location in (("embedded", None), ("milvus", target), ("back", str(back))):
        report = tmp_path / f"duplicates-{label}.json"
        where = ["--store", location] if location else []
        run_cli(tmp_path, *where, "duplicates", "--json", str(report))
        found = json.loads(report.read_text())["groups"]
        groups[label] = sorted(sorted(m["id"] for m in group["members"]) for group in found)
    assert len(groups["embedded"]) >= 10  # each photo's mirror is a copy of it
    assert groups["milvus"] == groups["embedded"] == groups["back"]


def test_reindex_and_rollback_on_milvus_through_the_cli(
    tmp_path: Path, few_dozen_photos: Path, model_cache: Path, milvus_server: str
) -> None:
    """A new generation of a Milvus index is another collection, switched in by the pointer
    row; `info` names the generation served and `rollback` serves the first again."""
    from tests.test_finetune_cli import run

    home = tmp_path / "home"
    shutil.copytree(model_cache, home / "models")
    target = milvus_uri(milvus_server, f"gens_{int(time.time())}")
    run(home, "--store", target, "index", str(few_dozen_photos), "--quiet")
    first = json.loads(run(home, "--store", target, "info", "--json").stdout)
    assert first["generation"] == "g0001" and first["store"].endswith(target.rsplit("/", 1)[1])
    run(home, "--store", target, "reindex", "--model", "models:/imagefinder-encoder/1", "--quiet")
    second = json.loads(run(home, "--store", target, "info", "--json").stdout)
    assert second["generation"] == "g0002" and second["store"].endswith("_g0002")
    assert second["images"] == first["images"] and second["search_space"]["copy_threshold"] > 0
    query = str(few_dozen_photos / "rocket.jpg")
    found = json.loads(run(home, "--store", target, "search", query, "--json").stdout)["results"]
    assert found[0]["id"] == "rocket.jpg"
    assert "g0001" in run(home, "--store", target, "rollback").stdout
    assert json.loads(run(home, "--store", target, "info", "--json").stdout)["generation"] == "g0001"
