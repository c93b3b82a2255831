"""`imagefinder finetune`, `reindex` and `rollback` as a user runs them: the real CLI in a
subprocess over real photos, MLflow in the data directory, and a real server that follows the
switch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live import serving

# Small enough to train in seconds on two cores; the benchmark trains the real thing.
QUICK = ["--epochs", "2", "--batch-size", "16", "--images-per-epoch", "48", "--quiet"]


def run(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "imagefinder", "--home", str(home), *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "IMAGEFINDER_HOME": str(home)}


def info(home: Path) -> dict[str, object]:
    return json.loads(run(home, "info", "--json").stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def tuned_home(
    tmp_path_factory: pytest.TempPathFactory, few_dozen_photos: Path, model_cache: Path
) -> Iterator[Path]:
    """An index of a few dozen real photos, then a self-supervised fine-tuning applied to it."""
    home = tmp_path_factory.mktemp("tuned")
    shutil.copytree(model_cache, home / "models", dirs_exist_ok=True)
    collection = home / "photos"
    shutil.copytree(few_dozen_photos, collection)
    run(home, "index", str(collection), "--quiet")
    result = run(home, "finetune", "--self-supervised", "--apply", *QUICK)
    assert "registered models:/imagefinder-encoder/" in result.stdout
    assert "now serving it" in result.stdout
    yield home


def test_apply_serves_the_finetuned_version(tuned_home: Path) -> None:
    described = info(tuned_home)
    assert "+ft-" in str(described["encoder"])
    assert described["images"] == 37
    assert "g0002" in str(described["store"])
    # A plain search (no --model) uses the version that built the index.
    hits = json.loads(run(tuned_home, "search", str(tuned_home / "photos" / "chelsea.jpg"), "--json").stdout)
    assert hits["results"][0]["id"] == "chelsea.jpg"
    assert "+ft-" in hits["model"]["version"]
    # evaluate --use-index measures that generation with that version too.
    truth = tuned_home / "truth.csv"
    truth.write_text("query_file,expected_collection_file\nchelsea.jpg,chelsea.jpg\n")
    measured = run(
        tuned_home,
        "evaluate",
        "--use-index",
        "--queries",
        str(tuned_home / "photos"),
        "--ground-truth",
        str(truth),
    ).stdout
    assert "+ft-" in measured and "recall@1      1.0" in measured


def test_lineage_in_models_and_runs(tuned_home: Path) -> None:
    runs = run(tuned_home, "runs").stdout
    assert "finetune" in runs
    models = run(tuned_home, "models").stdout
    for shown in (runs, models):
        # The fine-tuned version names its base, its data and its validation before and after.
        assert "fine-tuned (self-supervised) from base efficientnet-lite0 v2-int8-2" in shown
        assert "validation copy_recall_at_1 " in shown


def test_evaluate_compares_two_versions_in_one_run(tuned_home: Path, tmp_path: Path) -> None:
    from PIL import Image, ImageOps

    queries = tmp_path / "queries"
    queries.mkdir()
    rows = ["query_file,expected_collection_file"]
    for name in ("chelsea.jpg", "coffee.jpg", "rocket.jpg", "brick.jpg"):
        with Image.open(tuned_home / "photos" / name) as opened:
            edited = ImageOps.mirror(opened.convert("RGB")).rotate(90, expand=True)
        edited.save(queries / f"q_{name}", quality=60)
        rows.append(f"q_{name},{name}")
    truth = tmp_path / "truth.csv"
    truth.write_text("\n".join(rows) + "\n")
    tuned_uri = str(info(tuned_home)["served_with"])
    out = tmp_path / "compare.json"
    result = run(
        tuned_home,
        "evaluate",
        "--collection",
        str(tuned_home / "photos"),
        "--queries",
        str(queries),
        "--ground-truth",
        str(truth),
        "--compare",
        tuned_uri,
        "--json",
        str(out),
    )
    compared = json.loads(out.read_text())["models"]
    assert [row["model"] for row in compared] == ["efficientnet-lite0", tuned_uri]
    assert all(0 <= row["recall@1"] <= 1 and row["mAP"] is not None for row in compared)
    table = [
        line for line in result.stdout.splitlines() if line.startswith(("efficientnet-lite0 ", tuned_uri))
    ]
    assert len(table) == 2  # one row per model, side by side
    assert f"compare efficientnet-lite0 vs {tuned_uri}" in run(tuned_home, "runs").stdout


def test_rollback_and_reindex_with_any_registered_version(tuned_home: Path) -> None:
    tuned = info(tuned_home)
    run(tuned_home, "rollback")
    assert "+ft-" not in str(info(tuned_home)["encoder"])
    run(tuned_home, "reindex", "--model", str(tuned["served_with"]), "--quiet")
    assert info(tuned_home)["encoder"] == tuned["encoder"]


def test_a_reindex_retires_generations_beyond_the_limit_with_their_scan_memory(tuned_home: Path) -> None:
    served_with = str(info(tuned_home)["served_with"])
    run(tuned_home, "reindex", "--model", served_with, "--quiet")  # whatever ran before, not g0001
    generations = tuned_home / "index.generations"
    before = json.loads((generations / "CURRENT").read_text())["current"]
    run(tuned_home, "duplicates", "--views", "single", "--quiet")  # remembers its scan
    scans = set((tuned_home / "scans").glob("duplicates-*.npz"))
    assert len(scans) == 1
    env = {**_env(tuned_home), "IMAGEFINDER_STORE__KEEP_GENERATIONS": "2"}
    # The base version, then the fine-tuned one again: the test after this one rolls back to
    # another model.
    for model in ("models:/imagefinder-encoder/1", served_with):
        result = subprocess.run(
            [sys.executable, "-m", "imagefinder", "reindex", "--model", model, "--quiet"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    assert f"removed older generations {before}" in result.stdout
    pointer = json.loads((generations / "CURRENT").read_text())
    assert len(pointer["history"]) == 3 and pointer["history"][0] == "" and before not in pointer["history"]
    assert not (generations / before).exists() and (tuned_home / "index").is_dir()
    assert not scans & set((tuned_home / "scans").glob("duplicates-*.npz"))  # its scan memory went too
    assert info(tuned_home)["images"] == 37


def test_a_running_server_follows_the_switch_without_a_failed_request(tuned_home: Path) -> None:
    failures: list[str] = []
    answered: list[str] = []
    stop = threading.Event()
    query = (tuned_home / "photos" / "coffee.jpg").read_bytes()
    with serving(_env(tuned_home), timeout_s=120) as base:
        served_before = httpx.get(f"{base}/health").json()["model"]["version"]

        def hammer() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    response = client.post(
                        f"{base}/search?k=1", files={"file": ("q.png", query, "image/png")}
                    )
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        answered.append(response.json()["model"]["version"])

        workers = [threading.Thread(target=hammer) for _ in range(2)]
        for worker in workers:
            worker.start()
        try:
            run(tuned_home, "rollback")
            deadline = 60.0
            import time

            started = time.monotonic()
            while httpx.get(f"{base}/health").json()["model"]["version"] == served_before:
                assert time.monotonic() - started < deadline, "the server did not follow the switch"
                time.sleep(0.2)
            time.sleep(1.0)  # a few more requests on the new generation
        finally:
            stop.set()
            for worker in workers:
                worker.join()
    assert not failures
    assert served_before in answered
    assert any(version != served_before for version in answered)


def test_bad_labels_are_clear_errors(tuned_home: Path, tmp_path: Path) -> None:
    no_label = tmp_path / "no_label.csv"
    no_label.write_text("id,class\nchelsea.jpg,cat\n")
    result = run(tuned_home, "finetune", "--labels", str(no_label), *QUICK, check=False)
    assert result.returncode == 1
    assert "needs the columns id and label" in result.stderr

    one_class = tmp_path / "one_class.csv"
    one_class.write_text("id,label\nchelsea.jpg,cat\ncoffee.jpg,cat\n")
    result = run(tuned_home, "finetune", "--labels", str(one_class), *QUICK, check=False)
    assert result.returncode == 1
    assert "at least two labels" in result.stderr

    result = run(tuned_home, "finetune", *QUICK, check=False)
    assert result.returncode == 1
    assert "--self-supervised" in result.stderr


def test_unknown_ids_and_unreadable_images_are_reported(
    tmp_path: Path, photos: Path, model_cache: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(model_cache, home / "models", dirs_exist_ok=True)
    collection = tmp_path / "photos"
    shutil.copytree(photos, collection)
    run(home, "index", str(collection), "--quiet")
    (collection / "moon.png").unlink()  # its original is gone after indexing
    labels = tmp_path / "labels.csv"
    rows = [
        f"{p.name},{'texture' if p.name in ('brick.png', 'grass.png', 'gravel.png') else 'photo'}"
        for p in sorted(photos.iterdir())
    ]
    labels.write_text("id,label\n" + "\n".join(rows) + "\nnot-indexed.png,photo\n")
    result = run(home, "finetune", "--labels", str(labels), *QUICK, check=False)
    assert "skipped: moon.png" in result.stderr
    assert "skipped: not-indexed.png: labelled, but not in the index" in result.stderr
    # Re-embedding (here with the registered base version) would lose moon.png: refused.
    refused = run(home, "reindex", "--model", "models:/imagefinder-encoder/1", "--quiet", check=False)
    assert refused.returncode == 1
    assert "not switched" in refused.stderr and "moon.png" in refused.stderr
    assert info(home)["generation"] == "g0001"
    run(home, "reindex", "--model", "models:/imagefinder-encoder/1", "--allow-missing", "--quiet")
    assert info(home)["images"] == 16
