"""SIGKILL `imagefinder finetune --apply` while it trains, exports or re-embeds into a new
generation: the served index must stay exactly as it was, and the next run must succeed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_finetune_cli import QUICK, info, run


def _generation_folder_exists(home: Path) -> bool:
    folder = home / "index.generations"
    return folder.is_dir() and any(child.name.startswith("g") for child in folder.iterdir())


def _export_started(home: Path) -> bool:
    return any((home / "models" / "finetuned").glob("*/encoder-fp32.onnx"))


def _training_started(home: Path) -> bool:
    """The fine-tuning's MLflow run is open (it opens when the images are loaded and training
    starts), and a second has passed inside it."""
    try:
        with sqlite3.connect(home / "mlflow.db", timeout=1) as db:
            found = db.execute("SELECT count(*) FROM runs WHERE name LIKE 'finetune%' AND status = 'RUNNING'")
            running = found.fetchone()[0] > 0
    except sqlite3.Error:
        return False
    if running:
        time.sleep(1.0)
    return running


POINTS: dict[str, Callable[[Path], bool]] = {
    "training": _training_started,
    "export": _export_started,
    "reindex": _generation_folder_exists,
}


def kill_when(home: Path, ready: Callable[[Path], bool], args: list[str]) -> bool:
    """Start the command, SIGKILL it once `ready(home)`; False if it finished first."""
    process = subprocess.Popen(
        [sys.executable, "-m", "imagefinder", "--home", str(home), *args],
        env={**os.environ, "IMAGEFINDER_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            if ready(home):
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.05)
        return False
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def check_kill(point: str, tmp_path: Path, photos: Path, model_cache: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(model_cache, home / "models", dirs_exist_ok=True)
    shutil.copytree(photos, home / "photos")
    run(home, "index", str(home / "photos"), "--quiet")
    before = info(home)
    query = str(home / "photos" / "rocket.jpg")
    hits_before = json.loads(run(home, "search", query, "--json").stdout)["results"]
    args = ["finetune", "--self-supervised", "--apply", *QUICK]
    killed = kill_when(home, POINTS[point], args)
    assert killed, f"the run finished before reaching {point}"
    after = info(home)
    assert after["encoder"] == before["encoder"]
    assert after["store"] == before["store"]
    assert after["images"] == before["images"]
    assert json.loads(run(home, "search", query, "--json").stdout)["results"] == hits_before
    # The next run completes, over whatever the killed one left.
    run(home, *args)
    assert "+ft-" in str(info(home)["encoder"])


def test_kill_during_training_keeps_the_index(
    tmp_path: Path, few_dozen_photos: Path, model_cache: Path
) -> None:
    check_kill("training", tmp_path, few_dozen_photos, model_cache)


def test_kill_during_reindex_keeps_the_index(
    tmp_path: Path, few_dozen_photos: Path, model_cache: Path
) -> None:
    check_kill("reindex", tmp_path, few_dozen_photos, model_cache)


@pytest.mark.slow
def test_kill_during_export_keeps_the_index(
    tmp_path: Path, few_dozen_photos: Path, model_cache: Path
) -> None:
    check_kill("export", tmp_path, few_dozen_photos, model_cache)
