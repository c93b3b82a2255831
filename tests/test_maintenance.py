"""Keeping the search space fit when two processes change it at once: a calibration that started
before another process's refit does not undo the refit (the projection it learned); an index
written before spaces had a record of their own is refitted like any other."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagefinder import maintenance
from imagefinder.encoders.base import EncoderInfo, l2_normalise
from imagefinder.errors import SearchSpaceChangedError
from imagefinder.maintenance import SPACE_TRIES, Maintenance
from imagefinder.stores.embedded import EmbeddedStore

INFO = EncoderInfo("test-encoder", "1", 16, "none")


class InfoOnly:
    """Maintenance reads only the encoder's info when it fits no view gate (no reader)."""

    info = INFO


@pytest.fixture(params=["embedded", "milvus"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    """Opens the same index each time it is called, as another process would: a folder, or one
    collection on a real Milvus server."""
    if request.param == "embedded":
        return lambda: EmbeddedStore(tmp_path)
    from imagefinder.stores.milvus import MilvusStore

    # A store trusts its copy of the space for SPACE_CHECK_S: a change made again within that
    # window must still start from the space the other process wrote.
    request.getfixturevalue("monkeypatch").setattr("imagefinder.stores.milvus.SPACE_CHECK_S", 3600.0)
    server = request.getfixturevalue("milvus_server")
    collection = f"t_{uuid.uuid4().hex[:12]}"
    return lambda: MilvusStore(server, collection)


def filled(path: Path) -> EmbeddedStore:
    return fill(EmbeddedStore(path))


def fill(store: Any) -> Any:
    store.bind_encoder(INFO)
    rng = np.random.default_rng(5)
    vectors = l2_normalise(rng.normal(size=(300, 16)).astype(np.float32))
    store.upsert([f"i{i:03d}" for i in range(300)], vectors, [{}] * 300)
    return store


def keeper(store: Any) -> Maintenance:
    return Maintenance(InfoOnly(), store, search_dims=8)  # type: ignore[arg-type]


def test_a_calibration_does_not_undo_a_refit_made_meanwhile(
    opener: Callable[[], Any], monkeypatch: Any
) -> None:
    here = fill(opener())
    keeper(here).refit()
    before = here.search_space
    there = opener()  # another process's handle on the same index
    real = maintenance.calibrate
    calls = []
    refits = []

    def calibrate_while_another_process_refits(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # the first calibration here: the other process refits meanwhile
            keeper(there).refit(force=True)
            refits.append(there.search_space)
        return real(*args, **kwargs)

    monkeypatch.setattr(maintenance, "calibrate", calibrate_while_another_process_refits)
    keeper(here).calibrate()
    (refitted,) = refits
    kept = opener().search_space
    assert refitted.projection_id != before.projection_id
    # The refit's projection stays, and the calibration was made again on top of it.
    assert kept.projection_id == refitted.projection_id
    assert kept.version not in (refitted.version, before.version)
    assert len(calls) == 3  # here, the other process's refit, here again


def test_a_space_that_keeps_changing_is_a_clear_error(tmp_path: Path, monkeypatch: Any) -> None:
    here = filled(tmp_path)
    keeper(here).refit()
    there = EmbeddedStore(tmp_path)
    real = maintenance.calibrate

    def calibrate_while_another_process_recalibrates(*args: Any, **kwargs: Any) -> Any:
        found = real(*args, **kwargs)
        there.set_search_space(there.search_space.calibrated(found.copy, found.duplicate))
        return found

    monkeypatch.setattr(maintenance, "calibrate", calibrate_while_another_process_recalibrates)
    with pytest.raises(SearchSpaceChangedError, match=f"changed {SPACE_TRIES} times"):
        keeper(here).calibrate()


def test_an_index_written_before_spaces_had_a_record_is_refitted(tmp_path: Path) -> None:
    filled(tmp_path).close()
    with sqlite3.connect(tmp_path / "images.sqlite") as db:  # as such an index was written
        db.execute("DELETE FROM meta WHERE key = 'search_space'")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', 'abc123')")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('user.copy_threshold', '0.8')")
    old = EmbeddedStore(tmp_path)
    assert (old.search_space.version, old.search_space.copy_threshold) == ("abc123", 0.8)
    keeper(old).refit()
    refitted = EmbeddedStore(tmp_path).search_space
    assert refitted.projection is not None and refitted.version not in ("", "abc123")
