"""Index generations on both backends, the same contract: build beside the served index, switch
atomically, follow by token, roll back; a failed or killed build leaves nothing served; one
build at a time. The Milvus side runs against a real Milvus server."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagefinder.encoders.base import EncoderInfo, l2_normalise
from imagefinder.generations import GenerationError, IndexGenerations
from imagefinder.stores.embedded import EmbeddedStore
from imagefinder.wiring import generations_at

INFO = EncoderInfo("test-encoder", "1", 4, "none")


@pytest.fixture(params=["embedded", "milvus"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Callable[[str], Any]]]:
    """(the index's location, a function opening the store at a generation's location)."""
    opened: list[Any] = []
    if request.param == "embedded":
        location = str(tmp_path / "index")

        def open_at(where: str) -> Any:
            opened.append(EmbeddedStore(Path(where)))
            return opened[-1]

    else:
        from imagefinder.stores.milvus import MilvusStore, parse_milvus_uri

        server = request.getfixturevalue("milvus_server")
        location = f"milvus://{server.removeprefix('http://')}/gen_{uuid.uuid4().hex[:10]}"

        def open_at(where: str) -> Any:
            opened.append(MilvusStore(*parse_milvus_uri(where)))
            return opened[-1]

    yield location, open_at
    for store in opened:
        try:
            store.close()
        except Exception:  # noqa: BLE001  (closed by the test already)
            pass


def fill(store: Any, names: list[str]) -> None:
    store.bind_encoder(INFO)
    vectors = l2_normalise(np.random.default_rng(len(names)).normal(size=(len(names), 4)).astype(np.float32))
    store.upsert(names, vectors, [{}] * len(names))


def test_build_switch_follow_and_roll_back(index: tuple[str, Callable[[str], Any]]) -> None:
    location, open_at = index
    generations: IndexGenerations = generations_at(location)
    first = generations.current()
    assert first.name == "" and first.label == "g0001"
    fill(open_at(first.location), ["a", "b"])
    token = generations.token()
    with generations.building() as second:
        assert second.label == "g0002" and second.location != first.location
        fill(open_at(second.location), ["a", "b", "c"])
        assert generations.current() == first and generations.token() == token  # not served yet
        generations.switch(second)
    assert generations.current() == second and generations.token() != token
    assert generations_at(location).current() == second  # another process sees the switch
    assert open_at(generations.current().location).count() == 3
    assert [g.label for g in generations.history()] == ["g0001", "g0002"]
    assert generations.rollback() == first
    assert generations.current() == first and open_at(first.location).count() == 2
    with pytest.raises(GenerationError, match="no previous"):
        generations.rollback()


def test_older_generations_are_retired_after_a_switch_but_never_the_first(
    index: tuple[str, Callable[[str], Any]],
) -> None:
    location, open_at = index
    generations = generations_at(location)
    fill(open_at(generations.current().location), ["a"])
    built, retired = [], []
    for _ in range(4):
        with generations.building() as generation:
            fill(open_at(generation.location), ["a", "b"])
            retired.append(generations.switch(generation, keep=3))
        built.append(generation)
    assert [[g.label for g in gone] for gone in retired] == [[], [], [], ["g0002"]]
    assert [g.label for g in generations.history()] == ["g0001", "g0003", "g0004", "g0005"]
    assert not _exists(generations, built[0].location)
    assert all(_exists(generations, g.location) for g in built[1:])
    assert _exists(generations, location)  # the first generation is never retired
    assert generations.rollback().label == "g0004"


def _exists(generations: IndexGenerations, location: str) -> bool:
    """Whether anything of the generation at `location` is left: its folder, or on Milvus its
    collection or any of its rows in the meta collection."""
    if location.startswith("milvus://"):
        from imagefinder.stores.milvus_meta import META_COLLECTION

        calls = generations._calls  # type: ignore[attr-defined]  # noqa: SLF001
        name = location.rsplit("/", 1)[1]
        facts = calls(
            calls.client.query,
            META_COLLECTION,
            filter=f'key like "{name}/%"',
            output_fields=["key"],
            consistency_level="Strong",
        )
        return bool(calls(calls.client.has_collection, name)) or bool(facts)
    return Path(location).is_dir()


def test_a_failed_build_leaves_nothing_served_or_kept(index: tuple[str, Callable[[str], Any]]) -> None:
    location, open_at = index
    generations = generations_at(location)
    fill(open_at(generations.current().location), ["a"])
    with pytest.raises(RuntimeError, match="midway"):
        with generations.building() as doomed:
            fill(open_at(doomed.location), ["x", "y"])
            raise RuntimeError("midway")
    assert generations.current().name == ""
    with generations.building() as again:  # the name is free again, and it starts empty
        assert again.label == "g0002"
        assert open_at(again.location).count() == 0


def test_one_build_at_a_time_and_a_killed_builds_leftovers_are_cleared(
    index: tuple[str, Callable[[str], Any]],
) -> None:
    location, open_at = index
    generations = generations_at(location)
    with generations.building():
        with pytest.raises(GenerationError, match="being built"):
            with generations_at(location).building():
                pass
    # What a SIGKILLed build leaves: an unserved generation with rows (and, on Milvus, its lock).
    orphan = generations_at(location)
    if location.startswith("milvus://"):
        from imagefinder.stores.milvus_generations import LOCK

        dead = {"host": socket.gethostname(), "pid": _dead_pid(), "since": "earlier"}
        orphan._meta.put(LOCK, json.dumps(dead))  # noqa: SLF001
        leftover = location + "_g0002"
    else:
        leftover = str(Path(location).with_name("index.generations") / "g0002")
    fill(open_at(leftover), ["stale"])
    with generations.building() as fresh:
        assert fresh.location == leftover and open_at(fresh.location).count() == 0


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid
