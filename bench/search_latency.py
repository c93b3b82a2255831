"""Single-query latency of `POST /search` against a real `imagefinder serve` on 127.0.0.1.

Builds a demo index in a temporary home, starts the server as a subprocess, sends warm-up requests,
then N sequential requests per query image, and reports median/p90/p99 client-side latency.
Query images: a demo photo as-is (PNG) and the same photo re-encoded as a 2-megapixel JPEG.

usage: python bench/search_latency.py [--requests 100] [--out FILE]
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
import time
from pathlib import Path

import httpx
from PIL import Image

from imagefinder.demo import write_demo_collection

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.live import percentile, serving  # noqa: E402  (the same helpers the tests use)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "search_latency.json")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "imagefinder"]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        photos = write_demo_collection(Path(tmp) / "photos")
        cached = Path("~/.imagefinder/models").expanduser()
        if cached.is_dir():  # reuse an existing ONNX export rather than exporting again
            shutil.copytree(cached, home / "models")
        env = {**os.environ, "IMAGEFINDER_HOME": str(home)}
        subprocess.run(
            [*cli, "index", str(Path(tmp) / "photos"), "--quiet"], env=env, check=True, capture_output=True
        )
        photo = next(p for p in photos if p.name == "coffee.png")
        big = Image.open(photo).convert("RGB").resize((1732, 1155), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        big.save(buffer, "JPEG", quality=90)
        queries = {"demo_png_600x400": photo.read_bytes(), "jpeg_2mp": buffer.getvalue()}

        with serving(env) as base, httpx.Client(timeout=30) as client:
            images = client.get(f"{base}/ready").json()["images"]
            rows = {}
            for name, data in queries.items():
                for _ in range(10):  # warm-up
                    client.post(f"{base}/search", files={"file": ("q", data)}).raise_for_status()
                latencies, server_ms = [], []
                for _ in range(args.requests):
                    started = time.perf_counter()
                    response = client.post(f"{base}/search?k=3", files={"file": ("q", data)})
                    latencies.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
                    server_ms.append(response.json()["took_ms"])
                rows[name] = {
                    "bytes": len(data),
                    "requests": args.requests,
                    "p50_ms": round(statistics.median(latencies), 2),
                    "p90_ms": round(percentile(latencies, 0.90), 2),
                    "p99_ms": round(percentile(latencies, 0.99), 2),
                    "server_took_ms_p50": round(statistics.median(server_ms), 2),
                }
    result = {
        "index_images": images,
        "clients": 1,
        "queries": rows,
        "machine": {"processor": platform.machine(), "cpus": os.cpu_count()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for name, row in rows.items():
        print(f"{name:>18}: p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  ({row['requests']} requests)")  # noqa: T201
    print(f"written to {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
