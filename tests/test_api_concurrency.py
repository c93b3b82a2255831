"""8 clients searching while 2 clients add and delete, for 20 seconds, against a real
`imagefinder serve` (uvicorn) on 127.0.0.1: zero errors, and every acknowledged add that was not
deleted is searchable afterwards, at rank 1 for its own bytes."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.factories import encode, gradient
from tests.live import live_server

DURATION_S = 20.0


@pytest.fixture
def server(tmp_path: Path, photos: Path, model_cache: Path) -> Iterator[str]:
    with live_server(tmp_path / "home", photos, model_cache) as base:
        yield base


def test_searches_adds_and_deletes_together(server: str, photos: Path) -> None:
    queries = [p.read_bytes() for p in sorted(photos.iterdir())]
    errors: list[str] = []
    acknowledged: dict[str, bytes] = {}
    lock = threading.Lock()
    stop = time.monotonic() + DURATION_S
    counts = {"search": 0, "add": 0, "delete": 0}

    def searcher(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server, timeout=30) as client:
            while time.monotonic() < stop:
                response = client.post("/search", params={"k": 5}, files={"file": ("q", rng.choice(queries))})
                with lock:
                    counts["search"] += 1
                    if response.status_code != 200 or len(response.json()["results"]) != 5:
                        errors.append(f"search {response.status_code} {response.text[:200]}")

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[str] = []
        with httpx.Client(base_url=server, timeout=30) as client:
            n = 0
            while time.monotonic() < stop:
                n += 1
                if mine and rng.random() < 0.3:
                    victim = mine.pop(rng.randrange(len(mine)))
                    response = client.delete(f"/images/{victim}")
                    with lock:
                        counts["delete"] += 1
                        if response.status_code != 204:
                            errors.append(f"delete {response.status_code} {response.text[:200]}")
                        acknowledged.pop(victim, None)
                    continue
                data = encode(gradient(seed * 100_000 + n, (240, 180)))
                image_id = f"writer{seed}/{n}"
                response = client.post("/images", files={"file": ("a.jpg", data)}, data={"id": image_id})
                with lock:
                    counts["add"] += 1
                    if response.status_code != 201:
                        errors.append(f"add {response.status_code} {response.text[:200]}")
                    else:
                        acknowledged[image_id] = data
                        mine.append(image_id)

    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(8)]
    threads += [threading.Thread(target=writer, args=(i,)) for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert counts["search"] > 50 and counts["add"] > 10 and counts["delete"] > 0, counts
    with httpx.Client(base_url=server, timeout=30) as client:
        assert client.get("/health").json()["images"] == len(queries) + len(acknowledged)
        for image_id, data in acknowledged.items():
            top = client.post("/search", params={"k": 1}, files={"file": ("q", data)}).json()["results"][0]
            assert top["id"] == image_id
