"""`imagefinder evaluate` end to end on a small real set: demo photos, edited copies as queries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from tests.test_real_model import edited_copy


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "imagefinder", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "IMAGEFINDER_HOME": str(home), "IMAGEFINDER_TRACKING__ENABLED": "false"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    home = tmp_path_factory.mktemp("eval-home")
    shutil.copytree(model_cache, home / "models")
    return home


def test_evaluate_with_a_ground_truth_csv(tmp_path: Path, home: Path, photos: Path) -> None:
    queries = tmp_path / "queries"
    queries.mkdir()
    rows, groups = ["query_file,expected_collection_file"], ["query_file,family"]
    for n, path in enumerate(sorted(photos.iterdir())):
        for edit in ("crop", "recompress"):
            name = f"q{n:02d}_{edit}.jpg"
            (queries / name).write_bytes(edited_copy(path, edit))
            rows.append(f"{name},{path.name}")
            groups.append(f"{name},{edit}")
    (tmp_path / "gt.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "groups.csv").write_text("\n".join(groups) + "\n")
    out = run_cli(
        home,
        "evaluate",
        "--collection",
        str(photos),
        "--queries",
        str(queries),
        "--ground-truth",
        str(tmp_path / "gt.csv"),
        "--groups",
        str(tmp_path / "groups.csv"),
        "--json",
        str(tmp_path / "m.json"),
        "--html",
        str(tmp_path / "r.html"),
    )
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"recall@1", "recall@5", "recall@10", "precision@10", "mAP", "uAP", "by_group"} <= set(metrics)
    assert metrics["recall@1"] == 1.0 and metrics["queries"] == 2 * len(list(photos.iterdir()))
    assert set(metrics["by_group"]) == {"crop", "recompress"}
    assert 0.5 < metrics["uAP"] <= 1.0
    assert "recall@1      1.0" in out.stdout
    report = (tmp_path / "r.html").read_text()
    assert "<polyline" in report and report.count("data:image/jpeg;base64,") >= 3


def test_evaluate_a_labelled_folder(tmp_path: Path, home: Path, photos: Path) -> None:
    labelled = tmp_path / "labelled"
    for name in ("chelsea.png", "rocket.jpg", "coffee.png"):
        folder = labelled / name.split(".")[0]
        folder.mkdir(parents=True)
        image = Image.open(photos / name).convert("RGB")
        w, h = image.size
        for i, box in enumerate([(0, 0, w * 3 // 4, h * 3 // 4), (w // 4, h // 4, w, h), (0, h // 8, w, h)]):
            crop = image.crop(box)
            (crop if i != 1 else ImageOps.mirror(crop)).save(folder / f"{i}.jpg", quality=90)
    run_cli(home, "evaluate", "--labelled", str(labelled), "--json", str(tmp_path / "m.json"))
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["queries"] == 9 and metrics["recall@1"] == 1.0 and metrics["mAP"] > 0.9
    assert set(metrics["by_group"]) == {"chelsea", "rocket", "coffee"}


def test_make_benchmark_is_seeded_and_scores(tmp_path: Path, home: Path, photos: Path) -> None:
    import hashlib

    source = tmp_path / "mine"
    source.mkdir()
    for name in ("chelsea.png", "rocket.jpg", "coffee.png", "astronaut.png"):
        shutil.copy(photos / name, source / name)

    def digest(folder: Path) -> str:
        return hashlib.sha256(
            b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())
        ).hexdigest()

    run_cli(home, "make-benchmark", str(source), str(tmp_path / "a"), "--seed", "3")
    run_cli(home, "make-benchmark", str(source), str(tmp_path / "b"), "--seed", "3")
    run_cli(home, "make-benchmark", str(source), str(tmp_path / "c"), "--seed", "4")
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    bench = tmp_path / "a"
    assert len(list((bench / "queries").iterdir())) == 4 * 9
    run_cli(
        home,
        "evaluate",
        "--collection",
        str(bench / "collection"),
        "--queries",
        str(bench / "queries"),
        "--ground-truth",
        str(bench / "ground_truth.csv"),
        "--groups",
        str(bench / "query_transforms.csv"),
        "--json",
        str(tmp_path / "m.json"),
    )
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["queries"] == 36 and len(metrics["by_group"]) == 9 and metrics["recall@1"] >= 0.75
