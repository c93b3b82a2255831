"""The Milvus backend end to end: the CLI against a real Milvus server (index, search, migrate
there and back without re-embedding), and a clear error when the server is unreachable."""

from __future__ import annotations

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
    # Milvus searches the raw vectors (no collection whitening): the same best match, raw cosines.
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
