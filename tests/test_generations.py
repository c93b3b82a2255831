"""Index generations: build beside the served one, switch atomically, roll back; a failed or
killed build never changes what is served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagefinder.generations import GenerationError, Generations, retired


def test_a_fresh_index_serves_its_base_folder(tmp_path: Path) -> None:
    generations = Generations(tmp_path / "index")
    assert generations.current().path == tmp_path / "index"
    assert generations.current().label == "g0001"
    assert [g.name for g in generations.history()] == [""]


def test_build_switch_and_roll_back(tmp_path: Path) -> None:
    (tmp_path / "index").mkdir()
    generations = Generations(tmp_path / "index")
    before = generations.token()
    with generations.building() as second:
        (second.path / "marker").write_text("2")
        assert generations.current().name == ""  # still serving the old one while building
    generations.switch(second)
    assert generations.current() == second
    assert generations.token() != before
    with generations.building() as third:
        pass
    generations.switch(third)
    assert (second.name, third.name) == ("g0002", "g0003")
    assert generations.rollback() == second
    assert generations.current() == second
    assert generations.rollback().name == ""
    with pytest.raises(GenerationError, match="no previous"):
        generations.rollback()


def test_a_failed_build_leaves_nothing_served_or_on_disk(tmp_path: Path) -> None:
    generations = Generations(tmp_path / "index")
    with pytest.raises(RuntimeError), generations.building() as doomed:
        (doomed.path / "half-written").write_text("x")
        raise RuntimeError("killed")
    assert not doomed.path.exists()
    assert generations.current().name == ""


def test_a_killed_build_is_removed_by_the_next(tmp_path: Path) -> None:
    """SIGKILL skips every cleanup: the folder stays, unnamed by CURRENT, until the next build."""
    generations = Generations(tmp_path / "index")
    stale = generations.folder / "g0002"
    stale.mkdir(parents=True)
    (stale / "store.db").write_text("half")
    with generations.building() as fresh:
        assert fresh.name == "g0002"
        assert not (fresh.path / "store.db").exists()


def test_a_second_build_at_once_is_refused(tmp_path: Path) -> None:
    generations = Generations(tmp_path / "index")
    with generations.building(), pytest.raises(GenerationError, match="being built"):
        with Generations(tmp_path / "index").building():
            pass


def test_the_pointer_is_replaced_whole(tmp_path: Path) -> None:
    generations = Generations(tmp_path / "index")
    with generations.building() as second:
        pass
    generations.switch(second)
    state = json.loads((generations.folder / "CURRENT").read_text())
    assert state == {"current": "g0002", "history": ["", "g0002"]}
    assert not list(generations.folder.glob("*.tmp"))


def test_an_unreadable_pointer_is_a_clear_error(tmp_path: Path) -> None:
    generations = Generations(tmp_path / "index")
    generations.folder.mkdir(parents=True)
    (generations.folder / "CURRENT").write_text("{not json")
    with pytest.raises(GenerationError, match="cannot be read"):
        generations.current()


def test_retiring_keeps_the_last_generations_and_the_first() -> None:
    history = ["", "g0002", "g0003", "g0004", "g0005"]
    assert retired(history, 3) == ["g0002"]
    assert retired(history, 2) == ["g0002", "g0003"]
    assert retired(history, 1) == ["g0002", "g0003"]  # never fewer than the served and one before
    assert retired(history, 9) == []
    assert retired(["g0004", "g0005", "g0006"], 2) == ["g0004"]
