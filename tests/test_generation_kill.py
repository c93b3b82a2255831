"""SIGKILL a generation build (`imagefinder reindex --model`) or a switch at several points: the
served generation stays whole and served, nothing half-built is ever served, and the next
build and switch succeed. The quick pair runs in `make test`; every point in `make test-slow`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from imagefinder.generations import Generations
from tests.test_finetune_cli import info, run
from tests.test_finetune_kill import kill_when

MODEL = "models:/imagefinder-encoder/1"  # the base encoder, registered by the first index run


def _rows(database: Path) -> int:
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT count(*) FROM images").fetchone()[0])
    except sqlite3.Error:
        return 0


def _building(home: Path) -> Path | None:
    found = sorted((home / "index.generations").glob("g*/images.sqlite"))
    return found[-1] if found else None


def _started(home: Path) -> bool:
    return _building(home) is not None


def _half_written(home: Path) -> bool:
    database = _building(home)
    return database is not None and _rows(database) >= 18  # of the 37 photos


def _mostly_written(home: Path) -> bool:
    database = _building(home)
    return database is not None and _rows(database) >= 26


BUILD_POINTS: dict[str, Callable[[Path], bool]] = {
    "started": _started,
    "half written": _half_written,
    "mostly written": _mostly_written,
}

# The switch's steps (`Generations._write`): the new pointer written beside, fsynced, renamed over
# CURRENT, the folder fsynced and closed. The child kills itself when it reaches the step.
SWITCH_POINTS = {
    "before the fsync": "os.fsync",
    "before the rename": "os.replace",
    "after the rename": "os.close",
}


@pytest.fixture
def indexed_home(tmp_path: Path, few_dozen_photos: Path, model_cache: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(model_cache, home / "models", dirs_exist_ok=True)
    shutil.copytree(few_dozen_photos, home / "photos")
    run(home, "index", str(home / "photos"), "--quiet")
    return home


def served_state(home: Path) -> tuple[object, object, list[object]]:
    query = str(home / "photos" / "rocket.jpg")
    described = info(home)
    hits = json.loads(run(home, "search", query, "--json").stdout)["results"]
    return described["store"], described["images"], hits


def check_build_kill(home: Path, point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Commits of two images: a kill point in rows falls well before the build's end and switch
    # (with the default 32 the first commit held all but 5 of the 37 photos).
    monkeypatch.setenv("IMAGEFINDER_BATCH_SIZE", "2")
    before = served_state(home)
    killed = kill_when(home, BUILD_POINTS[point], ["reindex", "--model", MODEL, "--quiet"])
    assert killed, f"the build finished before {point}"
    assert served_state(home) == before  # the half-built generation is not served
    run(home, "reindex", "--model", MODEL, "--quiet")  # the next build cleans up and completes
    store, images, hits = served_state(home)
    assert "g0002" in str(store) and images == before[1]
    assert [hit["id"] for hit in hits][:1] == [hit["id"] for hit in before[2]][:1]  # type: ignore[index]
    assert [g.name for g in Generations(home / "index").history()] == ["", "g0002"]


def check_switch_kill(home: Path, point: str) -> None:
    """Build g0002, then switch to it in a child that SIGKILLs itself at `point` of the switch:
    afterwards one of the two generations is served, whole, and a switch goes through."""
    run(home, "reindex", "--model", MODEL, "--quiet")
    generations = Generations(home / "index")
    generations.rollback()  # serve g0001 again, so that the child's switch has work to do
    before = served_state(home)
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from imagefinder.generations import Generation, Generations

        generations = Generations(Path(sys.argv[1]))
        target = Generation("g0002", generations.folder / "g0002")

        def killed(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        setattr(os, "{SWITCH_POINTS[point].removeprefix("os.")}", killed)
        generations.switch(target)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child, str(home / "index")], env={**os.environ}, timeout=60
    )
    assert result.returncode == -signal.SIGKILL
    store, images, hits = served_state(home)
    assert images == before[1] and str(store).endswith(("index", "g0002"))
    assert [hit["id"] for hit in hits][:1] == [hit["id"] for hit in before[2]][:1]  # type: ignore[index]
    if point == "after the rename":
        assert "g0002" in str(store)  # renamed: the switch happened even without the last fsync
    else:
        assert store == before[0]
    generations.switch(generations._generation("g0002"))  # noqa: SLF001
    assert "g0002" in str(info(home)["store"])


def test_kill_mid_build_keeps_the_served_generation(
    indexed_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_build_kill(indexed_home, "half written", monkeypatch)


def test_kill_before_the_rename_of_a_switch_keeps_the_old_generation(indexed_home: Path) -> None:
    check_switch_kill(indexed_home, "before the rename")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["started", "mostly written"])
def test_kill_a_build_at_other_points(
    indexed_home: Path, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_build_kill(indexed_home, point, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before the fsync", "after the rename"])
def test_kill_a_switch_at_other_points(indexed_home: Path, point: str) -> None:
    check_switch_kill(indexed_home, point)
