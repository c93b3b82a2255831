"""8 clients searching while 2 clients add and delete against a real `imagefinder serve`
(uvicorn) on 127.0.0.1: zero errors, and every acknowledged add that was not deleted is
searchable afterwards, at rank 1 for its own bytes. 20 seconds in `make test`; the soak in
`make test-slow` runs the same for 3 minutes. Counts and latencies go to test-artifacts/."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.factories import encode, gradient
from tests.live import live_server, percentile

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture
def server(tmp_path: Path, photos: Path, model_cache: Path) -> Iterator[str]:
    with live_server(tmp_path / "home", photos, model_cache) as base:
        yield base


def test_searches_adds_and_deletes_together(server: str, photos: Path) -> None:
    mixed_load(server, photos, duration_s=20.0, report="concurrency.json")


@pytest.mark.slow
def test_soak_for_three_minutes(server: str, photos: Path) -> None:
    mixed_load(server, photos, duration_s=180.0, report="soak.json")


def mixed_load(server: str, photos: Path, duration_s: float, report: str) -> None:
    queries = [p.read_bytes() for p in sorted(photos.iterdir())]
    errors: list[str] = []
    acknowledged: dict[str, bytes] = {}
    lock = threading.Lock()
    stop = time.monotonic() + duration_s
    counts = {"search": 0, "add": 0, "delete": 0}
    latency_ms: dict[str, list[float]] = {"search": [], "add": [], "delete": []}

    def searcher(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server, timeout=30) as client:
            while time.monotonic() < stop:
                started = time.perf_counter()
                response = client.post("/search", params={"k": 5}, files={"file": ("q", rng.choice(queries))})
                with lock:
                    latency_ms["search"].append((time.perf_counter() - started) * 1000)
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
                    started = time.perf_counter()
                    response = client.delete(f"/images/{victim}")
                    with lock:
                        latency_ms["delete"].append((time.perf_counter() - started) * 1000)
                        counts["delete"] += 1
                        if response.status_code != 204:
                            errors.append(f"delete {response.status_code} {response.text[:200]}")
                        acknowledged.pop(victim, None)
                    continue
                data = encode(gradient(seed * 100_000 + n, (240, 180)))
                image_id = f"writer{seed}/{n}"
                started = time.perf_counter()
                response = client.post("/images", files={"file": ("a.jpg", data)}, data={"id": image_id})
                with lock:
                    latency_ms["add"].append((time.perf_counter() - started) * 1000)
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

    ARTIFACTS.mkdir(exist_ok=True)
    summary = {
        "duration_s": duration_s,
        "requests": counts,
        "errors": len(errors),
        "latency_ms": {
            kind: {"p50": round(percentile(values, 0.5), 1), "p99": round(percentile(values, 0.99), 1)}
            for kind, values in latency_ms.items()
            if values
        },
    }
    (ARTIFACTS / report).write_text(json.dumps(summary, indent=1))
    assert errors == []
    assert counts["search"] > 50 and counts["add"] > 10 and counts["delete"] > 0, counts
    with httpx.Client(base_url=server, timeout=30) as client:
        assert client.get("/health").json()["images"] == len(queries) + len(acknowledged)
        for image_id, data in acknowledged.items():
            top = client.post("/search", params={"k": 1}, files={"file": ("q", data)}).json()["results"][0]
            assert top["id"] == image_id
