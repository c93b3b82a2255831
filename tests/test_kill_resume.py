"""Kill the real indexer with SIGKILL at several points, then check and resume.

`imagefinder index --verbose` prints an id only after its batch is committed, so every printed id
must survive the kill; the store must open, with one payload row per vector; a re-run must finish
the job with every image present exactly once and without re-embedding what was committed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagefinder.stores.embedded import EmbeddedStore
from tests.factories import encode, gradient

N_IMAGES = 160


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("kill-photos")
    for i in range(N_IMAGES):
        sub = folder / f"part{i % 4}"
        sub.mkdir(exist_ok=True)
        (sub / f"img{i:03d}.jpg").write_bytes(encode(gradient(1000 + i, (640, 480)), quality=90))
    return folder


def start_index(home: Path, folder: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "imagefinder", "index", str(folder), "--verbose", "--quiet"],
        env={**os.environ, "IMAGEFINDER_HOME": str(home), "IMAGEFINDER_BATCH_SIZE": "16"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def kill_after(process: subprocess.Popen[str], lines_wanted: int, seconds: float) -> list[str]:
    """SIGKILL once `lines_wanted` ids were printed (or after `seconds` when lines_wanted is 0)."""
    printed: list[str] = []
    assert process.stdout is not None
    if lines_wanted == 0:
        time.sleep(seconds)
    else:
        for line in process.stdout:
            if line.startswith("indexed ") and "," not in line:
                printed.append(line.split(" ", 1)[1].strip())
            if len(printed) >= lines_wanted:
                break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    return printed


@pytest.mark.parametrize(
    ("lines_wanted", "seconds"),
    [(0, 0.4), (1, 0), (17, 0), (70, 0), (140, 0)],
    ids=["during-start", "after-first-batch", "mid-second-batch", "mid-run", "near-the-end"],
)
def test_sigkill_then_resume_loses_nothing(
    tmp_path: Path, big_folder: Path, model_cache: Path, lines_wanted: int, seconds: float
) -> None:
    home = tmp_path / "home"
    shutil.copytree(model_cache, home / "models")
    printed = kill_after(start_index(home, big_folder), lines_wanted, seconds)

    # The store opens, and vectors and payloads agree (one row holds both). A kill before the
    # store was created leaves none (or an empty database file, when it came between the file and
    # its tables), and then nothing may have been reported.
    database = home / "index" / "images.sqlite"
    rows = 0
    created = False
    if database.exists():
        with sqlite3.connect(database) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            created = bool(db.execute("SELECT 1 FROM sqlite_master WHERE name = 'images'").fetchone())
            if created:
                rows = db.execute("SELECT count(*) FROM images").fetchone()[0]
    if not created:
        assert printed == []
    store = EmbeddedStore(home / "index")
    assert store.count() == rows
    assert set(printed) <= set(store.ids())  # nothing reported as indexed was lost
    store.close()

    finished = start_index(home, big_folder)
    out, _ = finished.communicate(timeout=300)
    assert finished.returncode == 0, out
    report = json.loads((home / "index" / "last_index_report.json").read_text())
    assert report["unchanged"] == rows and report["indexed"] == N_IMAGES - rows
    store = EmbeddedStore(home / "index")
    assert store.count() == N_IMAGES and len(set(store.ids())) == N_IMAGES
    store.close()


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(20))
def test_sigkill_at_random_points(tmp_path: Path, big_folder: Path, model_cache: Path, seed: int) -> None:
    """The slow tier (`make test-slow`): 20 kill points drawn with fixed seeds, by committed-id
    count or by time (including before the first commit), each followed by the same checks."""
    import random

    rng = random.Random(seed)
    lines_wanted, seconds = (
        (0, rng.uniform(0.2, 2.5)) if seed % 4 == 0 else (rng.randint(1, N_IMAGES - 1), 0.0)
    )
    test_sigkill_then_resume_loses_nothing(tmp_path, big_folder, model_cache, lines_wanted, seconds)
