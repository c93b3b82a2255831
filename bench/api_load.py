"""Load on `POST /search` from 1 and 8 concurrent clients against a real `imagefinder serve` on
127.0.0.1, with encoder micro-batching off and on, side by side in one run. Reports client-side
p50/p99 latency and throughput (requests/s) per setting, and the 8-client/1-client ratio.

Queries: the demo photos re-encoded as JPEG (quality 90), round-robin. Index: the demo photos.

usage: python bench/api_load.py [--seconds 15] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

from imagefinder.demo import write_demo_collection

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(ROOT))
from tests.live import percentile, serving  # noqa: E402


def run_clients(base: str, queries: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client_loop(offset: int) -> None:
        nonlocal errors
        with httpx.Client(base_url=base, timeout=60) as client:
            i = offset
            while time.monotonic() < stop:
                data = queries[i % len(queries)]
                i += 1
                started = time.perf_counter()
                response = client.post("/search", params={"k": 3}, files={"file": ("q.jpg", data)})
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    latencies.append(elapsed)
                    errors += response.status_code != 200

    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": round(len(latencies) / wall, 1),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "api_load.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        photos = write_demo_collection(Path(tmp) / "photos")
        cached = Path("~/.imagefinder/models").expanduser()
        if cached.is_dir():
            shutil.copytree(cached, home / "models")
        env = {**os.environ, "IMAGEFINDER_HOME": str(home)}
        subprocess.run(
            [sys.executable, "-m", "imagefinder", "index", str(Path(tmp) / "photos"), "--quiet"],
            env=env,
            check=True,
            capture_output=True,
        )
        queries = []
        for photo in photos:
            buffer = io.BytesIO()
            Image.open(photo).convert("RGB").save(buffer, "JPEG", quality=90)
            queries.append(buffer.getvalue())
        for micro_batch in ("false", "true"):
            with serving({**env, "IMAGEFINDER_API__MICRO_BATCH": micro_batch}) as base:
                run_clients(base, queries, 2, 2.0)  # warm-up
                for clients in (1, 8):
                    row = run_clients(base, queries, clients, args.seconds)
                    row["micro_batch"] = micro_batch == "true"
                    rows.append(row)
                    print(row)  # noqa: T201

    def throughput(batching: bool, clients: int) -> float:
        return next(
            r["throughput_rps"] for r in rows if r["micro_batch"] == batching and r["clients"] == clients
        )

    result = {
        "rows": rows,
        "ratio_8_to_1_clients": {
            "micro_batch_off": round(throughput(False, 8) / throughput(False, 1), 2),
            "micro_batch_on": round(throughput(True, 8) / throughput(True, 1), 2),
        },
        "index_images": len(photos),
        "seconds_per_setting": args.seconds,
        "machine": {"processor": platform.machine(), "cpus": os.cpu_count()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["ratio_8_to_1_clients"]), f"-> {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
