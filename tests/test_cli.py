"""The real CLI as a subprocess over real photos: index, search, info, remove, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.factories import encode, gradient, png_bomb


def run_cli(
    home: Path, *args: str, check: bool = True, tracking: bool = False
) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess. MLflow tracking is off unless asked for: `test_tracking` covers
    it, and creating a tracking database per temporary home costs seconds each."""
    env = {
        **os.environ,
        "IMAGEFINDER_HOME": str(home),
        "IMAGEFINDER_TRACKING__ENABLED": str(tracking).lower(),
    }
    result = subprocess.run(
        [sys.executable, "-m", "imagefinder", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, photos: Path, model_cache: Path) -> tuple[Path, Path]:
    home = tmp_path_factory.mktemp("home")
    shutil.copytree(model_cache, home / "models")  # reuse the session's ONNX export
    collection = tmp_path_factory.mktemp("collection")
    shutil.copytree(photos, collection / "photos")
    (collection / "photos" / "broken.jpg").write_bytes(encode(gradient(1, (300, 300)))[:400])
    (collection / "photos" / "bomb.png").write_bytes(png_bomb())
    result = run_cli(home, "index", str(collection), "--quiet")
    assert (
        "corrupt: " in result.stderr
        and "broken.jpg" in result.stderr
        and "too_large: " in result.stderr
        and "bomb.png" in result.stderr
    )
    assert (
        f"indexed {len(list(photos.iterdir()))}, unchanged 0, skipped 2 (1 corrupt, 1 too_large)"
        in result.stdout
    )
    return home, collection


def test_search_json_lists_k_results_best_first(indexed: tuple[Path, Path], photos: Path) -> None:
    home, _ = indexed
    result = run_cli(home, "search", str(photos / "coffee.png"), "-k", "4", "--json")
    body = json.loads(result.stdout)
    ids = [r["id"] for r in body["results"]]
    scores = [r["score"] for r in body["results"]]
    assert len(ids) == 4 and ids[0] == "photos/coffee.png"
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1.0, abs=1e-4)
    assert body["results"][0]["uri"].endswith("coffee.png")


def test_search_views_option(indexed: tuple[Path, Path], photos: Path, tmp_path: Path) -> None:
    """A copy pasted small into a bigger picture: one view does not flag it, the second pass does."""
    home, _ = indexed
    photo = Image.open(photos / "coffee.png").convert("RGB")
    canvas = Image.new("RGB", (photo.width * 2, photo.height * 2), (40, 90, 160))
    canvas.paste(photo, (photo.width, 0))
    canvas.save(tmp_path / "pasted.jpg", quality=90)
    answers = {
        views: json.loads(
            run_cli(home, "search", str(tmp_path / "pasted.jpg"), "--views", views, "--json").stdout
        )
        for views in ("single", "adaptive")
    }
    assert not answers["single"]["results"][0]["is_copy"]
    top = answers["adaptive"]["results"][0]
    assert top["id"] == "photos/coffee.png" and top["is_copy"]
    assert (
        run_cli(home, "search", str(tmp_path / "pasted.jpg"), "--views", "all", check=False).returncode == 2
    )


def test_search_table(indexed: tuple[Path, Path], photos: Path) -> None:
    home, _ = indexed
    lines = run_cli(home, "search", str(photos / "rocket.jpg")).stdout.splitlines()
    first = lines[0].split()
    assert len(lines) == 3 and first[0] == "1" and first[-1] == "photos/rocket.jpg"
    assert first[2] == "copy" and "copy" not in lines[2]  # itself is a copy; a different photo is not


def test_reindex_is_incremental(indexed: tuple[Path, Path]) -> None:
    home, collection = indexed
    result = run_cli(home, "index", str(collection), "--quiet")
    assert "indexed 0, unchanged" in result.stdout
    report = json.loads((home / "index" / "last_index_report.json").read_text())
    assert report["indexed"] == 0 and report["failed"] == 2


def test_info_and_remove(tmp_path: Path, indexed: tuple[Path, Path]) -> None:
    home, _ = indexed
    info = json.loads(run_cli(home, "info", "--json").stdout)
    assert info["encoder"]["name"] == "efficientnet-lite0" and info["encoder"]["dim"] == 1280
    # Work on a copy so the other tests keep the full index.
    copy_home = tmp_path / "home"
    shutil.copytree(home, copy_home)
    assert "removed 1 of 2" in run_cli(copy_home, "remove", "photos/moon.png", "nope").stdout
    assert json.loads(run_cli(copy_home, "info", "--json").stdout)["images"] == info["images"] - 1


def test_search_with_a_bad_image_fails_cleanly(indexed: tuple[Path, Path], tmp_path: Path) -> None:
    home, _ = indexed
    bad = tmp_path / "notes.jpg"
    bad.write_text("not really a jpeg")
    result = run_cli(home, "search", str(bad), check=False)
    assert result.returncode == 1
    assert "not a recognised image format" in result.stderr and "Traceback" not in result.stderr


def test_index_of_a_missing_path_fails_cleanly(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "index", str(tmp_path / "nowhere"), check=False)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_global_options_may_follow_the_command(tmp_path: Path, photos: Path, model_cache: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(model_cache, elsewhere / "models")
    # --home after the command wins over IMAGEFINDER_HOME, as it does before the command.
    result = run_cli(tmp_path / "unused", "index", str(photos), "--home", str(elsewhere), "--quiet")
    assert f"report: {elsewhere / 'index'}" in result.stdout
    query = str(photos / "coffee.png")
    found = json.loads(run_cli(tmp_path / "unused", "search", query, f"--home={elsewhere}", "--json").stdout)
    assert found["results"][0]["id"] == "coffee.png"
    # --model after the command is the group's: another encoder is refused on this index.
    other = run_cli(elsewhere, "search", query, "--model", "efficientnet-lite0-fp32", check=False)
    assert other.returncode == 1 and "was built with encoder efficientnet-lite0" in other.stderr
    # After `--`, an option-like word is an argument again; a missing value is a usage error.
    missing = run_cli(elsewhere, "search", query, "--home", check=False)
    assert missing.returncode == 2 and "'--home' requires an argument" in missing.stderr
    dashed = run_cli(elsewhere, "search", "--", "--home", check=False)
    assert dashed.returncode == 2 and "'--home' does not exist" in dashed.stderr


def _searches_answered(base: str) -> float:
    import httpx

    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    labels = ('route="/search"', 'status="200"')
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("imagefinder_requests_total{") and all(label in line for label in labels)
    )


def test_a_cli_search_is_answered_by_the_server_serving_the_same_index(
    tmp_path: Path, photos: Path, model_cache: Path
) -> None:
    from tests.live import live_server

    home = tmp_path / "home"
    query = str(photos / "coffee.png")
    with live_server(home, photos, model_cache) as base:
        record = json.loads((home / "serve.json").read_text())
        assert record["url"] == base
        before = _searches_answered(base)
        via_server = json.loads(run_cli(home, "search", query, "-k", "4", "--json").stdout)
        assert _searches_answered(base) == before + 1  # the server answered it
        in_process = json.loads(run_cli(home, "search", query, "-k", "4", "--json", "--no-server").stdout)
        assert _searches_answered(base) == before + 1
        assert via_server == in_process  # the same answer either way
        # Another index's search is not sent there; a k above the server's limit falls back here.
        other = run_cli(home, "--store", str(tmp_path / "other"), "search", query, "--json")
        assert json.loads(other.stdout)["results"] == []
        many = json.loads(run_cli(home, "search", query, "-k", "500", "--json").stdout)
        assert len(many["results"]) == len(list(photos.iterdir()))
        assert _searches_answered(base) == before + 1
        # This command's views setting is sent along: the same answer as in-process with it.
        single = {**os.environ, "IMAGEFINDER_QUERY_VIEWS": "single"}
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "environ", single)
            served = json.loads(run_cli(home, "search", query, "-k", "4", "--json").stdout)
            here = json.loads(run_cli(home, "search", query, "-k", "4", "--json", "--no-server").stdout)
        assert served == here and _searches_answered(base) == before + 2
        # A record whose process is gone is ignored, even when its address answers.
        finished = subprocess.Popen(["true"])
        finished.wait()
        original = (home / "serve.json").read_text()
        (home / "serve.json").write_text(json.dumps({**record, "pid": finished.pid}))
        assert json.loads(run_cli(home, "search", query, "--json").stdout)["results"][0]["id"] == "coffee.png"
        assert _searches_answered(base) == before + 2
        (home / "serve.json").write_text(original)
    assert not (home / "serve.json").exists()  # removed when the server stopped (SIGTERM)
